"""Atomic files: whatever the package writes appears whole or not at all.

Every writer of the package (clips, checkpoints, model folders, plots, JSON) goes through
`atomic_path`, so a kill or a full disk mid-write leaves the previous file untouched.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one step.

    On failure the temporary file is removed and `path` is left as it was. The temporary
    name starts with a dot, so dataset scans skip a file still being written.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
