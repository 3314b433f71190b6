"""Atomic writes: a temporary file in the target's folder, flushed, then renamed over the target.

A kill at any moment leaves either the old file or the new one, never a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, IO


def _new_temporary(folder: Path, name: str) -> tuple[int, str]:
    """A new file `.<name>.<8 random characters>.tmp` in `folder`, created as open() creates files
    (0666 less the umask, the folder's default ACLs), not 0600 as tempfile.mkstemp makes them, which
    left every report, figure and checkpoint unreadable to the colleagues of a shared machine."""
    for _ in range(100):
        tmp_name = str(folder / f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), tmp_name
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: no free temporary name for {name}")


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = _new_temporary(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    return _atomic_write(path, lambda handle: handle.write(data))


def write_text_atomic(path: Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def remove_earlier_outputs(folder: Path, patterns: tuple[str, ...]) -> None:
    """Delete the files matching `patterns` in `folder` that an earlier run of the same command wrote:
    called before writing, so that outputs this run does not write again (a model no longer given,
    a table no longer asked for) do not stay beside its own, where `kdeval report` would show them."""
    for pattern in patterns:
        for path in Path(folder).glob(pattern):
            if path.is_file():
                path.unlink()


def safe_file_stem(name: str) -> str:
    """A model or category name as one file-name part: letters, digits and . _ + - kept, anything else
    (slashes, spaces, quotes) as '_', no leading or trailing dots, so no name can point elsewhere."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", str(name)).strip("._") or "model"


def read_json_or_none(path: Path) -> Any:
    """A JSON file written by kdeval itself, or None when it is absent or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_json_atomic(path: Path, obj: Any, indent: int | None = 2) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def torch_save_atomic(path: Path, obj: Any) -> Path:
    import torch

    return _atomic_write(path, lambda handle: torch.save(obj, handle))


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def cache_root() -> Path:
    """Where kdeval keeps generated datasets and cached detections ($KDEVAL_CACHE or ~/.cache/kdeval)."""
    return Path(os.environ.get("KDEVAL_CACHE", Path.home() / ".cache" / "kdeval"))


# ---------------------------------------------------------------- output folders

MIN_FREE_BYTES = 200 * 1024**2  # below this a long run would likely die on a write hours in


def check_output_folder(folder: Path, min_free_bytes: int = MIN_FREE_BYTES) -> Path:
    """Create `folder` and prove it writable with room to spare, before any long work starts."""
    from kdeval.errors import KdevalError

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".kdeval-probe-"):
            pass
    except OSError as exc:
        raise KdevalError(f"{folder}: output folder is not writable ({exc.strerror or exc})") from None
    free = shutil.disk_usage(folder).free
    if free < min_free_bytes:
        raise KdevalError(f"{folder}: only {free / 1024**2:.0f} MiB free on its disk; kdeval needs at least "
                          f"{min_free_bytes / 1024**2:.0f} MiB to run without failing part-way")
    return folder


# _atomic_write's temporaries (".<name>.<8 random characters>.tmp"; mkstemp's names match too)
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def _held_by_another(lock_path: Path) -> bool:
    import fcntl

    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete what killed runs left in `folder`'s tree: the temporaries of atomic writes that never
    got renamed. Call it holding `folder`'s lock; sub-folders that another live kdeval holds are skipped,
    and so are temporaries written since this call began (a kdeval that took a sub-folder's lock
    after it was checked)."""
    began = time.time_ns()
    removed = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not _held_by_another(Path(root) / d / ".kdeval.lock")]
        for name in files:
            if _TEMPORARY.match(name):
                path = Path(root) / name
                try:
                    if path.stat().st_mtime_ns >= began:
                        continue
                    path.unlink()
                except FileNotFoundError:
                    continue
                removed.append(path)
    return removed


LOCK_TRIES = 4


@contextmanager
def run_lock(folder: Path, what: str):
    """Hold `folder`/.kdeval.lock for the duration: a second kdeval writing the same folder is refused
    at once with a message naming the first, never interleaved. The kernel drops the lock when the
    holder dies, so a killed run leaves no stale lock."""
    import fcntl

    from kdeval.errors import KdevalError

    folder = check_output_folder(folder)
    path = folder / ".kdeval.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        # a few tries: the lock may be held for microseconds by a run on the parent folder that is
        # checking whether this folder is in use (remove_stale_temporaries); a real run holds it for minutes
        for attempt in range(LOCK_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == LOCK_TRIES - 1:
                    holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
                    raise KdevalError(f"{folder}: in use by {holder}; wait for it to finish or write elsewhere") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"kdeval {what} (pid {os.getpid()})".encode(), 0)
        remove_stale_temporaries(folder)
        yield folder
    finally:
        os.close(fd)  # closing releases the lock
