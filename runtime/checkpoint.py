"""Checkpoints: every tensor of the training state plus the loop's position,
written atomically (temporary file, fsync, rename), so a crash at any
moment leaves the previous checkpoint whole."""
from __future__ import annotations

import errno
import io
import json
import os
import secrets

import numpy as np

from spec.errors import FLAGS, ArgNames, DataError, FlowgradError, unknown_choice

from .jsontext import checkpoint_record, dumps

META_KEY = "__meta__"


def check_checkpoint(checkpoint, name: str = "checkpoint", error: type[FlowgradError] = FlowgradError) -> None:
    """Which of a run's checkpoints eval, export, plot attention and plot samples read: best or last (anything
    else read the last one). The message names the keyword or flag the user wrote; `error` is
    the class raised (the export API's ExportArgumentError)."""
    if checkpoint not in ("best", "last"):
        raise unknown_choice(checkpoint, name, ("best", "last"), error)


RUN_FILES = ("checkpoint.npz", "best.npz", "best.before_partial.npz", "run.json", "metrics.jsonl", "spec.yaml",
             "result.json", ".lock")


def refuse_run_file(path: str, error: type[FlowgradError] = FlowgradError, *, names: ArgNames) -> None:
    """An output (an export, predictions) must not replace a run directory's own files: those
    beside its run.json, and everything in its graphs/ folder (the graphs its checkpoints fit).
    `names`: how the hint names the output (the CLI's -o, the API's output)."""
    directory = os.path.dirname(os.path.abspath(path))
    in_graphs = os.path.basename(directory) == "graphs" and os.path.isfile(
        os.path.join(os.path.dirname(directory), "run.json"))
    if in_graphs or os.path.basename(path) in RUN_FILES and os.path.isfile(os.path.join(directory, "run.json")):
        raise error(f"{path} is one of the run's own files", hint=f"pick another path with {names('output')}")


def refuse_replacing(path: str, kind: str, error: type[FlowgradError] = FlowgradError, *, names: ArgNames,
                     outputs=None) -> None:
    """An output may replace a file of its own kind (users write again to one path: a previous
    export, predictions, compiled graphs), never another file that a mistyped path names: a
    spec, data, notes. `kind`: "onnx", "npz" or "manifest"; or "directory" for an output that is
    one (compile's, which an existing file of any kind is in the way of). `names`: how the hint
    names the output. An "npz" of outputs is one that predict wrote (see write_predictions), or
    one that holds exactly `outputs`, the names of the arrays about to be written (predictions
    written before predict marked its files); any other .npz of arrays is data."""
    if kind == "directory":
        if os.path.exists(path) and not os.path.isdir(path):
            raise error(f"{path} exists and is not a directory: the graphs and manifest.json are written into one",
                        hint=f"pick another output path with {names('output')}")
        return
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    if not _is_kind(path, kind):
        raise error(f"{path} exists and is not {_KINDS[kind]}: writing there would replace it",
                    hint=f"pick another output path with {names('output')}")
    if kind == "npz":
        held = _arrays_of_data(path, outputs)
        if held is not None:
            shown = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
            raise error(f"{path} is an .npz of data ({shown or 'no arrays'}), not earlier outputs: writing there "
                        "would replace it", hint=f"pick another output path with {names('output')} "
                                                 "(outputs replace only the outputs predict wrote before)")


# The archive comment of the .npz files predict writes (np.load reads past it): tells them from
# .npz files of data, which an output must not replace.
PREDICTIONS_MARK = b"flowgrad predictions"


