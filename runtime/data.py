"""Data that needs no download, and users' .npz files (or arrays given in memory to the API)
checked against the spec.

A dataset is a dict of arrays keyed by the spec's input names, all with the
same first dim (examples). Bundled sets:

- digits / digits_images: the UCI 8x8 handwritten digits (1,797 images)
  that ship with scikit-learn, as x [N, 64] or x [N, 1, 8, 8] in [0, 1], y int64.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from spec.errors import DataError, FlowgradError, Loc, did_you_mean
from spec.loader import home_hint

from .checks import check_count, check_path, is_whole_number

BUNDLED = ("digits", "digits_images", "text", "segment", "dates", "reverse", "copy")
# The version of each bundled dataset's generator, which run.json records with the data source:
# a generator that draws other examples for the same options gets the next one, so that a run
# trained on the old examples is told the dataset changed, not that its data or split did.
# 2: reverse, copy and dates draw distinct examples; labelled digits mark exactly K.
DATASET_VERSIONS = {"digits": 2, "digits_images": 2, "text": 1, "segment": 1, "dates": 2, "reverse": 2, "copy": 2}


@dataclass
class Dataset:
    arrays: dict[str, np.ndarray]
    name: str
    meta: dict = field(default_factory=dict)  # e.g. vocabularies

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 0

    def subset(self, idx: np.ndarray) -> "Dataset":
        return Dataset({k: v[idx] for k, v in self.arrays.items()}, self.name, self.meta)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for k in sorted(self.arrays):
            a = np.ascontiguousarray(self.arrays[k])
            h.update(k.encode())
            h.update(str(a.dtype).encode() + str(a.shape).encode())
            h.update(a.reshape(-1).view(np.uint8))  # (its bytes where they are: tobytes() copied them all)
        return h.hexdigest()[:16]


def _sklearn_data_file(name: str) -> str:
    # Locate the file without importing scikit-learn (its import is slow).
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the digits dataset needs scikit-learn installed", hint="pip install scikit-learn")
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", name)
    if not os.path.exists(path):
        raise DataError(f"scikit-learn's bundled file {name} is missing at {path}", hint="reinstall scikit-learn (pip install --force-reinstall scikit-learn), or train on your own .npz")
    return path


def load_digits(images: bool = False, labelled: int | None = None) -> Dataset:
    """The digits; with `labelled: k`, also a float mask `has_label` that is 1 for k
    training examples (spread evenly over the classes) and 0 for the rest, for
    semi-supervised specs. The k are picked within the training part of a
    train/valid split (see `split`), so they are all training examples; a split that
    leaves fewer than k is refused."""
    with gzip.open(_sklearn_data_file("digits.csv.gz"), "rt") as f:
        raw = np.loadtxt(f, delimiter=",", dtype=np.float64)
    x = (raw[:, :64] / 16.0).astype(np.float32)
    y = raw[:, 64].astype(np.int64)
    if images:
        x = x.reshape(-1, 1, 8, 8)
    ds = Dataset({"x": x, "y": y}, "digits_images" if images else "digits",
                 {"classes": [str(i) for i in range(10)]})
    if labelled is not None:
        labelled = check_count(f"dataset {ds.name!r}: option labelled", labelled, 1, most=len(y), error=DataError,
                               hint=f"write e.g. labelled: 100, a whole number from 1 to {len(y)}")
        ds.meta["labelled"] = labelled
        ds = mark_labelled(ds, labelled)
    return ds


def mark_labelled(ds: Dataset, k: int, seed: int = 0) -> Dataset:
    """`has_label` = 1 for k examples spread evenly over the classes of `y` (seeded), else 0.
    A class with fewer examples than its share has them all marked, and the classes with
    examples to spare make up the rest, so that exactly k are marked."""
    y = ds.arrays["y"]
    if k > len(y):
        raise DataError(f"dataset {ds.name!r}: option labelled {k} is more than the {len(y)} examples there are to "
                        "mark", None,
                        f"use labelled: {len(y)} or fewer")
    rng = np.random.default_rng([seed, 2718])
    classes = np.unique(y)
    shuffled = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    sizes = np.array([len(p) for p in shuffled])
    level = k // len(classes)  # each class takes min(size, level), the first classes above it one more
    while level < sizes.max() and np.minimum(sizes, level + 1).sum() <= k:
        level += 1
    take = np.minimum(sizes, level)
    take[np.flatnonzero(sizes > level)[:k - int(take.sum())]] += 1
    chosen = [i for p, t in zip(shuffled, take.tolist()) for i in p[:t]]
    mask = np.zeros(len(y), dtype=np.float32)
    mask[np.asarray(chosen, dtype=np.int64)] = 1.0
    return Dataset({**ds.arrays, "has_label": mask}, ds.name, ds.meta)


def _digits_options(name: str, options: dict, loc: Loc | None) -> dict:
    unknown = [k for k in options if k != "labelled"]
    if unknown:  # (worded as the text datasets' are: runtime.datasets_text._reject_unknown)
        raise DataError(f"dataset {name!r} has no option {unknown[0]!r}", loc,
                        did_you_mean(str(unknown[0]), ["labelled"])
                        or f"options of {name}: labelled (K: a has_label mask over K training examples)")
    return options


def dataset_options(name: str) -> list[str]:
    """The options a bundled dataset takes (its loader's keywords), in the loader's order."""
    if name in ("digits", "digits_images"):
        return ["labelled"]
    import inspect

    from . import datasets_text

    loader = getattr(datasets_text, f"load_{name}")
    return [p.name for p in inspect.signature(loader).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]


def _check_option_names_and_values(name: str, options: dict) -> None:
    """Option names are words (a key such as `1: 2` reached the loader as a keyword, a
    TypeError), and an option written without a value (`n:` or `n: null`) is refused: the
    loaders crashed on it or read it as left out, without a word."""
    known = dataset_options(name)
    for key, value in options.items():
        if not isinstance(key, str):
            raise DataError(f"dataset {name!r} has no option {key!r}", None, f"options of {name}: {', '.join(known)}")
        if value is None and key in known:
            raise DataError(f"dataset {name!r}: option {key} is empty (null)", None,
                            f"give {key} a value, or leave it out for its default")


def load_bundled(name: str, options: dict | None = None, loc: Loc | None = None,
                 check_only: bool = False) -> Dataset | None:
    """A bundled dataset made with `options`; `check_only`: its options checked as making it
    checks them, and None returned where it would start making examples (flowgrad check)."""
    options = options or {}
    from . import datasets_text

    checking = datasets_text.CHECKING_OPTIONS_ONLY.set(check_only)
    try:
        if name in BUNDLED:
            _check_option_names_and_values(name, options)
        if name == "digits":  # (the digits load in milliseconds: labelled is checked against their count)
            return load_digits(False, **_digits_options(name, options, loc))
        if name == "digits_images":
            return load_digits(True, **_digits_options(name, options, loc))
        loader = getattr(datasets_text, f"load_{name}", None)
        if loader is None:
            raise DataError(f"unknown dataset {name!r}", loc, f"bundled datasets: {', '.join(BUNDLED)}")
        return loader(**options)
    except datasets_text.OptionsChecked:
        return None
    except DataError as e:  # a bad option: point at the spec's data section
        if e.loc is None:
            e.loc = loc
        raise
    finally:
        datasets_text.CHECKING_OPTIONS_ONLY.reset(checking)


# An .npz whose arrays would unpack beyond this, or far beyond their packed size, is refused
# before anything is unpacked (a few kilobytes can otherwise expand to all memory).
MAX_UNPACKED_BYTES = 1 << 34
MAX_PACKING_RATIO = 1000
RATIO_CHECKED_ABOVE = 1 << 28


def _refuse_zip_bomb(path: str, loc) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})", loc, "write it with numpy.savez") from None
    unpacked = sum(i.file_size for i in infos)
    packed = max(sum(i.compress_size for i in infos), 1)
    if unpacked > MAX_UNPACKED_BYTES and unpacked / packed <= MAX_PACKING_RATIO:
        # a large file, not a bomb: it was told to save its arrays uncompressed, as they are
        raise DataError(f"{path}: its arrays hold {unpacked / 2**30:.1f} GiB, more than the "
                        f"{MAX_UNPACKED_BYTES / 2**30:g} GiB that flowgrad reads from one .npz", loc,
                        "save a sample of the examples, or give the arrays to the Python API's train(data={...}), "
                        "which takes any size (memory maps of .npy files too)")
    if unpacked > MAX_UNPACKED_BYTES or (unpacked > RATIO_CHECKED_ABOVE and unpacked / packed > MAX_PACKING_RATIO):
        raise DataError(f"{path}: its arrays would unpack to {unpacked / 2**30:.1f} GiB from {packed / 2**20:.1f} MiB",
                        loc, "refusing what looks like a decompression bomb; save the arrays uncompressed or smaller")


def check_data_path(path: str, loc: Loc | None = None, flag: str | None = None, key: str | None = None,
                    spec_path: str | None = None) -> None:
    """A data file that exists and is not a directory. `flag`: the option that gave the path
    (--valid, or the API's valid), which the message names (a missing --valid file was a 'data
    file' whose hint spoke of --data); `key`: else the spec key that gave it (train.data.path),
    read beside the spec file at `spec_path` (None: a spec given as data, whose paths start at
    the working directory)."""
    what = f"{flag or key} file" if flag or key else "data file"
    if not os.path.exists(path):
        if flag:
            where = f"; a relative path given with {flag} starts at the working directory"
        elif key and spec_path:
            where = (f"; a relative {key} is read beside the spec file (in "
                     f"{os.path.dirname(os.path.abspath(spec_path))}), not from the working directory")
        elif key:
            where = f"; the spec has no file, so a relative {key} starts at the working directory"
        else:
            where = ""
        written = os.path.basename(path)
        if re.fullmatch(r"\d+,\d+", written) and (flag or key or "").endswith(("valid", "test")):
            # a decimal comma: the fraction was read as a file's name
            raise DataError(f"{what} {path!r} does not exist", loc,
                            hint=f"a fraction is written with a decimal point: {written.replace(',', '.')}")
        # ('~/d.npz' given quoted, or in a spec, where no shell expands it: read beside the spec as '~')
        tilde = path[path.index("~"):] if path.startswith("~") or f"{os.sep}~{os.sep}" in path else None
        raise DataError(f"{what} {path!r} does not exist", loc, hint=(tilde and home_hint(tilde)) or "check the path" + where)
    if os.path.isdir(path):
        raise DataError(f"{what} {path!r} is a directory", loc, "pass an .npz file written by numpy.savez")


# run.json's record of data the API was given as arrays in memory (its data_source, or the
# data_source's valid): no file that a resume, eval or plot samples could read them from again
IN_MEMORY = {"arrays": "given in memory"}


@dataclass(frozen=True)
class InMemory:
    """Arrays given in memory (train's data= or valid=, evaluate_run's data=), as messages name
    them where they name a file: the whole as its keyword, data=, and one array as the caller
    wrote it, data["x"] (a file's is train.npz: array 'x')."""
    keyword: str

    def __str__(self) -> str:
        return f"{self.keyword}="

    def array(self, name: str) -> str:
        return f'{self.keyword}["{name}"]'


def array_named(where, name: str, what: str = "array", alone: bool = False) -> str:
    """One array of the data at `where` (a path or an InMemory) as messages name it: "train.npz:
    array 'x'" (`alone`: "array 'x'", the data being named already), or data["x"]."""
    if isinstance(where, InMemory):
        return where.array(name)
    return f"{what} {name!r}" if alone else f"{where}: {what} {name!r}"


def in_memory(data) -> bool:
    """Whether an API's data= or valid= gives arrays in memory (a mapping: a dict, np.load's
    NpzFile) rather than a path."""
    return isinstance(data, Mapping)


def data_argument(name: str, value, error: type[FlowgradError] = FlowgradError):
    """The API's data= or valid= (`name`): arrays in memory (a mapping, read by from_arrays), kept
    as given, or a path as check_path takes it. A list, an array or a DataFrame is refused here,
    not taken for a path."""
    if isinstance(value, np.lib.npyio.NpzFile) and value.zip is None:  # (its arrays: an AttributeError)
        raise error(f"{name}= is np.load's result after its file was closed (the end of its with block, or close())",
                    hint=f"call train (or evaluate_run) inside the with block, or pass {name}=dict(z) made there")
    if value is None or in_memory(value):
        return value
    if not isinstance(value, (str, os.PathLike)):
        raise error(f"{name} must be a path or a mapping of input name to array, got {type(value).__name__}",
                    hint=f'give {name} as a str or a pathlib.Path of an .npz, or the arrays by input name, '
                         f'{name}={{"x": x, "y": y}}')
    return check_path(name, value, error)


def as_array(value, what: str, loc: Loc | None = None) -> np.ndarray:
    """`value` (an array, or lists of numbers) as a plain array, read where it is (a memmap, a
    matrix: a view); ragged lists and what NumPy cannot read are a DataError naming `what`
    (data["x"], or a model's input). np.load's pickled arrays stay its ValueError, for the caller
    to word."""
    try:
        return np.asarray(value).view()
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise
        if "inhomogeneous" in str(e) or "sequence" in str(e):
            raise DataError(f"{what} is ragged: its rows are not all of one shape", loc,
                            "give every example the same shape, e.g. pad the rows to one length") from None
        raise DataError(f"{what} cannot be read as an array ({str(e).splitlines()[0][:160]})", loc,
                        "give a NumPy array, or a list of numbers") from None
    except (TypeError, RuntimeError, OverflowError) as e:
        raise DataError(f"{what} cannot be read as an array ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160] if str(e) else ''})", loc,
                        "give a NumPy array, or a list of numbers") from None


def from_arrays(arrays: Mapping, where: InMemory, inputs: dict | None = None) -> Dataset:
    """Arrays given in memory (input name -> array-like), read as load_npz reads a file, so that
    check_against_spec checks them as it checks a file's: each one read where it is, through a
    read-only view (the caller's arrays are neither copied whole, which a large one could not
    afford, nor ever changed: a write into one fails), a list made an array; refused: no arrays,
    a name that is not a string, ragged lists and object arrays (an .npz cannot hold those without
    pickling). `inputs` lets an error about one array point at its declaration."""
    out = {}
    for k in arrays:
        if not isinstance(k, str):
            raise DataError(f"{where} has the key {k!r} ({type(k).__name__}): arrays are named by the spec's "
                            "input names, strings", hint=f'e.g. {where.keyword}={{"x": x, "y": y}}')
        loc = inputs[k].loc if inputs and k in inputs else None
        try:
            value = as_array(arrays[k], where.array(k), loc)
        except ValueError as e:  # np.load's object arrays (allow_pickle)
            raise _object_array(where, k, loc) from None
        if value.dtype.kind == "O":
            raise _object_array(where, k, loc)
        value.flags.writeable = False  # (the view's: the caller's array keeps its own flags)
        out[k] = value
    if not out:
        raise DataError(f"{where} holds no arrays", hint=f'give one array per input, e.g. {where.keyword}={{"x": x, "y": y}}')
    return Dataset(out, str(where))


def _object_array(where: str | InMemory, name: str, loc: Loc | None) -> DataError:
    """An object array refused, in a file (pickled: never unpickled) or given in memory: its
    values are Python objects, which no graph takes."""
    memory = isinstance(where, InMemory)
    return DataError(f"{array_named(where, name)} is an object array "
                     f"({'Python objects, not numbers' if memory else 'pickled Python objects'})", loc,
                     f"object arrays are refused; {'give' if memory else 'save'} plain numeric arrays, "
                     "e.g. numpy.asarray(x, dtype='float32')")


def load_given(data, keyword: str, inputs: dict | None = None) -> tuple[Dataset, str | InMemory]:
    """(the data that an argument, data= or --data (`keyword` as the caller wrote it), gives: arrays
    in memory or an .npz's path; what messages call it)."""
    if in_memory(data):
        where = InMemory(keyword)
        return from_arrays(data, where, inputs), where
    return load_npz(data, None, inputs), data


def load_npz(path: str, loc: Loc | None = None, inputs: dict | None = None) -> Dataset:
    """A user's .npz, refusing pickled object arrays. `inputs` (the spec's input
    declarations) lets an error about one array point at its declaration."""
    check_data_path(path, loc)
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror})", loc, hint="check the file's permissions") from None
    if magic.startswith(b"\x93NUMPY"):
        raise DataError(f"{path}: is a single .npy array, not an .npz archive of named arrays", loc,
                        "write it with numpy.savez(path, x=..., y=...), one array per input")
    if not magic.startswith(b"PK"):
        raise DataError(f"{path}: not an .npz file (it is not a zip archive)", loc, "write it with numpy.savez")
    _refuse_zip_bomb(path, loc)
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            for k in z.files:
                where = inputs[k].loc if inputs and k in inputs else loc
                try:
                    value = z[k]
                except ValueError as e:
                    if "allow_pickle" in str(e):
                        raise _object_array(path, k, where) from None
                    raise DataError(f"{path}: array {k!r} cannot be read: its header or data is damaged", where,
                                    "write the file again with numpy.savez") from None
                if isinstance(value, np.ndarray):
                    arrays[k] = value
                elif inputs and k in inputs:  # a member that is not an .npy array (numpy returns its bytes)
                    raise DataError(f"{path}: member {k!r} is not a numpy array", where,
                                    "write the arrays with numpy.savez(path, x=..., y=...)")
                # other files in the archive (a README, say) are not data: left alone
    except DataError:
        raise
    except (ValueError, zipfile.BadZipFile, OSError, EOFError, KeyError, RuntimeError, NotImplementedError) as e:
        # (RuntimeError: an encrypted archive; NotImplementedError: a compression numpy cannot read)
        raise DataError(f"{path}: not a readable .npz file ({str(e).splitlines()[0][:160]})", loc,
                        "write it with numpy.savez or numpy.savez_compressed") from None
    except MemoryError:  # an array header that claims far more data than the file holds
        raise DataError(f"{path}: an array claims more memory than this machine has", loc,
                        "the file is damaged, or not an .npz written by numpy.savez") from None
    if not arrays:
        raise DataError(f"{path}: contains no arrays", loc, hint="save the arrays by name, e.g. numpy.savez(path, x=x, y=y)")
    return Dataset(arrays, os.path.basename(path))


def check_against_spec(ds: Dataset, spec, needed: list[str], where: str | InMemory, bounds: dict | None = None,
                       dtypes: dict[str, str] | None = None, length_bounds: dict | None = None,
                       least_sizes: dict | None = None, ignored: dict | None = None, trained: bool = False) -> None:
    """Every input the graphs need is present, with the declared rank, dtype
    kind, fixed dims and equal lengths; float inputs are finite; ids and labels
    are below the size of what they index (`bounds`: CompiledModel.index_bounds), and none is
    negative, bar a label that cross_entropy ignores (`ignored`: CompiledModel.ignored_labels);
    values fit the dtype each array is cast to (`dtypes`: the graphs' input types);
    sequence lengths are within their sequence's steps (`length_bounds`: CompiledModel's);
    symbolic dims are as long as the slices of them assume (`least_sizes`: CompiledModel's).
    `where`: the file, or the arrays given in memory (InMemory), as messages name them.
    `trained`: the spec is a trained run's, whose fixed sizes the data must take (not declare anew)."""
    from spec.errors import did_you_mean

    lengths = {}
    sizes: dict[str, tuple[int, str]] = {}  # symbolic dim (other than the examples') -> (size, array)
    bundled = ds.name in BUNDLED  # its arrays are fixed: the spec is what to change, not a file
    memory = isinstance(where, InMemory)  # arrays the caller holds: to change before passing them, not saving
    saving = "" if memory else " before saving it"

    def declare(name: str, a: np.ndarray) -> str:
        """How to declare a bundled dataset's array (README's Bundled datasets lists them all)."""
        shape = ", ".join(["N"] + [str(d) for d in a.shape[1:]])
        return (f"dataset {ds.name!r} gives {name} as [{shape}] {a.dtype}: declare "
                f"{name}: {{shape: [{shape}]{'' if a.dtype.kind == 'f' else f', dtype: {a.dtype}'}}}"
                + (" (digits_images gives the digits as [N, 1, 8, 8] images)" if ds.name == "digits" and name == "x" else ""))

    for name in needed:
        decl = spec.inputs[name]
        if not decl.shape:  # (its 0-d array ended training in an IndexError where batches are cut)
            raise DataError(f"input {name!r} is a scalar (shape []) that training and evaluation read, but their data "
                            f"give each input one value per example", decl.loc,
                            "declare it with the batch dim first ([N], or [N, 1] to scale rows) and give one value "
                            "per example; or write the number in the spec (a number, or a dim under dims:)")
        if name not in ds.arrays:
            # (the digits' has_label is made by their labelled option, not named after an array they hold)
            labelled = bundled and name == "has_label" and ds.name in ("digits", "digits_images")
            raise DataError(f"{where}{' has' if memory else ':'} no array named {name!r} for the input declared at {decl.loc}", decl.loc,
                            (f"dataset {ds.name!r} gives has_label with its labelled option: add options: "
                             "{labelled: K} to train.data, K the training examples that keep their label (e.g. 100)")
                            if labelled else did_you_mean(name, ds.arrays)
                            or (f"dataset {ds.name!r} gives the arrays {', '.join(ds.arrays)}: name the spec's inputs after them"
                                if bundled else f"{where if memory else 'the file'} has: {', '.join(ds.arrays) or 'nothing'}"))
        a = ds.arrays[name]
        array = array_named(where, name)
        if a.ndim != len(decl.shape):
            raise DataError(f"{array} has rank {a.ndim} {shape_text(a.shape)}, the spec declares "
                            f"{shape_text(decl.shape)}", decl.loc,
                            hint=declare(name, a) if bundled else f"reshape the array to rank {len(decl.shape)}{saving}, or change the input's shape in the spec")
        for i, (got, want) in enumerate(zip(a.shape, decl.shape)):
            if isinstance(want, int) and got != want:
                raise DataError(f"{array} has size {got} in dim {i}, the spec declares {want}", decl.loc,
                                hint=declare(name, a) if bundled
                                else f"{'give' if memory else 'save'} the array with {want} in dim {i}, the size the model was trained with" if trained
                                else f"{'give' if memory else 'save'} the array with {want} in dim {i}, or declare that dim as {got} (or as a symbolic dim such as N)")
        want_float = decl.dtype.startswith("float")
        if want_float and a.dtype.kind not in "fiub":
            raise DataError(f"{array} has dtype {a.dtype}, the spec declares {decl.dtype}", decl.loc, hint=f"{'give' if memory else 'save'} it as numbers, e.g. x.astype('{decl.dtype}')")
        if not want_float and a.dtype.kind not in "iub":
            raise DataError(f"{array} has dtype {a.dtype}, the spec declares {decl.dtype}", decl.loc,
                            declare(name, a) if bundled else "labels and ids must be integers")
        if a.size == 0:
            raise DataError(f"{array} is empty", decl.loc, hint=f"{'give' if memory else 'save'} at least one example in the array")
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            bad = int(np.argwhere(~np.isfinite(a))[0][0]) if a.ndim else 0
            raise DataError(f"{array} has NaN or inf values (first at example {bad})", decl.loc, hint=f"replace or drop those examples{'' if memory else ' before saving the .npz'}, e.g. with numpy.nan_to_num or a mask of numpy.isfinite")
        if name in (ignored or {}) and a.dtype.kind in "iu" and a.size:  # (no class id: checked as one, 0)
            a = np.where(a == ignored[name], 0, a)
        if not want_float and a.dtype.kind == "i" and a.size and a.min() < 0:
            bad = int(np.argwhere(a < 0)[0][0]) if a.ndim else 0
            value = int(a.reshape(-1)[np.argmax(a.reshape(-1) < 0)])
            raise DataError(f"{array} has negative values (first at example {bad}: {value})", decl.loc,
                            "integer inputs are ids, labels, lengths or masks, and none is negative"
                            + (f"; labels of {value} that the loss should leave out (PyTorch's padding label) are "
                               f"cross_entropy(..., ignore_index={value})" if value == -100 else ""))
        check_fits(a, (dtypes or {}).get(name), array, decl.loc)
        if bounds and name in bounds:
            size, what = bounds[name]
            check_below(a, size, array, what.format(size), decl.loc,
                        "ids and labels count from 0: check the data, or enlarge the vocabulary or class count in dims")
        for i, (got, want) in enumerate(zip(a.shape, decl.shape)):
            if i and isinstance(want, str):  # the same symbolic dim in two arrays must have one size
                first = sizes.setdefault(want, (got, name))
                if first[0] != got:
                    raise DataError(f"{array} has size {got} in dim {i} ({want}), but "
                                    f"{array_named(where, first[1], alone=True)} has {want} = {first[0]}", decl.loc, hint=f"arrays that share the dim {want} must have the same size in it: one example per row of each")
        if a.ndim:
            lengths[name] = len(a)
    if len(set(lengths.values())) > 1:
        first = next(iter(lengths))
        odd = next(k for k, v in lengths.items() if v != lengths[first])
        raise DataError(f"{array_named(where, odd)} has {lengths[odd]} examples, but {array_named(where, first, alone=True)} has {lengths[first]}",
                        spec.inputs[odd].loc, "every array holds one entry per example, along its first dim")
    check_least_sizes(least_sizes, dim_sizes(ds.arrays, {k: spec.inputs[k].shape for k in needed}, where))
    check_lengths(ds.arrays, {k: b for k, b in (length_bounds or {}).items() if k in needed and b["of"] in needed},
                  where, {k: spec.inputs[k].loc for k in needed})


def dim_sizes(arrays: Mapping, shapes: Mapping, where, what: str = "array") -> dict[str, tuple[int, str]]:
    """{symbolic dim: (its size, the first array that has it, as messages name it)} of arrays
    whose shapes are checked against theirs (`shapes`: the declared shape of each, by name), the
    examples' dim (the first) among them: the sizes the least sizes of slices are checked against."""
    out: dict[str, tuple[int, str]] = {}
    for name, shape in shapes.items():
        a = arrays.get(name)
        for got, want in zip(getattr(a, "shape", ()), shape):
            if isinstance(want, str) and want:
                out.setdefault(want, (int(got), array_named(where, name, what)))
    return out


def check_least_sizes(least_sizes: dict | None, sizes: dict[str, tuple[int, str]], hint: str | None = None) -> None:
    """The least sizes the slices of symbolic dims assume (CompiledModel.least_sizes) against the
    sizes the data gives those dims (dim_sizes): a dim, or a product of dims that a reshape made
    (2*N*T, whose size follows from N's and T's). What the data does not size is not checked."""
    from compiler.ir import dim_symbols, dim_value

    for dim, least in (least_sizes or {}).items():
        names = dim_symbols(dim) if isinstance(dim, str) else []
        if names and all(n in sizes for n in names):
            got = dim_value(dim, {n: sizes[n][0] for n in names})
            check_least_size(dim, got, sizes[names[0]][1], least, hint)


def check_least_size(dim: str, got: int, array: str, least: dict | None, hint: str | None = None) -> None:
    """A symbolic dim of `got` entries against the least size a slice of it assumes (`least`:
    an entry of CompiledModel.least_sizes): shorter, the slice has fewer entries than the graph's
    shape says, and onnxruntime failed far from the spec, or went on with the wrong shape; and
    against the most a lookup of its positions takes ("most"): longer, they index past the table."""
    if not isinstance(least, dict):
        return  # (a model from someone else may say anything there: what is not such a record is not read)
    most = least.get("most")
    if is_whole_number(most) and got > most:
        where, loc = _where_recorded(least.get("rows_at"))
        rows = least.get("rows")
        less = most - rows if is_whole_number(rows) and rows <= most else 0  # positions of T-1: most is rows + 1
        shift = f"-{less}" if less else ""
        raise DataError(f"{array} has {dim} = {got}, but positions of {dim}{shift}{where} index a table of "
                        f"{most - less} rows", loc,
                        hint or f"give data with {dim} of {most} or fewer, or a table of {got - less} rows or more")
    if not isinstance(least.get("least"), int) or got >= least["least"]:
        return
    where, loc = _where_recorded(least.get("at"))
    n = int(least["least"])
    raise DataError(f"{array} has {dim} = {got}, but the slice {least.get('slice', '')} of {dim}{where} needs "
                    f"{dim} of {n} or more", loc,
                    hint or f"give data with {dim} of {n} or more, or slice {dim} with bounds that the data reaches")


def _where_recorded(at) -> tuple[str, Loc | None]:
    """A record's 'file:line:column' as the location of the message, or where that is no location,
    as text to put in it (" at ..."; "" where the record has none)."""
    at = str(at or "")
    parts = at.rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return "", Loc(parts[0], int(parts[1]), int(parts[2]))
    return (f" at {at}" if at else ""), None


def check_below(a: np.ndarray, size: int, array: str, why: str, loc, hint: str, at: str = "example") -> None:
    """Integer ids or labels below `size`, the rows or classes they index (`why` says what), in
    training data and in predict's inputs alike: a larger one fails inside onnxruntime's Gather,
    or picks nothing. `array`: the array as messages name it (array_named)."""
    if a.dtype.kind not in "iu" or not a.size or a.max() < size:
        return
    # (a scalar input, such as a generator's label, has no examples to point at)
    where = f" (first too large at {at} {int(np.argwhere(a >= size)[0][0])})" if a.ndim else ""
    raise DataError(f"{array} has the value {int(a.max())}{where}, but {why}", loc, hint)


def check_lengths(arrays: dict[str, np.ndarray], lengths: dict, where: str | InMemory, locs: dict | None = None,
                  what: str = "array") -> None:
    """Each lengths array counts steps of its sequence's rows (`lengths`: CompiledModel.length_bounds,
    or an exported model's): from its least (0, or 1 where an attention reads the mask) to the size
    of the sequence array's time axis. The graphs take any larger one as all the steps, without a word."""
    for name, b in lengths.items() if isinstance(lengths, dict) else ():
        if not (isinstance(b, dict) and isinstance(b.get("of"), str) and type(b.get("axis")) is int
                and type(b.get("least")) is int):  # (an exported model may come from anyone)
            continue
        if name not in arrays or b["of"] not in arrays or not 0 < b["axis"] < arrays[b["of"]].ndim:
            continue
        a, steps, least = arrays[name], arrays[b["of"]].shape[b["axis"]], int(b["least"])
        bad = np.flatnonzero((a > steps) | (a < least)) if a.ndim == 1 else []
        if len(bad):
            i, value = int(bad[0]), a[bad[0]].item()
            within = f"a length counts the steps of its example's row of {b['of']} before the padding: {least} to {steps}"
            if value > steps:
                raise DataError(f"{array_named(where, name, what)} holds the length {value} at example {i}, beyond the "
                                f"{steps} steps of {array_named(where, b['of'], what, alone=True)} (its dim {b['axis']})", (locs or {}).get(name), within)
            why = (f"every row of {b['of']!r} needs at least 1 step: an attention reads the mask made from it"
                   if least else "a length counts steps, 0 or more")
            raise DataError(f"{array_named(where, name, what)} holds the length {value} at example {i}, but {why}",
                            (locs or {}).get(name), f"{within}; drop the examples without steps")


def check_fits(a: np.ndarray, dtype: str | None, array: str, loc, why: str = "", other: str = "") -> None:
    """Casting `a` to `dtype` keeps its values: integers within the target's range (a cast
    would wrap them), floats within its largest finite value (a cast would make them inf).
    `array`: the array as messages name it (array_named); `why` says where the cast is made and
    `other` adds a way out to the hint."""
    if dtype is None or not a.size or a.dtype.kind not in "iuf" or np.dtype(dtype) == a.dtype:
        return
    target = np.dtype(dtype)
    if target.kind in "iu" and a.dtype.kind in "iu":
        info = np.iinfo(target)
        lo, hi = int(a.min()), int(a.max())
        if lo < info.min or hi > info.max:
            bad = lo if lo < info.min else hi
            raise DataError(f"{array} holds {bad}, outside the range of {dtype}, the type it is read as",
                            loc, f"{dtype} holds {info.min} to {info.max}; check the data or the input's dtype")
    elif target.kind == "f" and a.dtype.kind == "f" and target.itemsize < a.dtype.itemsize:
        big = float(np.max(np.abs(a)))
        if big > float(np.finfo(target).max):
            raise DataError(f"{array} holds {big:g}, beyond {dtype}'s range (it would become inf{why})",
                            loc, f"{dtype} holds magnitudes up to {float(np.finfo(target).max):g}: stay below it "
                                 f"(data inputs are usually standardised or in [0, 1]){other}")


def only(ds: Dataset, names: list[str]) -> Dataset:
    """The dataset's arrays that the graphs read: the examples are counted and split on them
    alone (another array in the file, of any length, must not decide how many there are)."""
    return Dataset({k: ds.arrays[k] for k in names if k in ds.arrays}, ds.name, ds.meta)


def cast_for(ds: Dataset, dtypes: dict[str, str]) -> Dataset:
    return Dataset({k: np.ascontiguousarray(ds.arrays[k], dtype=d) for k, d in dtypes.items() if k in ds.arrays},
                   ds.name, ds.meta)


def split(ds: Dataset, valid: float, seed: int, loc: Loc | None = None) -> tuple[Dataset, Dataset]:
    """A seeded, stratification-free shuffle split. (`loc`: where labelled digits' K is
    written, should the split leave fewer training examples than K.)"""
    n = len(ds)
    idx = np.random.default_rng([seed, 12345]).permutation(n)
    n_valid = max(1, int(round(n * valid)))
    return _split_at(ds, np.sort(idx[n_valid:]), np.sort(idx[:n_valid]), loc)


def split_last(ds: Dataset, valid: float, loc: Loc | None = None) -> tuple[Dataset, Dataset]:
    """The last examples held out, the rest in order (ordered data: shuffled batches are off)."""
    n_valid = max(1, int(round(len(ds) * valid)))
    idx = np.arange(len(ds))
    return _split_at(ds, idx[:-n_valid], idx[-n_valid:], loc)


def _split_at(ds: Dataset, train_idx: np.ndarray, held_idx: np.ndarray,
              loc: Loc | None = None) -> tuple[Dataset, Dataset]:
    train, held = ds.subset(train_idx), ds.subset(held_idx)
    if ds.meta.get("labelled") and "has_label" in ds.arrays:
        # Semi-supervised data: the labelled examples are all training ones; validation keeps every label.
        k = int(ds.meta["labelled"])
        if k > len(train):
            raise DataError(f"dataset {ds.name!r}: option labelled {k} is more than the {len(train)} examples left to "
                            "train on (the labelled ones are all training examples)", loc,
                            f"use labelled: {len(train)} or fewer, or hold out a smaller valid (or test) fraction")
        train = mark_labelled(train, k)
        held.arrays["has_label"] = np.ones(len(held), dtype=np.float32)
    return train, held


def shape_text(shape) -> str:
    """A shape as the spec writes it, [N, 1, 8, 8] (not Python's ['N', 1, 8, 8])."""
    return "[" + ", ".join(str(d) for d in shape) + "]"
