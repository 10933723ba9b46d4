"""File input and output: bounded, safe readers for untrusted files, crash-safe writers.

Output: everything is written to a temporary path and renamed into place, so a ``kill -9`` at any
moment leaves either the previous complete file/directory or the new complete one, never a
half-written one that loads.

Input: every user-supplied JSON, jsonl, YAML and text file is read through :func:`read_json`,
:func:`iter_jsonl`, :func:`read_yaml` or :func:`read_text`. They refuse a file larger than
``UNMEMORIZE_MAX_FILE_BYTES`` (default 1 GiB) or a jsonl line longer than
``UNMEMORIZE_MAX_LINE_BYTES`` (default 128 MiB) before reading it into memory, never build
Python objects from YAML tags (``yaml.safe_load`` only) and turn every parse failure into one
``ValueError`` line that names the file (and line). Weights are only ever read from safetensors;
numpy arrays only with ``allow_pickle=False``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Default bounds of the safe readers; the environment variables of the same name raise them.
MAX_FILE_BYTES = 1 << 30
MAX_LINE_BYTES = 1 << 27


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask is process-wide
    and would race other threads for an instant)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _usual_mode(tmp: str | Path, directory: bool) -> None:
    """Give a temporary (created 0600/0700 by ``tempfile``) the mode a plain ``open``/``mkdir``
    would have given it under the user's umask, so outputs can be shared like any other file."""
    os.chmod(tmp, (0o777 if directory else 0o666) & ~_umask())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            _write_and_sync(f, text)
        _usual_mode(tmp, directory=False)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.filename is None:
            err.filename = str(path)  # name the output, not the vanished temporary file
        raise
    _fsync_dir(path.parent)


def _owner() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _temp_prefix(path: Path) -> str:
    """Hidden sibling names that carry their writer (host and pid), e.g. ``.model.h-42.x1.tmp``."""
    return f".{path.name}.{_owner()}."


def _remove_stale_temporaries(path: Path) -> None:
    """Clean up after writers of ``path`` that were killed on this host (``kill -9``, power cut).

    A temporary file or directory of a dead writer is deleted. A previous ``path`` that a dead
    writer had renamed aside (``.NAME.old-OWNER``) while swapping in its new one is put back when
    ``path`` is missing, so an interruption between the two renames loses nothing. Writers on
    other hosts (a shared disk) and live ones are left alone.
    """
    name = re.escape(path.name)
    temporary = re.compile(rf"^\.{name}\.(?P<host>.+)-(?P<pid>\d+)\.[^.]+\.tmp$")
    aside = re.compile(rf"^\.{name}\.old-(?P<host>.+)-(?P<pid>\d+)$")
    try:
        siblings = sorted(path.parent.iterdir())
    except OSError:
        return
    for sibling in siblings:
        match = temporary.match(sibling.name) or aside.match(sibling.name)
        if not match or match["host"] != socket.gethostname() or _alive(int(match["pid"])):
            continue
        if aside.match(sibling.name) and not path.exists() and sibling.is_dir():
            os.replace(sibling, path)  # the previous complete directory comes back
        elif sibling.is_dir():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                sibling.unlink()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _write_and_sync(f: Any, text: str) -> None:
    """Write ``text`` to the open file ``f`` and force it to disk (a full disk raises here)."""
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_text(
        path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    )


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory at a temporary sibling path, then move it to ``path``.

    If ``path`` already exists it is replaced only after the new directory is complete (the old
    one is renamed aside first and deleted last), so an interruption never leaves a partial one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp"))
    _usual_mode(tmp, directory=True)
    try:
        yield tmp
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):  # name the output, not the vanished temporary directory
            name = str(err.filename or "")
            err.filename = path / name[len(str(tmp)) + 1 :] if name.startswith(str(tmp)) else path
        raise
    crash_point(f"{path.name}:filled")
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{_owner()}"
        os.replace(path, old)
        crash_point(f"{path.name}:swapped-out")
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


CRASH_AT_ENV = "UNMEMORIZE_CRASH_AT"
"""Fault injection for crash-safety tests: ``NAME:filled`` (the new directory ``NAME`` is complete
at its temporary path) or ``NAME:swapped-out`` (the previous ``NAME`` is renamed aside, the new one
not yet in place) makes the process SIGKILL itself at that instant. Unset in normal use."""


