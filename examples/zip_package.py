"""Zip a package folder (or a dataset folder) for upload to Trainyard.

    python examples/zip_package.py FOLDER OUT.zip

The folder's files go at the root of the zip (where the API looks for train.py), sorted, with fixed
timestamps and permissions, so the same folder always makes the same bytes (the same sha256). Caches
and hidden files (`__pycache__`, `*.pyc`, `.*`) are left out. `zip_folder()` is importable, e.g. by
the demo that seeds the example packages and datasets.
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

FIXED_TIME = (2020, 1, 1, 0, 0, 0)


def _included(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts
    return not any(part.startswith(".") or part == "__pycache__" for part in parts) and path.suffix != ".pyc"


def zip_folder(folder: str | Path, out: str | Path | None = None) -> bytes:
    """The zip of every file below `folder` (paths relative to it); written to `out` too when given."""
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and _included(p, root)):
            info = zipfile.ZipInfo(path.relative_to(root).as_posix(), FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, path.read_bytes())
    data = buffer.getvalue()
    if out is not None:
        Path(out).write_bytes(data)
    return data


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    data = zip_folder(argv[1], argv[2])
    print(f"wrote {argv[2]} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
