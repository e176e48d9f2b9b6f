"""Checkpoints: every tensor of the training state plus the loop's position,
written atomically (temporary file, fsync, rename), so a crash at any
moment leaves the previous checkpoint whole."""
from __future__ import annotations

import io
import json
import os
import tempfile

import numpy as np

from spec.errors import DataError, FlowgradError

META_KEY = "__meta__"


def atomic_write(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    except OSError as e:
        raise FlowgradError(f"cannot write in {directory}: {e.strerror}", hint="check the run directory's permissions and free space") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with _ignore():
            os.unlink(tmp)
        raise FlowgradError(f"cannot write {path}: {e.strerror}", hint="the previous checkpoint is intact; free some space and --resume") from None
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


class _ignore:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return True


def save_checkpoint(path: str, state: dict[str, np.ndarray], meta: dict) -> None:
    buf = io.BytesIO()
    arrays = {f"t:{k}": v for k, v in state.items()}
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(buf, **arrays)
    atomic_write(path, buf.getvalue())


def load_checkpoint(path: str) -> tuple[dict[str, np.ndarray], dict]:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z[META_KEY]).decode())
            state = {k[2:]: z[k] for k in z.files if k.startswith("t:")}
    except FileNotFoundError:
        raise DataError(f"no checkpoint at {path}", hint="train first, or drop --resume") from None
    except Exception as e:
        raise DataError(f"checkpoint {path} is unreadable ({e})") from None
    return state, meta
