"""One training run per results folder: a lock file holding the owner's host and PID.

`results_folder/.lock` is created exclusively (`O_EXCL`), so of two trainers started
together on one folder exactly one gets it; the other stops at once with a one-line
`RunLockedError`. A lock left by a crashed run (its process is gone) is taken over.
A lock from another host cannot be checked and is never taken over: the message says
which file to delete when that run is known to be dead.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

LOCK_NAME = ".lock"

# the locks this process holds: a second Trainer in the same process is refused, and a lock
# naming this PID but not held here is a stale one from before a restart
_held: set[Path] = set()


class RunLockedError(FileExistsError):
    """Another run holds the results folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _owner(path: Path) -> dict | None:
    """The lock's `{'host', 'pid'}`, or None when it is unreadable (being written, or corrupt)."""
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


class RunLock:
    """The lock of `folder` (created if needed); `acquire` takes it, `release` gives it back."""

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder).resolve() / LOCK_NAME
        self.me = {"host": socket.gethostname(), "pid": os.getpid()}

    @property
    def held(self) -> bool:
        return self.path in _held

    def _create(self) -> bool:
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(self.me, file)
        return True

    def _stale(self, owner: dict | None) -> bool:
        """A lock of this host whose process is gone, or that names this process without
        being held by it (a PID reused after a restart)."""
        if owner is None or owner.get("host") != self.me["host"]:
            return False
        return owner["pid"] == self.me["pid"] or not _alive(owner["pid"])

    def acquire(self) -> None:
        """Take the lock, or raise `RunLockedError` naming the run that holds it."""
        if self.held:
            raise RunLockedError(f"another Trainer in this process is training in {self.path.parent}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._create():
            owner = _owner(self.path)
            if not self._stale(owner):
                raise RunLockedError(self._message(owner))
            # the owner crashed: take its lock over (a rename is atomic, so of two
            # trainers recovering together only one removes the stale file)
            try:
                os.rename(self.path, self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}"))
            except FileNotFoundError:
                pass
            else:
                self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}").unlink(missing_ok=True)
            if not self._create():
                raise RunLockedError(self._message(_owner(self.path)))
        _held.add(self.path)

    def release(self) -> None:
        """Give the lock back (nothing when it is not held)."""
        if not self.held:
            return
        _held.discard(self.path)
        if _owner(self.path) == self.me:
            self.path.unlink(missing_ok=True)

    def _message(self, owner: dict | None) -> str:
        folder = self.path.parent
        if owner is None:
            return f"{folder} is locked by another training run ({self.path} exists)"
        where = f"process {owner['pid']}" + ("" if owner.get("host") == self.me["host"] else f" on {owner.get('host')}")
        return (
            f"{folder} is in use by another training run ({where}); wait for it to finish, or use another "
            f"results folder (delete {self.path} only if that run is dead)"
        )