def _savez(buf, arrays: dict, comment: bytes = b"") -> None:
    """The arrays into `buf` as numpy.savez writes them (an array per entry NAME.npy, stored).
    A Ctrl-C (or the CLI's SIGTERM) that landed as numpy.savez opened an array's entry surfaced
    as its ValueError "Can't close the ZIP file while there is an open writing handle on it" (the
    CLI printed a traceback for its line and exit code 130), and the archive, left half-written,
    raised it again whenever it was garbage-collected. The stop goes on as itself, the archive
    in memory is dropped. Object arrays are pickled, as numpy.savez pickles them: a model's string
    output, which predict -o wrote, was numpy's ValueError "Object arrays cannot be saved when
    allow_pickle=False" and a traceback."""
    import zipfile

    z = zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED, allowZip64=True)
    try:
        for name, a in arrays.items():
            with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(a), allow_pickle=True)
        z.comment = comment
        z.close()
    except BaseException:
        z.fp = None  # (nothing to finish: close() refuses an archive whose entry was cut short)
        raise


def write_predictions(f, arrays: dict) -> None:
    """The arrays into the open file f as an .npz marked as predict's outputs (written as they
    go: predict -o built the whole archive in memory, holding the outputs twice)."""
    _savez(f, arrays, comment=PREDICTIONS_MARK)


def predictions_bytes(arrays: dict) -> bytes:
    """The arrays as the bytes of an .npz marked as predict's outputs."""
    buf = io.BytesIO()
    write_predictions(buf, arrays)
    return buf.getvalue()


def _arrays_of_data(path: str, outputs) -> list[str] | None:
    """The arrays' names of an .npz that holds data rather than earlier outputs, or None."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            if z.comment == PREDICTIONS_MARK:
                return None
            held = [n[:-4] if n.endswith(".npy") else n for n in z.namelist()]
    except Exception:  # (_is_kind read it as a zip archive just before)
        return []
    if outputs is not None and sorted(held) == sorted(outputs):
        return None
    return held


_KINDS = {"onnx": "an ONNX model", "npz": "an .npz of outputs", "manifest": "the manifest.json of compiled graphs"}


def _is_kind(path: str, kind: str) -> bool:
    try:
        if kind == "onnx":
            import onnx

            model = onnx.load(path, load_external_data=False)
            return bool(model.graph.node or model.graph.output)  # (a protobuf parses from many byte strings)
        if kind == "npz":  # (a checkpoint is an .npz too, but no output of arrays)
            import zipfile

            with zipfile.ZipFile(path) as z:
                return META_KEY + ".npy" not in z.namelist()
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        return isinstance(manifest, dict) and "graphs" in manifest and "opset" in manifest
    except Exception:  # unreadable as that kind: another file
        return False


def read_run_info(run_dir: str, error: type[FlowgradError] = DataError, missing_ok: bool = False,
                  hint: str = "pass a run directory that 'flowgrad train' wrote") -> dict:
    """A run directory's run.json as a dict; a missing (unless `missing_ok`: then {}), unreadable
    or malformed one is a one-line `error`, not json's or a dict method's traceback."""
    path = os.path.join(run_dir, "run.json")
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise error(f"{run_dir} has no run.json", hint=hint) from None
    except (OSError, ValueError) as e:  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        raise error(f"{path} is unreadable or malformed ({type(e).__name__})", hint=hint) from None
    if not isinstance(info, dict) or not isinstance(info.get("meta") or {}, dict) \
            or not isinstance(info.get("data_source") or {}, dict):
        raise error(f"{path} is malformed: not the record that flowgrad train writes", hint=hint)
    return info


def make_parent_dir(path: str, error: type[FlowgradError] = FlowgradError, *, names: ArgNames) -> None:
    """The directory an output file goes in, made if missing (export, predict, plot and graph
    write into new directories alike). `names`: how the hint names the output."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        reason = "a file is in the way" if isinstance(e, (FileExistsError, NotADirectoryError)) else e.strerror
        raise error(f"cannot make the directory {directory} for {path}: {reason}",
                            hint=f"pick another path with {names('output')}") from None


def _temporary(directory: str) -> tuple[io.BufferedWriter, str]:
    """A new, empty file in `directory`, open for writing, and its path; made by open(), so its
    mode is 0o666 less the process's umask at this moment. (mkstemp makes it 0600, and the mode
    open() would give, read once at import, missed a umask the process set since: a notebook's
    os.umask(0o077) still got world-readable checkpoints.) A file object, never a bare
    descriptor, which a Ctrl-C before it was wrapped left open for the life of the process."""
    for _ in range(100):
        path = os.path.join(directory, f".tmp-{secrets.token_hex(6)}")
        try:
            return open(path, "xb"), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused name for a temporary file", directory)


