"""Checkpoints: written atomically, loaded without running code from the file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch


class CheckpointError(ValueError):
    """A missing, corrupt or mismatched checkpoint (user error, one-line message)."""


def save(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` via a temporary file and an atomic rename."""
    _write_atomically(path, lambda f: torch.save(state, f))


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and an atomic rename."""
    _write_atomically(path, lambda f: f.write(text.encode()))


def _write_atomically(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """``write`` into a fresh temporary file beside ``path``, flushed to disk, then renamed
    over ``path``: a reader sees the old file or the new one, never part of either, and a
    failed write leaves the old file and no temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's file is owner-only; the file it replaces was not
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)  # the rename itself survives a power loss


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()
"""Read once, at import: setting the umask to read it would briefly change it for every
thread of the process (a logger's, say) creating files meanwhile."""


def load(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain data only)."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated/corrupt files
        if str(err).startswith("Weights only load failed"):  # torch's advice to load it unsafely: not ours
            raise CheckpointError(f"{path} holds objects other than tensors and plain data, so it is not "
                                  "a metarl checkpoint (metarl runs no code from a checkpoint)") from None
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable: "
                              f"{str(err).splitlines()[0][:200]}") from None
