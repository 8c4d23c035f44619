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


def pinned_api(pinned: Path) -> dict[str, list[str]]:
    """``{namespace: [names]}`` as listed in the pinned file."""
    out: dict[str, list[str]] = {}
    namespace = None
    for raw in pinned.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            namespace = line.strip("[]")
            out[namespace] = []
        else:
            assert namespace is not None, f"{pinned.name}: name {line!r} before any [namespace]"
            out[namespace].append(line)
    return out


def moved_names(pinned: Path) -> dict[str, str]:
    """``{name: submodule}`` for every name pinned under a submodule."""
    return {
        name: namespace.split(".", 1)[1]
        for namespace, names in pinned_api(pinned).items()
        if namespace != "optx"
        for name in names
    }


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
