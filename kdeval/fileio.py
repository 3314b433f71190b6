"""Atomic writes: a temporary file in the target's folder, flushed, then renamed over the target.

A kill at any moment leaves either the old file or the new one, never a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def write_figure_atomic(stem: Path, figure, formats: tuple[str, ...] = ("png", "pdf"), dpi: int = 150) -> list[Path]:
    """A matplotlib Figure as `stem`.png, `stem`.pdf, ..., each written atomically. PDF metadata
    carries no creation date, so the same figure gives the same bytes."""
    import io

    paths = []
    for fmt in formats:
        buffer = io.BytesIO()
        metadata = {"CreationDate": None} if fmt == "pdf" else None
        figure.savefig(buffer, format=fmt, dpi=dpi, metadata=metadata)
        paths.append(write_bytes_atomic(Path(f"{stem}.{fmt}"), buffer.getvalue()))
    return paths
