"""State and market logic as plain classes: no Faust, no runtime (the lint in ruff.toml)."""
