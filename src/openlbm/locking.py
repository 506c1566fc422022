"""Exclusive advisory locks on folders (dataset roots, run dirs): one writer per folder.

``lock_dir(folder, what)`` takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``folder/.openlbm.lock``. The kernel drops
the lock when the holder's file descriptor closes, so a SIGKILLed writer never blocks its own resume: there is no
stale lock to clean up. The file holds the holder's pid, only to name it in the refusal. Within one process the
lock is re-entrant (a writer re-opened while another handle on the same folder is alive shares it): serialising
writers inside one process is the caller's business, across processes it is this module's.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from pathlib import Path

from openlbm.errors import LockedError

LOCK_FILE = ".openlbm.lock"
_held: dict[Path, list[int]] = {}  # resolved lock file -> [fd, handles alive in this process]
_guard = threading.Lock()


class DirLock:
    """A held lock on a folder; released by :meth:`release` or when garbage collected / the process exits."""

    def __init__(self, key: Path) -> None:
        self.key = key
        self.folder = key.parent
        self._held = True

    def release(self) -> None:
        with _guard:
            if not self._held:
                return
            self._held = False
            entry = _held.get(self.key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] == 0:
                del _held[self.key]
                os.close(entry[0])  # closing the descriptor drops the flock

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown module globals may already be gone
            self.release()


def lock_dir(folder: Path | str, what: str, lock_file: str = LOCK_FILE) -> DirLock:
    """Lock ``folder`` (created if missing) for writing, or raise :class:`LockedError` naming it and the holder.

    ``what`` names this writer in the lock file, for the message another process gets (``"a dataset writer"``).
    ``lock_file`` lets cooperating writers that own disjoint files of one folder (the ranks of one evaluation)
    each hold their own lock.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve() / lock_file
    with _guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
            return DirLock(key)
        fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, _, holder = os.pread(fd, 200, 0).decode(errors="replace").strip().partition(" ")
            os.close(fd)
            raise LockedError(
                f"{folder} is in use by {holder or 'another process'} (pid {pid or 'unknown'}); wait for it to "
                "finish or stop it, or choose another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {what}\n".encode(), 0)
        _held[key] = [fd, 1]
        return DirLock(key)