def crash_point(point: str) -> None:
    """SIGKILL this process when ``UNMEMORIZE_CRASH_AT`` names ``point`` (see :data:`CRASH_AT_ENV`).

    A kill -9 from outside lands at a random instant, and the instants that matter (between two
    renames) last microseconds; the tests name them instead.
    """
    if os.environ.get(CRASH_AT_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def check_writable(path: str | Path, what: str = "--out") -> Path:
    """Refuse an output ``path`` that cannot be created: one under a regular file, or in a
    directory the user may not write to. Changes nothing.

    Raises:
        NotADirectoryError: a parent of ``path`` is a file.
        PermissionError: the nearest existing parent directory is not writable.
    """
    path = Path(path)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(
            f"{what} {path} lies under a file ({parent}), not a directory; choose another path"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(
            f"cannot write to {parent} (permission denied); choose {what} in a directory you "
            "can write to"
        )
    return path


def check_output_file(path: str | Path, what: str = "--out") -> Path:
    """Refuse a file output that is an existing directory or cannot be created; change nothing."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a directory; name the file to write")
    return check_writable(path, what)


def check_output_dir(path: str | Path, overwrite: bool) -> Path:
    """Refuse an existing file, a path that cannot be created (see :func:`check_writable`), or
    a non-empty directory unless ``overwrite``; change nothing."""
    path = check_writable(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"output {path} exists and is a file; choose another --out")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(
            f"output directory {path} exists and is not empty; choose another --out or pass --overwrite"
        )
    return path


def prepare_output_dir(path: str | Path, overwrite: bool) -> Path:
    """Refuse an existing, non-empty output directory unless ``overwrite``; with it, empty it.

    Call this only once the inputs have been validated, so that a bad option never costs the
    user the previous output.
    """
    path = check_output_dir(path, overwrite)
    if path.is_dir() and any(path.iterdir()):
        shutil.rmtree(path)
    return path


# --------------------------------------------------------------------------- bounded, safe readers


def _limit(name: str, given: int | None, default: int) -> int:
    """``given``, else the environment variable ``name``, else ``default`` (bytes)."""
    if given is not None:
        return given
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name} must be a positive number of bytes, got {text!r}")
    return value


def _check_size(path: Path, max_bytes: int | None) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file")
    limit = _limit("UNMEMORIZE_MAX_FILE_BYTES", max_bytes, MAX_FILE_BYTES)
    size = path.stat().st_size
    if size > limit:
        raise ValueError(
            f"{path} has {size} bytes, more than the limit of {limit}; if you trust the file, "
            f"raise the limit with UNMEMORIZE_MAX_FILE_BYTES={size}"
        )


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{where}: not UTF-8 text (bad byte at offset {err.start}); is it really a text file?"
        ) from None


def _loads(text: str, where: str, one_line: bool = False) -> Any:
    """``json.loads`` whose every failure (syntax, nesting, huge numbers) is one ValueError."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        at = "" if one_line else f"line {err.lineno}, "
        raise ValueError(f"{where}: not valid JSON ({at}column {err.colno}: {err.msg})") from None
    except RecursionError:
        raise ValueError(f"{where}: not valid JSON (nested too deeply)") from None
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        raise ValueError(f"{where}: not valid JSON ({str(err).splitlines()[0]})") from None


def read_text(path: str | Path, max_bytes: int | None = None) -> str:
    """A UTF-8 text file, refused before reading when larger than ``max_bytes``.

    Args:
        max_bytes: size limit; None = ``UNMEMORIZE_MAX_FILE_BYTES`` or 1 GiB.

    Raises:
        FileNotFoundError: no such file.
        ValueError: too large or not UTF-8 (one line naming the file and the fix).
    """
    path = Path(path)
    _check_size(path, max_bytes)
    return _decode(path.read_bytes(), str(path))


def read_json(path: str | Path, max_bytes: int | None = None) -> Any:
    """A JSON file, refused before reading when larger than ``max_bytes``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: too large, not UTF-8 or not valid JSON: one line that names the file and
            says what is wrong (``FILE: not valid JSON (line L, column C: MSG)``).
    """
    path = Path(path)
    return _loads(read_text(path, max_bytes), str(path))


def iter_jsonl(
    path: str | Path, max_line_bytes: int | None = None, max_bytes: int | None = None
) -> Iterator[tuple[int, Any]]:
    """Stream a jsonl file: ``(1-based line number, parsed value)`` for each non-blank line.

    A line is never read into memory beyond ``max_line_bytes`` (+1), so one endless line cannot
    exhaust memory; the file size is checked first.

    Args:
        max_line_bytes: longest line; None = ``UNMEMORIZE_MAX_LINE_BYTES`` or 128 MiB.
        max_bytes: largest file; None = ``UNMEMORIZE_MAX_FILE_BYTES`` or 1 GiB; 0 = no limit
            (for corpora that are streamed, never held in memory).

    Raises:
        FileNotFoundError: no such file.
        ValueError: file too large, a line too long, not UTF-8 or not valid JSON; the message is
            ``FILE:LINE: ...`` and says how to raise a limit.
    """
    path = Path(path)
    if max_bytes == 0:
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist or is not a file")
    else:
        _check_size(path, max_bytes)
    limit = _limit("UNMEMORIZE_MAX_LINE_BYTES", max_line_bytes, MAX_LINE_BYTES)
    with path.open("rb") as f:
        line_no = 0
        while True:
            raw = f.readline(limit + 1)
            if not raw:
                return
            line_no += 1
            where = f"{path}:{line_no}"
            if len(raw) > limit and not (len(raw) == limit + 1 and raw.endswith(b"\n")):
                raise ValueError(
                    f"{where}: line longer than the limit of {limit} bytes; if you trust the "
                    "file, raise it with UNMEMORIZE_MAX_LINE_BYTES=N"
                )
            text = _decode(raw, where)
            if not text.strip():
                continue
            yield line_no, _loads(text, where, one_line=True)


def read_yaml(path: str | Path, max_bytes: int | None = None) -> Any:
    """A YAML file parsed with ``yaml.safe_load``: plain data only, never Python objects.

    Raises:
        FileNotFoundError: no such file.
        ValueError: too large, not UTF-8, not valid YAML, or a tag such as ``!!python/object``
            that would build a Python object (one line naming the file).
    """
    import yaml

    path = Path(path)
    text = read_text(path, max_bytes)
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as err:
        raise ValueError(
            f"{path}: YAML tag {err.problem.split()[-1] if err.problem else ''} is not allowed; "
            "only plain YAML data (mappings, lists, strings, numbers) is read"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{path}: not valid YAML ({problem}{at})") from None
    except RecursionError:
        raise ValueError(f"{path}: not valid YAML (nested too deeply)") from None
