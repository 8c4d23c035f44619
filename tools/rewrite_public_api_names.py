"""Rewrite ``optx.NAME`` to ``optx.SUB.NAME`` for every name pinned under ``[optx.SUB]``.

The public API lives in ``tests/data/public_api.txt``. After a name moves from the top level
into a submodule (or a branch written before the move is merged), run from the repository
root::

    python tools/rewrite_public_api_names.py

It is idempotent, touches ``.py``/``.md``/``.ipynb`` files (not CHANGELOG.md, build outputs
or the namespace modules ``optx/<name>.py``) and prints each file it changed.
"""

from __future__ import annotations

import re
from pathlib import Path

SKIP_DIRS = {".git", ".venv", "_build", "_notebooks"}


def moved_names(pinned: Path) -> dict[str, str]:
    """``{name: submodule}`` for every name pinned under a submodule."""
    out: dict[str, str] = {}
    namespace = None
    for raw in pinned.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            namespace = line.strip("[]")
        elif namespace and namespace != "optx":
            out[line] = namespace.split(".", 1)[1]
    return out


def main() -> None:
    move = moved_names(Path("tests/data/public_api.txt"))
    names = "|".join(sorted(move, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w.])optx\.({names})\b")
    for path in sorted(Path(".").rglob("*")):
        if path.suffix not in {".py", ".md", ".ipynb"} or not path.is_file():
            continue
        if SKIP_DIRS & set(path.parts) or path.name == "CHANGELOG.md":
            continue
        if path.parts[0] == "optx" and len(path.parts) == 2:
            continue
        text = path.read_text()
        new, count = pattern.subn(lambda m: f"optx.{move[m[1]]}.{m[1]}", text)
        if count:
            path.write_text(new)
            print(path, count)


if __name__ == "__main__":
    main()
