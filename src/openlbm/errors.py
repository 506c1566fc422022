"""User errors: the one mechanism by which a command refuses bad input with one line instead of a traceback.

Library code raises :class:`UserError` (or a subclass such as ``DatasetError``) for mistakes a user can fix:
bad data, a busy folder, a changed config, a broken policy dir. ``openlbm.cli.main`` catches these, and the
built-in exceptions ordinary mistakes produce (``ValueError``, ``OSError``), once for every command, prints
:func:`one_line` to stderr and exits 2. ``lbm --debug ...`` or ``LBM_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import re


class UserError(Exception):
    """A mistake in the user's input (data, flags, folders, files); the message says what and where."""


class LockedError(UserError):
    """Another process is writing to the same dataset or run dir."""


USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ValueError, OSError)
"""What ``lbm`` reports as one line. Anything else is a bug and keeps its traceback."""

_WORKER = re.compile(r"Caught \w+ in DataLoader worker process \d+\.")


def one_line(exc: BaseException) -> str:
    """The exception's message on one line. A DataLoader worker's error carries the worker's traceback inside
    its message (``Caught X in DataLoader worker process N. Original Traceback ...``): keep only the original
    error's own message, which is the last line of that text."""
    msg = str(exc).strip()
    if _WORKER.search(msg) and "Traceback" in msg:
        last = [ln for ln in msg.splitlines() if ln.strip()][-1].strip()
        msg = re.sub(r"^[\w.]+: ", "", last, count=1)  # "openlbm.data.layout.DatasetError: file=..." -> "file=..."
    return " ".join(msg.split()) or type(exc).__name__