def atomic_write(path: str, data, hint: str | None = None, names: ArgNames = FLAGS) -> None:
    """Write the file whole or not at all (a temporary beside it, then a rename): `data` is its
    bytes, or a function that writes them into the open temporary file; `hint` for a file that
    is not a run's (the default hint speaks of checkpoints, and of resuming as `names` name it)."""
    if os.path.isdir(path) or path.endswith(("/", os.sep)):  # (its hint spoke of free space)
        raise FlowgradError(f"cannot write {path}: it names a directory, not a file",
                            hint=f"give the path of the file to write, e.g. {os.path.join(path, 'NAME')}")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        f, tmp = _temporary(directory)
    except OSError as e:
        raise FlowgradError(f"cannot write in {directory}: {e.strerror}",
                            hint=hint or "check the run directory's permissions and free space") from None
    try:
        with f:
            _write(f, data, path)
        os.replace(tmp, path)
    except BaseException as e:  # a full disk, or Ctrl-C in a notebook: no temporary is left open or behind
        with _ignore():
            f.close()
        with _ignore():
            os.unlink(tmp)
        if not isinstance(e, OSError):
            raise
        raise FlowgradError(f"cannot write {path}: {e.strerror}",
                            hint=hint or f"the previous checkpoint is intact; free some space and "
                                         f"{names.given(resume=True)}") from None
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _write(f, data, path: str) -> None:
    """Write and sync the temporary file of `path` (one place, so tests can fill the disk here)."""
    if callable(data):
        data(f)
    else:
        f.write(data)
    f.flush()
    os.fsync(f.fileno())


