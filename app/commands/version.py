"""`faust -A app version`: which tapestream this is, and what it runs on. (`faust --version`
answers before the app is loaded, so it can only name Faust.)"""

from __future__ import annotations

from importlib import metadata

from app import build
from app.faust_app import app


def versions() -> dict[str, str]:
    out = {}
    for name in ("tapestream", "faust-streaming", "aiokafka", "numpy", "numba", "databento"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["python"] = build.python()
    out["commit"] = build.commit()
    return out


@app.command()
async def version(self: object) -> None:
    """Print tapestream's version and those of the libraries it runs on."""
    for name, v in versions().items():
        print(f"{name} {v}")
