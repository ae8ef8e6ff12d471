"""Record layouts on topics and in files, and validated input models; they import nothing
above them (the lint in ruff.toml)."""