def remove_stale_temporaries(directory: str) -> None:
    """Temporary files that a killed process left behind (call while holding the directory's lock)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if name.startswith(".tmp-"):
            with _ignore():
                os.unlink(os.path.join(directory, name))


class _ignore:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return True


def checkpoint_bytes(state: dict[str, np.ndarray], meta: dict) -> bytes:
    buf = io.BytesIO()
    arrays = {f"t:{k}": v for k, v in state.items()}
    arrays[META_KEY] = np.frombuffer(dumps(meta).encode(), dtype=np.uint8)
    _savez(buf, arrays)
    return buf.getvalue()


def save_checkpoint(path: str, state: dict[str, np.ndarray], meta: dict) -> None:
    atomic_write(path, checkpoint_bytes(state, meta))


def _damaged(path: str, names: ArgNames, purpose: str) -> str:
    """What to do with a truncated or corrupted checkpoint. A run's checkpoint.npz (the last) and
    best.npz are written separately: the other one may still be whole. A resume is not sent to
    --overwrite while the run has a whole best.npz, which that removes: best.npz is a whole
    checkpoint of its epoch (its step, data position, count of records and optimizer state), and a resume
    from it replays the epochs after it. A warm start (--init-from) is sent to the other one."""
    if purpose == "read":
        return (f"the file is truncated or corrupted: pass the run's other checkpoint (export and eval: "
                f"{names('checkpoint')} best or last), or train anew with {names.given(overwrite=True)}")
    other = _other_checkpoint(path)
    if purpose == "init_from":
        if other is None:
            return f"the file is truncated or corrupted: give {names('init_from')} another run or checkpoint"
        return f"the file is truncated or corrupted; {other} is whole: start from it with " \
               f"{names.given(init_from=other)}"
    if other is None:  # (a resume reads checkpoint.npz: the other is best.npz)
        return f"the file is truncated or corrupted: train anew with {names.given(overwrite=True)}"
    return (f"the file is truncated or corrupted; {other} is a checkpoint too: copy it over {path} and "
            f"{names.given(resume=True)} to go on from its epoch, or start a new run from it with "
            f"{names.given(init_from=other, run_dir='NEW_DIR')} ({names.given(overwrite=True)} would remove it)")


def _other_checkpoint(path: str) -> str | None:
    """A run's other checkpoint beside the one at `path` (best.npz beside checkpoint.npz, and the
    reverse) where it is whole, or None."""
    other = {"checkpoint.npz": "best.npz", "best.npz": "checkpoint.npz"}.get(os.path.basename(path))
    if other is None:
        return None
    other = os.path.join(os.path.dirname(path), other)
    try:
        load_checkpoint(other)
    except DataError:
        return None
    return other


def load_checkpoint(path: str, names: ArgNames = FLAGS, purpose: str = "read") -> tuple[dict[str, np.ndarray], dict]:
    """A checkpoint's (state, record). `names`: how its hints name the caller's arguments (the
    API's keywords, or the CLI's flags); `purpose`: what it is read for, "read" (export, eval),
    "resume" (the checkpoint.npz a resume reads) or "init_from" (a warm start's), which the hint
    for a damaged one answers with the run's other checkpoint."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except IsADirectoryError:
        raise DataError(f"{path} is a directory, not a checkpoint", hint="pass the run directory itself") from None
    except OSError:
        magic = None  # (missing: said below)
    if magic == b"":
        raise DataError(f"checkpoint {path} is empty", hint=_damaged(path, names, purpose))
    if magic is not None and magic != b"PK\x03\x04":  # every .npz is a zip archive
        raise DataError(f"{path} is not a checkpoint: not the .npz archive that flowgrad train writes",
                        hint="pass a run directory, or its checkpoint.npz or best.npz"
                             + (" (an exported .onnx model is for predict)" if path.endswith(".onnx") else ""))
    try:
        with np.load(path, allow_pickle=False) as z:
            if META_KEY not in z.files:  # an .npz of arrays, not one that flowgrad train wrote
                raise DataError(f"{path} is not a checkpoint: an .npz without the record ({META_KEY}) that "
                                "flowgrad train writes", hint="pass a run directory, or its checkpoint.npz or best.npz")
            meta = json.loads(bytes(z[META_KEY]).decode())
            if not isinstance(meta, dict):
                raise ValueError(f"its {META_KEY} is not a record")
            meta = checkpoint_record(meta)  # (a NaN metric is null there, an infinite one "Infinity" or "-Infinity")
            state = {k[2:]: z[k] for k in z.files if k.startswith("t:")}
    except FileNotFoundError:
        raise DataError(f"no checkpoint at {path}", hint="pass a run directory that 'flowgrad train' wrote, or train first") from None
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"checkpoint {path} is unreadable ({e})", hint=_damaged(path, names, purpose)) from None
    return state, meta


def checkpoint_meta(path: str) -> dict | None:
    """A checkpoint's record alone (its arrays are not read), None if it is missing or cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z[META_KEY]).decode())
        return meta if isinstance(meta, dict) else None
    except Exception:
        return None


def holds_its_best(meta: dict | None) -> bool:
    """Whether a checkpoint's record names its own epoch as the run's best: its weights are the best's."""
    return bool(meta) and (meta.get("best") or {}).get("step", -1) == meta.get("step")


def checkpoint_path(run_dir: str, checkpoint: str = "best") -> str:
    """The file of a run that eval, export and plot read as its `checkpoint` ("best" or "last"):
    the last is checkpoint.npz; the best is best.npz, or checkpoint.npz where that is missing (a run
    stopped before its first best) or where the checkpoint's record of the best is its own epoch and
    best.npz was written at another step (a run stopped between an epoch's checkpoint and its
    best.npz, which follows it; a resume writes it again)."""
    last, best = os.path.join(run_dir, "checkpoint.npz"), os.path.join(run_dir, "best.npz")
    if checkpoint != "best" or not os.path.exists(best):
        return last
    meta = checkpoint_meta(last)
    if holds_its_best(meta) and (checkpoint_meta(best) or {}).get("step") != meta["step"]:
        return last
    return best
