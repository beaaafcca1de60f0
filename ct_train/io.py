"""Files written so that a reader never sees half of one, and output directories checked up front.

Every file ct_train writes for a later reader (checkpoint markers, caches, reports, scored data) is
written to a temporary name beside it and renamed over it: a rename within one directory is atomic,
so a crash leaves the old file or the new one, never a torn one. The temporary name keeps the
file's extension last, because np.save, matplotlib and datasets choose their format by it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
from typing import Any, Dict, Iterator, Optional

import numpy as np

from ct_train.errors import ConfigError


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed."""
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{os.getpid()}{ext}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """Yield `<path>.partial` to fill; on success it becomes `path` (an earlier `path` is removed), so
    `path` is always a complete directory or absent. A `.partial` left by a killed writer is named
    clearly, never taken for the real thing, and cleared by the next writer."""
    tmp = path.rstrip(os.sep) + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    yield tmp
    previous = path.rstrip(os.sep) + ".previous"
    shutil.rmtree(previous, ignore_errors=True)
    if os.path.exists(path):
        os.replace(path, previous)
    os.replace(tmp, path)
    shutil.rmtree(previous, ignore_errors=True)


def write_atomic(path: str, text: str, fsync: bool = False) -> None:
    """Write `text` (UTF-8) to `path` atomically; `fsync`: on disk before the rename (markers)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())


def write_json(path: str, obj: Any, indent: int | None = None, fsync: bool = False) -> None:
    write_atomic(path, json.dumps(obj, indent=indent), fsync=fsync)


def save_npy(path: str, values: np.ndarray) -> None:
    """np.save to `path` atomically, creating its directory."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_path(path) as tmp:
        np.save(tmp, values)


def make_writable_dir(path: str) -> None:
    """Create `path` and prove a file can be written in it (raises OSError otherwise). The probe's
    name holds host and pid: ranks of several nodes may check one shared directory at once."""
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".write_test.{socket.gethostname()}.{os.getpid()}")
    with open(probe, "w") as f:
        f.write("ok")
    os.remove(probe)


def prepare_output_dir(path: str, key: str = "trainer.output_dir") -> str:
    """The absolute, created and writable directory `path`; ConfigError naming `key` otherwise."""
    out = os.path.abspath(os.path.expanduser(path))
    try:
        make_writable_dir(out)
    except OSError as e:
        raise ConfigError(f"{key}={path} is not writable ({e.strerror or e})") from None
    return out


def read_inputs(paths: Dict[str, str]) -> Dict[str, Any]:
    """The JSON files a curriculum declares as static inputs (`Needs.inputs`: config key -> path),
    read for it; ConfigError naming the key when one cannot be read or parsed."""
    out = {}
    for key, path in paths.items():
        try:
            with open(path, encoding="utf-8") as f:
                out[key] = json.load(f)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{key}={path}: cannot read it as JSON ({e})") from None
    return out


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _cached_snapshot(value: str, key: str, repo_type: str) -> str:
    """The snapshot directory of hub repo `value` in the local Hugging Face cache (HF_HUB_CACHE /
    HF_HOME, as a pre-filled cache on an offline cluster); nothing is downloaded. ConfigError naming
    the key when it is not cached."""
    from huggingface_hub import constants, snapshot_download

    try:
        return snapshot_download(value, repo_type=repo_type, local_files_only=True)
    except Exception as e:  # LocalEntryNotFoundError, or a malformed cache entry
        what, give = ("local file or directory nor a dataset", "a path") if repo_type == "dataset" else (
            "local directory nor", "a directory")  # fmt: skip
        fetch = f"hf download --repo-type dataset {value}" if repo_type == "dataset" else f"hf download {value}"
        raise ConfigError(
            f"{key}={value} is neither a {what} in the local Hugging Face cache ({constants.HF_HUB_CACHE}: "
            f"{type(e).__name__}); nothing is downloaded at run time: fetch it where there is network "
            f"(`{fetch}`) into that cache, or give {give}"
        ) from None


def local_model_dir(value: str, key: str) -> str:
    """`value` when it is a directory; a hub model id (`org/name`) as its snapshot in the local
    Hugging Face cache."""
    expanded = os.path.expanduser(value)
    if os.path.isdir(expanded) or not _HUB_ID.fullmatch(value):
        return expanded  # (a missing local path is reported where it is opened)
    return _cached_snapshot(value, key, "model")


def local_dataset_dir(value: str, key: str) -> Optional[str]:
    """A hub dataset id (`org/name`, not a local path) as its snapshot directory in the local Hugging
    Face cache, as `hf download --repo-type dataset` or `datasets.load_dataset` fill it; None when
    `value` is no hub id."""
    if os.path.exists(os.path.expanduser(value)) or not _HUB_ID.fullmatch(value):
        return None
    return _cached_snapshot(value, key, "dataset")


class DirLock:
    """An exclusive lock on a directory for as long as this process holds it (`fcntl.flock` on
    `<dir>/.lock`, released by the kernel when the process dies, so a killed run never leaves a
    stale lock). The file names the holder, for the message another job gets."""

    def __init__(self, path: str, key: str = "trainer.output_dir") -> None:
        import fcntl
        import time

        self.path = os.path.join(path, ".lock")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.fd, 400, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(self.fd)
            raise ConfigError(f"{key}={path} is in use by {holder}; wait for it, or use another {key}") from None
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"pid {os.getpid()} on {socket.gethostname()} (since {stamp})".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None
