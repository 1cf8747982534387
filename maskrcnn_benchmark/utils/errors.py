"""User-input errors and the tools' ``main`` wrapper: one clear message and exit status 2.

A mistake in what the user gave (a config file or key, a dataset, a weight file, a path) is reported
as one line on stderr, without a Python traceback, and the tool exits with status 2 (as ``argparse``
does for a bad argument). ``--debug`` on the command line or ``MASKRCNN_DEBUG=1`` in the environment
shows the traceback too. Every other exception (a bug, an internal error) keeps its traceback.

What counts as a user-input error (:func:`is_user_input_error`):

* :class:`UserInputError` (and subclasses), raised where the code knows the input is at fault, and
  :class:`~maskrcnn_benchmark.config.loading.ConfigError` (a ValueError: a config file or override);
* the exceptions the loaders raise with messages that name the file / key at fault: ``ValueError``
  (bad config value, malformed json, unreadable, non-finite or non-matching weights...; json and
  Unicode decode errors are ValueErrors too), a refused pickle (``pickle.UnpicklingError``),
  ``FileNotFoundError`` / ``IsADirectoryError`` / ``PermissionError``,
  :class:`CorruptImageError` (an undecodable image file of a dataset),
  :class:`~maskrcnn_benchmark.utils.run_lock.OutputDirLockedError`, and I/O errors about the
  user's disk (disk full, file too large, read-only; :mod:`~maskrcnn_benchmark.utils.io` names
  their path).

Bad config keys on the command line already end in ``parser.error`` (status 2). A ``ValueError``
raised by a bug inside the library is shown without its traceback as well; ``--debug`` brings it
back, and the message always names the exception type.
"""
from __future__ import annotations

import errno
import os
import pickle
import sys
from typing import Callable, List, Optional, Sequence, TypeVar

__all__ = ["UserInputError", "CorruptImageError", "DEBUG_ENV", "EXIT_USER_ERROR", "is_user_input_error", "run_tool"]

DEBUG_ENV = "MASKRCNN_DEBUG"
EXIT_USER_ERROR = 2
T = TypeVar("T")


class UserInputError(ValueError):
    """A mistake in the user's input (config, data, weights, paths); the message names the culprit.

    A ``ValueError``, so existing ``except ValueError`` handlers still catch it."""


class CorruptImageError(OSError):
    """An image file that cannot be decoded completely (not an image, truncated, ...); raised by the
    datasets (:func:`~maskrcnn_benchmark.data.datasets.base.decode_image_file`)."""


# errno values of OSErrors that are about the user's environment (paths, disk), not bugs
_USER_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ENOSPC,
                errno.EFBIG, errno.EROFS, errno.ENAMETOOLONG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def is_user_input_error(exc: BaseException) -> bool:
    """True for the exceptions :func:`run_tool` reports without a traceback (see the module doc)."""
    from maskrcnn_benchmark.utils.run_lock import OutputDirLockedError

    if isinstance(exc, (UserInputError, CorruptImageError, OutputDirLockedError)):
        return True
    if isinstance(exc, OSError):
        return exc.errno in _USER_ERRNOS or isinstance(exc, (FileNotFoundError, PermissionError,
                                                             IsADirectoryError, NotADirectoryError))
    return isinstance(exc, (ValueError, pickle.UnpicklingError))


def _debug_requested(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _message(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def run_tool(main: Callable[[Optional[List[str]]], T], argv: Optional[Sequence[str]] = None,
             prog: Optional[str] = None) -> T:
    """Run a tool's ``main(argv)``; on a user-input error print ``prog: error: <Type>: <message>``
    (and the hint about ``--debug``) on stderr and exit with status 2. ``--debug`` is removed from
    ``argv`` before ``main`` sees it. Other exceptions propagate with their traceback.

    Args:
        main: the tool's entry point, called as ``main(argv)``.
        argv: the arguments (default ``sys.argv[1:]``).
        prog: the name shown (default the script's file name).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    prog = prog or os.path.basename(sys.argv[0] or "tool")
    try:
        return main(argv)
    except Exception as exc:  # noqa: BLE001 - the classification below decides
        if debug or not is_user_input_error(exc):
            raise
        sys.stderr.write(f"{prog}: error: {_message(exc)}\n"
                         f"(no traceback for this input error; rerun with --debug or {DEBUG_ENV}=1 to see it)\n")
        sys.stderr.flush()
        raise SystemExit(EXIT_USER_ERROR) from None

