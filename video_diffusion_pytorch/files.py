"""Atomic files: whatever the package writes appears whole or not at all.

Every writer of the package (clips, checkpoints, model folders, plots, JSON) goes through
`atomic_path`, so a kill or a full disk mid-write leaves the previous file untouched. A
kill leaves its temporary file behind; `remove_temporary_files` clears a folder of them
when the next run starts.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import uuid
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

logger = logging.getLogger(__name__)

FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
UNWRITABLE_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)
LOW_SPACE = 64 * 1024  # bytes: a write that failed with less than this free failed for want of space
TEMPORARY_NAME = re.compile(r"\..+\.[0-9a-f]{32}\.tmp")  # `.NAME.<uuid4 hex>.tmp`, see atomic_path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one step.

    On failure the temporary file is removed and `path` is left as it was. The temporary
    name starts with a dot, so dataset scans skip a file still being written. A write
    that fails on a full disk, or in a folder that cannot be written, is an OSError
    (errno ENOSPC or EACCES) naming `path`, whatever error the writer raised.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # matches TEMPORARY_NAME
    try:
        yield temporary
        os.replace(temporary, path)
    except Exception as error:
        described = _write_error(error, path)
        if described is error:  # neither a full disk nor a refused write
            raise
        raise described from error
    finally:
        # on a read-only file system even a missing file cannot be unlinked (EROFS); a
        # temporary file that could not be removed is cleared by remove_temporary_files
        with suppress(OSError):
            temporary.unlink(missing_ok=True)


def _write_error(error: Exception, path: Path) -> Exception:
    """A clear OSError for a write that failed on a full disk or in an unwritable folder.

    Writers report these differently (torch.save and safetensors with errors of their own,
    without an errno; safetensors quotes the system's message), so the folder itself is
    examined too: before the temporary file is removed, a full disk has next to no space.
    """
    folder = path.parent
    if getattr(error, "errno", None) in UNWRITABLE_ERRNOS or (folder.is_dir() and not os.access(folder, os.W_OK)):
        return OSError(errno.EACCES, f"cannot write {path}: the folder {folder} is read-only or not writable")
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = LOW_SPACE
    if getattr(error, "errno", None) in FULL_DISK_ERRNOS or os.strerror(errno.ENOSPC) in str(error) or free < LOW_SPACE:
        reason = os.strerror(errno.ENOSPC)  # "No space left on device"
        return OSError(errno.ENOSPC, f"{reason}: cannot write {path}; {path.name} is left as it was")
    return error


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def remove_temporary_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that writes into `folder` left when they were killed.

    Only names `atomic_path` makes (`.NAME.<32 hex digits>.tmp`) directly in `folder` are
    touched; call it when nothing else is writing there (at the start of a run). Returns
    the files removed; a missing folder has none.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    leftovers = [path for path in folder.iterdir() if TEMPORARY_NAME.fullmatch(path.name) and path.is_file()]
    for path in leftovers:
        path.unlink(missing_ok=True)
        logger.info("removed %s, left by an interrupted write", path)
    return leftovers
