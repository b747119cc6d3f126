"""Where the files shipped inside the package live, and ``embedded://NAME`` paths to them."""

from __future__ import annotations

from pathlib import Path

__all__ = ["ASSETS_DIR", "resolve_path"]

#: Files shipped inside the package (the quickstart checkpoint and data sample).
ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
_EMBEDDED = "embedded://"


def resolve_path(path: str | Path) -> Path:
    """Resolve ``embedded://NAME`` to the package's assets, anything else to an expanded path.

    Example:
        >>> resolve_path("embedded://quickstart/model.pt").name
        'model.pt'
    """
    text = str(path)
    if text.startswith(_EMBEDDED):
        return ASSETS_DIR / text[len(_EMBEDDED) :]
    return Path(text).expanduser()
