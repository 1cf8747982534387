"""Atomic file writing: the one home for "write to a temp file, fsync, os.replace"; and the fast
json reader (:func:`read_json`).

A reader never sees a half-written file: either the old content (or no file) or the
complete new content. Used for dataset json files, evaluation results and checkpoints.
"""
import contextlib
import json
import os
import tempfile
from typing import IO, Any, Callable, Iterator, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

__all__ = [
    "naming_path",
    "os_error_with_path",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "read_json",
    "atomic_torch_save",
    "fsync_dir",
    "remove_stale_temp_files",
]

_TEMP_SUFFIX = ".tmp"
_DIGITS_TO_1 = bytes(0x31 if 0x30 <= i <= 0x39 else 0x30 for i in range(256))  # bytes.translate table


def os_error_with_path(exc: BaseException, path: PathLike) -> Optional[OSError]:
    """An ``OSError`` naming ``path`` for a write error that does not name it (disk full ENOSPC, file
    too large EFBIG under ``ulimit -f``, ...), found in ``exc`` or its chain (``torch.save`` re-raises
    the OSError of the file's ``write`` as a RuntimeError without it); None when ``exc`` holds none
    or it already names a file. The subclass follows the errno (``OSError(ENOENT, ...)`` is a
    ``FileNotFoundError``)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            if exc.filename is not None:
                return None
            return OSError(exc.errno, f"{exc.strerror or os.strerror(exc.errno)} while writing", os.fspath(path))
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def naming_path(path: PathLike) -> Iterator[None]:
    """Re-raise a write error of the ``with`` body that does not name its file as an ``OSError``
    naming ``path`` (:func:`os_error_with_path`), chained to the original."""
    try:
        yield
    except Exception as e:
        named = os_error_with_path(e, path)
        if named is None:
            raise
        raise named from e


def fsync_dir(path: PathLike) -> None:
    """fsync a directory so that a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """Open a temp file next to ``path``; on success fsync it and ``os.replace`` it onto ``path``.

    On an exception the temp file is removed and ``path`` is left untouched; a write error that
    does not name its file (disk full, file too large) is re-raised as an ``OSError`` naming ``path``.

    Args:
        path: final destination.
        mode: "w"/"wb" (text or binary write); other kwargs go to ``open`` (e.g. encoding).
    """
    if "w" not in mode:
        raise ValueError(f"atomic_open only supports write modes, got mode={mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=_TEMP_SUFFIX, dir=directory)
    try:
        with naming_path(path), os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    fsync_dir(directory)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    """Atomically write ``text`` to ``path``."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)


def atomic_write_json(path: PathLike, obj: Any, fast: bool = False, **dump_kwargs: Any) -> None:
    """Atomically write ``obj`` as json to ``path``, encoded in one piece (``json.dumps``, the C
    encoder; ``dump_kwargs`` go to it) and written with one call.

    ``fast=True`` (and no ``dump_kwargs``) encodes with ``orjson`` when it is installed (optional
    extra "eval"; several times faster on large result lists) and ``json.dumps`` otherwise. orjson
    writes the same values (floats as their shortest round-trip text) but no spaces, refuses
    non-string keys and writes NaN / inf as ``null``: only pass ``fast=True`` for plain data with
    string keys and finite floats (e.g. COCO results)."""
    if fast and not dump_kwargs:
        try:
            import orjson
        except ImportError:
            pass
        else:
            atomic_write_bytes(path, orjson.dumps(obj))
            return
    atomic_write_text(path, json.dumps(obj, **dump_kwargs))


def _has_long_digit_run(data: bytes, length: int = 19) -> bool:
    """Whether ``data`` holds ``length`` consecutive ASCII digits (a possible integer beyond 64
    bits); one C pass (``bytes.translate`` + ``find``), several times faster than a regex."""
    return data.translate(_DIGITS_TO_1).find(b"1" * length) >= 0


def read_json(path: PathLike) -> Any:
    """The json value of the file ``path``, parsed with ``orjson`` when it is installed (optional
    extra "eval"; about 2x faster than ``json`` on a COCO-size annotation file) and with
    ``json.load`` otherwise.

    orjson refuses what ``json`` accepts (NaN / Infinity literals) and words its errors
    differently, so on any orjson error the file is parsed again with ``json``; and it reads an
    integer beyond 64 bits as a float, so a file with a run of 19 or more digits anywhere (a
    possible such integer) is parsed with ``json`` from the start. The value and the error
    (``json.JSONDecodeError`` with line and column, ``UnicodeDecodeError``) are always ``json``'s."""
    try:
        import orjson
    except ImportError:
        orjson = None
    if orjson is not None:
        with open(path, "rb") as f:
            data = f.read()
        try:
            if not _has_long_digit_run(data):  # orjson reads an int beyond 64 bits as a float
                return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
        finally:
            del data
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


def atomic_torch_save(obj: Any, path: PathLike, save_fn: Callable[[Any, IO], None] = None) -> None:
    """Atomically ``torch.save(obj, path)`` (or ``save_fn(obj, fileobj)``)."""
    if save_fn is None:
        import torch

        save_fn = torch.save
    with atomic_open(path, "wb") as f:
        save_fn(obj, f)


def is_atomic_temp_name(name: str) -> bool:
    """True for the names :func:`atomic_open` gives its temp files: ``.<final name>.<random>.tmp``."""
    if not (name.startswith(".") and name.endswith(_TEMP_SUFFIX)):
        return False
    inner = name[1:-len(_TEMP_SUFFIX)]
    final, dot, rand = inner.rpartition(".")
    return bool(dot and final and rand)


def remove_stale_temp_files(directory: PathLike, recursive: bool = True) -> list:
    """Delete the temp files of atomic writes that never finished (a killed process leaves
    ``.model_0005000.pth.x1y2.tmp``, ``.bbox.json.x1y2.tmp``, ...) under ``directory``.

    Only call it while no other process writes there (e.g. holding the run lock). Returns the
    removed paths.
    """
    removed = []
    if not os.path.isdir(directory):
        return removed
    for root, dirs, files in os.walk(directory):
        for name in files:
            if is_atomic_temp_name(name):
                path = os.path.join(root, name)
                try:
                    os.remove(path)
                except OSError:
                    continue
                removed.append(path)
        if not recursive:
            break
    return sorted(removed)
