"""Deployment ONNX: the inference graph with trained weights baked in, and
`predict`, which runs any such file (with only onnxruntime at run time)."""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from spec.errors import KEYWORDS, ArgNames, DataError, ExportArgumentError, ExportError, FlowgradError, did_you_mean, unknown_choice

from .checkpoint import check_checkpoint, checkpoint_path, load_checkpoint, read_run_info
from .checks import (MAX_COUNT, MAX_COUNT_WHY, MAX_THREADS, check_count, check_flag, check_number, check_path, check_seed,
                     is_whole_number)
from .data import array_named, as_array, check_below, check_fits, check_least_sizes, check_lengths, dim_sizes, shape_text
from .jsontext import dumps  # (the model's metadata is strict JSON: a NaN is null, an infinity "Infinity")
from .session import shifts_in_float64

# Above this, weights go to an external data file next to the model (protobuf's 2 GB limit).
EXTERNAL_DATA_BYTES = 1 << 31
# Rows per run where predict runs an exported model in batches (see predict).
PREDICT_ROWS = 1024


def check_graph(graph, name: str = "graph", error: type[FlowgradError] = FlowgradError) -> None:
    """Which graph export writes: infer or generate (None: the default). The message names the
    keyword or flag the user wrote, as check_checkpoint's does (export --graph bogus said
    "unknown graph 'bogus'")."""
    if graph is not None and graph not in ("infer", "generate"):
        raise unknown_choice(graph, name, ("infer", "generate"), error)


def export(run_dir: str, output: str, checkpoint: str = "best", graph: str | None = None, *,
           names: ArgNames = KEYWORDS) -> dict:
    """Write RUN_DIR's deployment graph with its trained parameters as `output`.

    `graph` is "infer" (the spec's outputs) or "generate" (sampling from a
    prompt); by default the sampling graph where the spec has one. Bad arguments raise
    ExportArgumentError, an ExportError. `names`: how hints name the arguments (the
    keywords; flowgrad export passes its flags)."""
    # (run_dir=3 or output=3 ended in os.path's TypeError, a pathlib.Path output in an AttributeError)
    run_dir = check_path("run_dir", run_dir, ExportArgumentError, required=True)
    output = check_path("output", output, ExportArgumentError, required=True)
    check_checkpoint(checkpoint, names("checkpoint"), ExportArgumentError)  # (it raised a plain FlowgradError)
    if graph is None:
        graph = "generate" if os.path.exists(os.path.join(run_dir, "graphs", "generate.onnx")) else "infer"
    check_graph(graph, names("graph"), ExportArgumentError)
    graph_path = os.path.join(run_dir, "graphs", f"{graph}.onnx")
    manifest_path = os.path.join(run_dir, "graphs", "manifest.json")
    if not os.path.exists(graph_path):
        if graph == "generate" and os.path.isfile(manifest_path):
            raise ExportError(f"{run_dir} has no sampling graph", hint="the spec needs a 'generate' section")
        if not os.path.isfile(manifest_path):  # a missing path, or a directory that no training run wrote
            raise ExportError(f"{run_dir} is not a run directory", hint="pass the directory that 'flowgrad train' wrote, e.g. runs/mlp")
        raise ExportError(f"{run_dir} has no inference graph", hint="the spec needs an 'outputs' section to export")
    ckpt = checkpoint_path(run_dir, checkpoint)  # (checkpoint.npz where there is no best yet)
    state, meta = load_checkpoint(ckpt, names)
    model = load_model_safely(graph_path)  # a run directory may come from someone else
    # (right shifts as exact float64 arithmetic: onnxruntime's CUDA provider has no BitShift)
    model = shifts_in_float64(model)
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
        params = manifest["params"]
        roles = {n: (params[n] or {}).get("kind") for n in params}
        str(manifest["name"])
        lengths = dict(manifest.get("lengths") or {})
        least_sizes = dict(manifest.get("least_sizes") or {})  # (recorded since: none before)
        index_bounds = dict(manifest.get("index_bounds") or {})  # (a run trained before it was recorded: none)
        rows = (manifest.get("graphs") or {}).get(graph, {}).get("rows")  # (recorded since: none before)
        # the graph's own, where recorded: a slice that the loss alone reads does not bound predict's inputs
        least_sizes = dict((manifest.get("graphs") or {}).get(graph, {}).get("least_sizes", least_sizes) or {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ExportError(f"{manifest_path} is unreadable or malformed ({type(e).__name__}: {e})",
                          hint="export a run directory that 'flowgrad train' wrote") from None
    kept, baked = [], []
    for inp in model.graph.input:
        role = roles.get(inp.name)
        if role in ("param", "buffer"):
            if inp.name not in state:
                raise ExportError(f"{ckpt} lacks the parameter {inp.name!r} that the graph needs",
                                  hint="the checkpoint and the graphs come from different runs")
            _check_fits_input(state[inp.name], inp, ckpt, graph_path, names)
            model.graph.initializer.append(numpy_helper.from_array(state[inp.name], inp.name))
            baked.append(inp.name)
        else:
            kept.append(inp)
    del model.graph.input[:]
    model.graph.input.extend(kept)
    run_info = read_run_info(run_dir, ExportError, missing_ok=True)
    props = {
        "flowgrad.spec": manifest["name"],
        "flowgrad.inputs": dumps([i.name for i in kept]),
        "flowgrad.outputs": dumps([o.name for o in model.graph.output]),
        "flowgrad.step": str(meta.get("step", 0)),
    }
    for k, v in (run_info.get("meta") or {}).items():
        props[f"flowgrad.{k}"] = dumps(v)
    kept_names = {i.name for i in kept}  # the sequences' lengths, for predict to check (see CompiledModel.length_bounds)
    lengths = {k: b for k, b in lengths.items()
               if k in kept_names and isinstance(b, dict) and isinstance(b.get("of"), str) and b["of"] in kept_names}
    if lengths:
        props["flowgrad.lengths"] = dumps(lengths)
    if least_sizes:  # the least sizes the slices of symbolic dims assume, for predict to check
        props["flowgrad.least_sizes"] = dumps(least_sizes)
    # the ids' bounds (an embedding's rows), for predict to check: beyond them onnxruntime's Gather
    # failed with "indices element out of data bounds" and a hint about shapes and dtypes
    gen_input = (manifest.get("generate") or {}).get("input") if graph == "generate" else None
    if gen_input in index_bounds and "prompt" in kept_names:  # a language model's prompt feeds generate.input
        index_bounds.setdefault("prompt", index_bounds[gen_input])
    index_bounds = {k: b for k, b in index_bounds.items() if k in kept_names and _is_bound(b)}
    if index_bounds:
        props["flowgrad.bounds"] = dumps(index_bounds)
    if isinstance(rows, str) and kept and all(_first_dim(i) == rows for i in (*kept, *model.graph.output)):
        props["flowgrad.rows"] = dumps(rows)  # each output row from that input row alone: predict batches it
    if graph == "generate":
        for k, v in (manifest.get("generate") or {}).items():
            props[f"flowgrad.generate.{k}"] = dumps(v)
    onnx.helper.set_model_props(model, props)
    size = sum(state[n].nbytes for n in baked)
    external = size >= EXTERNAL_DATA_BYTES  # a protobuf holds at most 2 GB: the weights go beside it
    if not external:
        _check_exported(model, ckpt, graph_path)
    from .checkpoint import make_parent_dir, refuse_replacing, refuse_run_file

    refuse_run_file(output, ExportArgumentError, names=names)
    refuse_replacing(output, "onnx", ExportArgumentError, names=names)  # (a spec given as -o became an ONNX model)
    make_parent_dir(output, ExportArgumentError, names=names)
    try:
        if external:
            onnx.save_model(model, output, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=os.path.basename(output) + ".data")
        else:  # whole or not at all: a failed write leaves any earlier file as it was
            from .checkpoint import atomic_write

            atomic_write(output, model.SerializeToString(), hint=f"free some space, or pick another path with {names('output')}")
    except OSError as e:
        raise ExportError(f"cannot write {output}: {e.strerror or e}",
                          hint=f"check that the folder exists and is writable, or pick another path with {names('output')}") from None
    if external:  # onnx checks a model this large from its files
        try:
            _check_exported(output, ckpt, graph_path)
        except ExportError:
            for path in (output, output + ".data"):
                with contextlib.suppress(OSError):
                    os.remove(path)
            raise
    return {"path": output, "inputs": [i.name for i in kept], "outputs": [o.name for o in model.graph.output],
            "parameters": len(baked), "bytes": size,
            "files": [output, *([output + ".data"] if external else [])]}  # (the weights beside a large model)


def _first_dim(value_info) -> str | None:
    dims = value_info.type.tensor_type.shape.dim
    return dims[0].dim_param or None if len(dims) else None


def _is_bound(b) -> bool:
    """[size, what] as the manifest and an export record an input's ids' bound (an exported model may
    come from anyone: what is not such a record is not read as one)."""
    return (isinstance(b, list) and len(b) == 2 and type(b[0]) is int and b[0] > 0 and isinstance(b[1], str))


def _recorded_ids(meta: dict) -> set[str]:
    """The inputs an exported model records as ids (flowgrad.bounds: an embedding's rows, a
    one_hot's classes): none of them counts samples."""
    bounds = meta.get("bounds")
    return {k for k, b in bounds.items() if _is_bound(b)} if isinstance(bounds, dict) else set()


def check_index_bounds(feeds: dict[str, np.ndarray], bounds, model_path: str, named=None) -> None:
    """Ids and labels below the size of what they index (an exported model's flowgrad.bounds).
    `named`: how messages name an input by its name (generator_feeds' --input digit)."""
    for name, b in bounds.items() if isinstance(bounds, dict) else ():
        if name not in feeds or not _is_bound(b):
            continue
        size, what = b
        try:
            why = what.format(size)
        except (IndexError, KeyError, ValueError):
            why = f"it is read as ids below {size}"
        check_below(feeds[name], size, named(name) if named else array_named(model_path, name, "input"), why, None,
                    f"ids and labels count from 0: give values from 0 to {size - 1}, as in training",
                    at="position" if name == "prompt" else "example")  # (a language model's prompt: one row of tokens)


def _check_fits_input(value: np.ndarray, inp: onnx.ValueInfoProto, ckpt: str, graph_path: str, names: ArgNames) -> None:
    """A parameter baked in for a graph input has that input's shape (onnx's checker lets an
    initializer of another shape replace an input, and the graph may even run with it)."""
    t = inp.type.tensor_type
    if not t.HasField("shape"):
        return
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    if len(dims) != value.ndim or any(d is not None and d != n for d, n in zip(dims, value.shape)):
        raise ExportError(f"the checkpoint {ckpt} does not fit the graph {graph_path}: {inp.name} has shape "
                          f"{shape_text(value.shape)} there, the graph takes {shape_text('?' if d is None else d for d in dims)}",
                          hint="the checkpoint and the graphs come from different runs (a run started over "
                               f"with {names.given(overwrite=True)} and stopped before its first checkpoint?)")


def _check_exported(model: onnx.ModelProto | str, ckpt: str, graph_path: str) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # onnx's ValidationError / InferenceError: the checkpoint does not fit the graph
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"the checkpoint {ckpt} does not fit the graph {graph_path}: {first}",
                          hint="the checkpoint and the graphs come from different runs") from None


def load_model_safely(path: str) -> onnx.ModelProto:
    """Parse an ONNX file from anyone: malformed files and external-data paths
    that leave the model's directory (absolute, '..', symlinks out) are refused,
    in subgraphs too, before any external data is read."""
    if not isinstance(path, (str, os.PathLike)):  # (an int was read as a file descriptor)
        raise ExportArgumentError(f"model_path must be a path, got {type(path).__name__}",
                                  hint="give the path of the .onnx file as a str or a pathlib.Path")
    path = check_path("model_path", path, ExportArgumentError, required=True)  # ("" was 'no ONNX file at ')
    if not os.path.isfile(path):
        raise ExportError(f"no ONNX file at {path}", hint="pass a model that 'flowgrad export RUN_DIR -o FILE.onnx' "
                                                      "(or export(run_dir, output)) wrote")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:
        raise ExportError(f"{path} is not a valid ONNX model ({type(e).__name__})", hint="give the .onnx file that `flowgrad export` wrote") from None
    if not model.graph.node and not model.graph.output:
        raise ExportError(f"{path} is not an ONNX model: it holds no graph", hint="give the .onnx file that `flowgrad export` wrote")
    base = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    external = [t for t in _all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]
    for t in external:
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        try:
            target = os.path.realpath(os.path.join(base, loc))
            outside = not loc or os.path.isabs(loc) or os.path.commonpath([base, target]) != base or target == base
        except ValueError:  # e.g. a NUL character in the location
            outside = True
        if outside:
            raise ExportError(f"{path}: tensor {t.name!r} points outside the model's directory ({loc!r})",
                              hint="refusing to read external data from there")
        if not os.path.isfile(target):
            raise ExportError(f"{path}: the external data of tensor {t.name!r} is missing ({loc!r})",
                              hint="copy the data file next to the model")
    if external:
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(model, base)
        except Exception as e:  # a short file, a bad offset or length
            raise ExportError(f"{path}: cannot read its external data ({e})", hint="keep the .onnx file and its external data file side by side, as `flowgrad export` wrote them") from None
    return model


def _all_tensors(model):
    """Every tensor of the model: initializers, sparse ones, attributes, and those of subgraphs (Loop, If, Scan)."""
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        yield from g.initializer
        for sp in g.sparse_initializer:
            yield sp.values
            yield sp.indices
        for node in g.node:
            for a in node.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                if a.HasField("sparse_tensor"):
                    yield a.sparse_tensor.values
                    yield a.sparse_tensor.indices
                if a.HasField("g"):
                    graphs.append(a.g)
                graphs.extend(a.graphs)


def predict(model_path: str, feeds: dict[str, np.ndarray], device: str = "cpu", threads: int | None = None,
            ignore_extra: bool = False, before_run=None) -> dict[str, np.ndarray]:
    """Run an exported model: {input name: array} in, {output name: array} out. Unlike
    `flowgrad predict` (auto), it runs on the CPU unless `device` says cuda or auto. A bad
    device or thread count raises ExportArgumentError (an ExportError); inputs that do not
    fit the model, DataError, as does a feed the model has no input for, unless
    `ignore_extra` (a data file that also holds labels). `before_run`: called, once the inputs
    are checked and before the model runs, with {output name: shape} of the outputs whose
    shapes the inputs' sizes give (a decoder's max_len-long or a data-dependent output has none)."""
    from .session import ORT_ERRORS, make_session, pick_device

    device = pick_device(device, error=ExportArgumentError, names=KEYWORDS)  # (an unknown device, or "auto", ran on the CPU)
    check_count("threads", threads, most=MAX_THREADS, error=ExportArgumentError)
    check_flag("ignore_extra", ignore_extra, error=ExportArgumentError)
    if before_run is not None and not callable(before_run):  # (before_run=3 was a TypeError once the inputs were read)
        raise ExportArgumentError(f"before_run must be a function, got {type(before_run).__name__}",
                                  hint="give a function of {output name: shape}, or leave before_run out")
    if not isinstance(feeds, Mapping) or not all(isinstance(k, str) for k in feeds):
        # (a list or an array of inputs ended in a ValueError or TypeError from inside predict)
        raise ExportArgumentError(f"feeds must be a dict of input name to array, got {_describe_feeds(feeds)}",
                                  hint='e.g. predict("mlp.onnx", {"x": x}); `flowgrad predict` names the '
                                       "model's inputs")
    model = load_model_safely(model_path)
    try:
        sess = make_session(model, device, threads)
    except ORT_ERRORS as e:
        raise ExportError(f"{model_path}: onnxruntime cannot run this model ({_ort_message(e)})",
                          hint='export the model again with this flowgrad, or run it on the CPU (device="cpu", '
                               "flowgrad predict --device cpu)") from None
    wanted = {i.name: i for i in sess.get_inputs()}
    missing = [n for n in wanted if n not in feeds]
    if missing and not model_metadata(model) and os.path.isfile(os.path.join(os.path.dirname(model_path), "manifest.json")):
        # a graph that train or compile -o wrote takes its parameters as inputs: it was told that it
        # needs W1, b1, ... and shown the inputs given, with no word of export
        raise ExportError(f"{model_path} is a compiled graph, whose parameters are inputs, not an exported model",
                          hint="export the run's trained weights into one first: export(run_dir, \"model.onnx\") "
                               "(flowgrad export RUN_DIR -o model.onnx)")
    if missing:
        raise DataError(f"the model needs input(s) {', '.join(missing)}",  # (predict()'s feeds are no "data file")
                        hint=f"the inputs given: {', '.join(feeds) or 'none'}")
    extra = [n for n in feeds if n not in wanted]
    if extra and not ignore_extra:  # (it was left out without a word: a misspelt option had no effect)
        raise DataError(f"the model has no input {extra[0]!r}" + (f" (nor {', '.join(map(repr, extra[1:]))})" if extra[1:] else ""),
                        hint=f"its inputs are {', '.join(wanted) or 'none'}: leave the others out, or pass "
                             "ignore_extra=True")
    fixed, sizes = {}, {}  # sizes: symbolic dim -> (size, the input that set it)
    shapes = "the model's inputs: " + ", ".join(
        f"{n} {np.dtype(_ORT_TYPES[m.type]).name if m.type in _ORT_TYPES else m.type} {shape_text(m.shape)}"
        for n, m in wanted.items())
    for name, meta in wanted.items():
        # (a ragged list, or np.load's result holding a pickled array, was NumPy's ValueError from inside predict)
        try:
            a = as_array(feeds[name], f"{model_path}: input {name!r}")
        except ValueError:  # np.load's object array, which it reads only with allow_pickle
            raise DataError(f"{model_path}: input {name!r} must hold numbers, got object", hint=shapes) from None
        want = _ORT_TYPES.get(meta.type)
        beyond = [n for n in _whole_numbers(feeds[name]) if not _INT64_MIN <= n <= _INT64_MAX] \
            if a.dtype == object else []
        if beyond:  # (NumPy reads a whole number beyond int64 as an object: seed=2**70 "must hold numbers")
            raise DataError(f"{model_path}: input {name!r} holds {beyond[0]}, outside the range of int64", hint=shapes)
        if a.dtype.kind not in "biuf":
            raise DataError(f"{model_path}: input {name!r} must hold numbers, got {a.dtype}", hint=shapes)
        if a.dtype.kind == "f" and a.size and not np.all(np.isfinite(a)):
            raise DataError(f"{model_path}: input {name!r} has NaN or inf values",
                            hint="the model's outputs would be meaningless")
        if want is not None and np.dtype(want).kind in "iu" and a.dtype.kind in "iu" and a.size and a.min() < 0 \
                and name != "seed":  # (a random stream's key: any int64)
            raise DataError(f"{model_path}: input {name!r} holds negative values ({a.min()})",
                            hint="integer inputs are ids, labels, lengths or counts, and none is negative")
        if want is not None and a.dtype != want:
            if a.dtype.kind in "fb" and np.dtype(want).kind in "iu":  # (True went in as id, count or beam width 1)
                raise DataError(f"{model_path}: input {name!r} must hold integers, got {a.dtype}", hint=shapes)
            check_fits(a, str(np.dtype(want)), array_named(model_path, name, "input"), None)
            a = a.astype(want)
        if len(a.shape) != len(meta.shape):
            raise DataError(f"{model_path}: input {name!r} has rank {a.ndim}, the model expects "
                            f"{len(meta.shape)}", hint=shapes)
        for i, (got, expected) in enumerate(zip(a.shape, meta.shape)):
            if isinstance(expected, int) and got != expected:
                raise DataError(f"{model_path}: input {name!r} has size {got} in dim {i}, the model "
                                f"expects {expected}", hint=shapes)
            if isinstance(expected, str) and expected:  # one size for a symbolic dim across the inputs
                first = sizes.setdefault(expected, (got, name))
                if first[0] != got:
                    raise DataError(f"{model_path}: input {name!r} has {expected} = {got} in dim {i}, but input "
                                    f"{first[1]!r} has {expected} = {first[0]}", hint="every input holds the same examples")
        fixed[name] = a
    meta = model_metadata(model)
    check_lengths(fixed, meta.get("lengths") or {}, model_path, what="input")
    _check_decoder_inputs(fixed, meta)  # (a decoder's ids against its vocabulary, named so, first)
    # (the examples' dim too: predict runs the inputs at once, or in batches only where each row is its own;
    # after the decoder's checks, which say an empty prompt is one)
    least = meta.get("least_sizes")
    check_least_sizes(least if isinstance(least, dict) else None,
                      dim_sizes(fixed, {k: m.shape for k, m in wanted.items()}, model_path, "input"))
    check_index_bounds(fixed, meta.get("bounds"), model_path)
    if before_run is not None:
        before_run(_known_output_shapes(sess.get_outputs(), sizes))
    rows = meta.get("rows")
    n = sizes.get(rows, (0, None))[0] if isinstance(rows, str) else 0
    try:
        if n > PREDICT_ROWS and all(list(wanted[k].shape[:1]) == [rows] for k in fixed) and \
                all(list(o.shape[:1]) == [rows] for o in sess.get_outputs()):
            # each output row depends on its input row alone (the export says so): in batches, whose
            # intermediates stay small (10,000 digits through the convnet took 350 MB at once, 30,000 850 MB)
            outs = []
            for i in range(0, n, PREDICT_ROWS):
                part = sess.run(None, {k: a[i:i + PREDICT_ROWS] for k, a in fixed.items()})
                outs = outs or [np.empty((n, *p.shape[1:]), p.dtype) for p in part]  # filled in place
                for o, p in zip(outs, part):
                    o[i:i + len(p)] = p
        else:
            outs = sess.run(None, fixed)
    except ORT_ERRORS as e:
        raise DataError(f"onnxruntime cannot run {model_path} on these inputs ({_ort_message(e)})", hint="check the inputs' shapes and dtypes against the model's inputs (`flowgrad predict` names them)") from None
    return dict(zip([o.name for o in sess.get_outputs()], outs))


def _known_output_shapes(outputs, sizes: dict) -> dict[str, tuple[int, ...]]:
    """{output name: shape} of the outputs whose every dim is a number or an input's symbolic dim
    (`sizes`: dim -> (size, input)); the others' sizes are known only once the model has run."""
    known = {}
    for o in outputs:
        dims = [d if isinstance(d, int) else sizes[d][0] if isinstance(d, str) and d in sizes else None
                for d in o.shape]
        if all(isinstance(d, int) and d >= 0 for d in dims):
            known[o.name] = tuple(dims)
    return known


def _describe_feeds(feeds) -> str:
    if isinstance(feeds, Mapping):
        return "a dict with the key " + repr(next(k for k in feeds if not isinstance(k, str)))
    return type(feeds).__name__


def _check_decoder_inputs(feeds: dict[str, np.ndarray], meta: dict) -> None:
    """What an exported decoder would read past: token ids outside its vocabulary, source
    lengths outside the source's width, a beam wider than it was compiled for; and the counts
    of a decoder's tokens and a generator's samples (within what a run can allocate)."""
    # A decoder flowgrad exported carries its generate section; one trained on an .npz has no vocabulary
    decoder = "generate.input" in meta or "vocab" in meta or "src_vocab" in meta
    if "prompt" in feeds and decoder and not feeds["prompt"].size:
        raise DataError("the prompt is empty", hint=EMPTY_PROMPT_HINT)
    for name, key in (("src", "src_vocab"), ("prompt", "vocab")):
        if name in feeds and key in meta and feeds[name].size:
            ids, n = feeds[name], len(meta[key])
            if ids.min() < 0 or ids.max() >= n:
                raise DataError(f"input {name!r} holds token ids from {ids.min()} to {ids.max()}, "
                                f"but the vocabulary has {n} tokens (0 to {n - 1})", hint=f"map the text to ids with the model's own vocabulary, 0 to {n - 1}")
    # (a model exported before models said which input counts which sequence's steps, see check_lengths)
    if "src_len" in feeds and "src" in feeds and feeds["src_len"].size and "lengths" not in meta:
        width, lengths = feeds["src"].shape[-1], feeds["src_len"]
        if lengths.min() < 1 or lengths.max() > width:
            raise DataError(f"input 'src_len' holds lengths from {lengths.min()} to {lengths.max()}, "
                            f"but the sources are {width} tokens wide", hint="each length is 1 to the width of src")
    if decoder:  # as generate_text and translate check
        if "max_len" in feeds and feeds["max_len"].size == 1:  # (0 generates nothing, as in the graph)
            check_count("input 'max_len'", feeds["max_len"].item(), 0, most=MAX_COUNT, has_default=False,
                        error=DataError, most_hint=MAX_COUNT_WHY)
        if "temperature" in feeds and feeds["temperature"].size == 1:  # (a negative one sampled)
            check_number("input 'temperature'", feeds["temperature"].item(), 0, error=DataError, hint=TEMPERATURE_HINT)
        if "length_penalty" in feeds and feeds["length_penalty"].size == 1:  # (a negative one favoured short beams)
            check_number("input 'length_penalty'", feeds["length_penalty"].item(), 0, error=DataError,
                         hint=LENGTH_PENALTY_HINT)
    sizer = [k for k in feeds if k != "seed"]
    if "seed" in feeds and len(sizer) > 1 and not decoder:
        # a conditional generator (a digit beside the count): its count is the one integer scalar
        # that the export does not record as ids (a count of 10**9 in an .npz was not bounded)
        ids = _recorded_ids(meta)
        counts = [k for k in sizer if feeds[k].ndim == 0 and feeds[k].dtype.kind in "iu" and k not in ids]
        if len(counts) == 1:
            sizer = counts
    if "seed" in feeds and len(sizer) == 1 and feeds[sizer[0]].size == 1:  # a generator, as --count is checked
        check_count(f"input {sizer[0]!r}", feeds[sizer[0]].item(), most=MAX_COUNT, has_default=False,  # (a huge
                    error=DataError, most_hint=MAX_COUNT_WHY)  # one tried to allocate terabytes)
    if "beam_width" in feeds and feeds["beam_width"].size == 1 and ("generate.bos" in meta or "src_vocab" in meta):
        check_count("input 'beam_width'", feeds["beam_width"].item(), most=_widest_beam(meta), has_default=False,
                    error=DataError, most_hint=BEAM_WIDTH_WHY)  # (0 decoded nothing but dead beams)


EMPTY_PROMPT_HINT = "give at least one token (a character or a word) to continue from"
TEMPERATURE_HINT = "0 picks the most likely token, 1 samples the model's probabilities"
BEAM_WIDTH_WHY = "the spec's generate.beam_width sets the widest beam the export decodes"
LENGTH_PENALTY_HINT = "GNMT's alpha: 0 ranks the hypotheses by log-probability, larger values favour longer ones (default 0.6)"


def _widest_beam(meta: dict) -> int:
    """The beam count an exported decoder was compiled for (generate.beam_width, default 4)."""
    return int(meta.get("generate.beam_width", 4))


def _spec_count(meta: dict, key: str, default: int):
    """A count of the spec's generate section, the default of an argument left out: the spec's
    schema takes a whole float as an integer (max_len: 5.0), which check_count refuses."""
    value = meta.get(key, default)
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _ort_message(e: Exception) -> str:
    text = str(e).strip().split("\n")[0]
    return text.split("] : ")[-1] if "] : " in text else (text or type(e).__name__)


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def model_metadata(model: onnx.ModelProto) -> dict:
    """flowgrad's metadata of an exported model, JSON values decoded."""
    out = {}
    for p in model.metadata_props:
        if p.key.startswith("flowgrad."):
            try:
                out[p.key[len("flowgrad."):]] = json.loads(p.value)
            except ValueError:
                out[p.key[len("flowgrad."):]] = p.value
    return out


def generate_text(model_path: str, prompt: str, max_len: int | None = None, temperature: float | None = None,
                  seed: int | None = None, device: str = "cpu", beam_width: int | None = None,
                  with_prompt: bool = False, threads: int | None = None, length_penalty: float | None = None, *,
                  names: ArgNames = KEYWORDS) -> str:
    """Sample text from an exported language model (a graph with a `prompt` input): the
    continuation, or with `with_prompt` the prompt and its continuation; or decode it with a
    sequence-to-sequence model by beam search (`beam_width`, `length_penalty`). Unset arguments
    take the spec's `generate` values (temperature 1.0 where the spec gives none, seed 0); max_len
    0 generates nothing. Bad arguments raise ExportArgumentError, an ExportError. `names`: how
    messages name the arguments (the keywords; flowgrad predict passes its flags)."""
    from .datasets_text import decode_text, encode_text

    check_seed(seed, names("seed"), error=ExportArgumentError)  # (a negative one sampled, where every other verb refuses it)
    check_flag("with_prompt", with_prompt, error=ExportArgumentError)  # (with_prompt="no" gave the prompt back)
    if not isinstance(prompt, str):  # (a list of ids was tokenized as its str())
        raise ExportArgumentError(f"the prompt must be a string, got {type(prompt).__name__}",
                                  hint="give the text to continue; predict() takes token ids as its 'prompt' input")
    model = load_model_safely(model_path)
    inputs = [i.name for i in model.graph.input]
    meta = model_metadata(model)
    if "beam_width" in inputs and ("src_vocab" in meta or "generate.bos" in meta):  # (one trained on ids
        for value, what in ((temperature, "a temperature"), (seed, "a seed")):
            if value is not None:  # beam search draws nothing
                raise ExportArgumentError(f"{model_path} decodes by beam search: {what} is for models that sample text",
                                hint=f"leave it out; the beam width ({names('beam_width')}) picks the beam (1 is greedy)")
        # is refused by translate as one, not as "not a text generator ... trained on text")
        return translate(model_path, [prompt], beam_width=beam_width, device=device, max_len=max_len,
                         length_penalty=length_penalty, threads=threads, names=names)[0]
    for value, what, keyword in ((beam_width, "a beam width", "beam_width"), (length_penalty, "a length penalty", "length_penalty")):
        if value is not None:
            raise ExportArgumentError(f"{model_path} samples text: {what} is for sequence-to-sequence models",
                                      hint=f"leave out the {what[2:]} ({names(keyword)})")
    if "prompt" in inputs and "vocab" not in meta and "generate.input" in meta:  # a language model of ids
        raise ExportArgumentError(f"{model_path} was trained on token ids: it carries no vocabulary to read a "
                                  "prompt with", hint="give it ids with predict() (flowgrad predict --data): "
                                                      "prompt, max_len, temperature and seed")
    if "prompt" not in inputs or "vocab" not in meta:
        raise ExportArgumentError(f"{model_path} is not a text generator (no prompt input or vocabulary)",
                                  hint="export a spec with a 'generate' section trained on text, or run this model on its "
                                       "inputs with predict() (flowgrad predict --data)")
    text_meta = {"vocab": meta["vocab"], "level": meta.get("level", "char"), "unk": meta.get("unk"),
                 "lowercase": meta.get("lowercase", False)}
    ids = np.asarray(encode_text(prompt, text_meta, error=ExportArgumentError), dtype=np.int64)
    if not ids.size:  # (predict refused it as a DataError)
        raise ExportArgumentError("the prompt is empty", hint=EMPTY_PROMPT_HINT)
    max_len = check_count(names("max_len"), max_len if max_len is not None else _spec_count(meta, "generate.max_len", 200),
                          0, most=MAX_COUNT, error=ExportArgumentError, most_hint=MAX_COUNT_WHY)  # (2.5 generated 2 tokens)
    temperature = check_number(names("temperature"), temperature if temperature is not None  # (the graph reads a float32)
                               else meta.get("generate.temperature", 1.0), 0, error=ExportArgumentError,
                               hint=TEMPERATURE_HINT)
    outs = predict(model_path, {"prompt": ids, "max_len": np.asarray(max_len, dtype=np.int64),
                                "temperature": np.asarray(temperature, dtype=np.float32),
                                "seed": np.asarray(seed or 0, dtype=np.int64)}, device, threads)
    text = decode_text(outs["tokens"].reshape(-1), text_meta)
    if not with_prompt:
        return text
    return prompt + (" " if text_meta["level"] == "word" and text else "") + text


def generator_feeds(model_path: str, count: int, seed: int | None = None, inputs: Mapping | None = None, *,
                    names: ArgNames = KEYWORDS) -> dict[str, np.ndarray]:
    """The inputs of an exported generator (`seed` and one integer scalar, the count: `count` in
    the bundled specs, whatever the spec named it) for `count` samples drawn with `seed` (default
    0). A conditional generator takes more inputs (a digit to draw, say): `inputs` gives them,
    {name: value}, a value being a number, a list of numbers or an array of the input's shape;
    the count is then the one integer scalar input besides seed that `inputs` leaves out. Bad
    arguments raise ExportArgumentError, an ExportError. `names`: how messages name the
    arguments (count and inputs, or the CLI's --count and --input)."""
    check_seed(seed, error=ExportArgumentError)
    if inputs is not None and (not isinstance(inputs, Mapping) or not all(isinstance(k, str) for k in inputs)):
        raise ExportArgumentError(f"inputs must be a dict of input name to value, got {_describe_feeds(inputs)}",
                                  hint='e.g. generator_feeds("cvae.onnx", 16, seed=7, inputs={"digit": 3})')
    given = dict(inputs or {})
    model = load_model_safely(model_path)
    graph_inputs = {i.name: i for i in model.graph.input}
    input_names = sorted(graph_inputs)
    meta = model_metadata(model)
    # (a language model's max_len, an integer scalar beside its prompt and seed, is no count: the
    # decoders take --text, and were "not a generator" before conditional generators took inputs)
    decoder = "prompt" in graph_inputs or "beam_width" in graph_inputs or \
        any(k in meta for k in ("generate.input", "vocab", "src_vocab"))
    if "seed" not in graph_inputs or decoder:
        raise _not_a_generator(model_path, input_names)

    def arg(keyword: str) -> str:  # --count, or count=
        return names(keyword) if names.flags else f"{keyword}="

    flag = arg("inputs")  # --input or inputs=

    def named(name: str) -> str:  # an input as the caller gave it: --input digit, inputs['digit']
        return f"--input {name}" if names.flags else f"inputs[{name!r}]"

    def example(name: str) -> str:
        return f"--input {name}=VALUE" if names.flags else f'inputs={{"{name}": VALUE}}'

    def given_count(name: str) -> ExportArgumentError:  # the count's input given with the others
        return ExportArgumentError(f"{named(name)}: {name!r} is the generator's count, which {arg('count')} gives",
                                   hint=f"leave {named(name)} out and give {names.given(count=_as_shown(given[name], 16))}")

    for name in given:
        if name == "seed":  # (it would have been fed twice, the flag's or the dict's silently winning)
            raise ExportArgumentError(f"{named('seed')}: the seed is given by {arg('seed')}",
                                      hint=f"give it as {names.given(seed=_as_shown(given['seed'], 7))}")
        if name not in graph_inputs:
            close = did_you_mean(name, [n for n in input_names if n != "seed"])
            raise ExportArgumentError(f"{named(name)}: {model_path} has no input {name!r}",
                                      hint=(close + " " if close else "")
                                      + f"its inputs are {', '.join(input_names)} (the seed given by {arg('seed')})")
    # (a spec's `n: {shape: [], dtype: int64}` was refused: its inputs were n and seed, "not count and seed")
    # (an int32 count, which plot samples draws with, was "not a generator: its inputs are count, seed")
    scalars = [n for n, i in graph_inputs.items() if n != "seed" and _is_integer_scalar(i)]
    if not scalars:
        raise _not_a_generator(model_path, input_names, " (no integer scalar input counts the samples)" if given else "")
    if "count" in given and "count" in scalars:
        # (--input count=3 --count 4 took the other integer input, a digit, for the count)
        raise given_count("count")
    candidates = [n for n in scalars if n not in given]  # for the count
    if not candidates:
        if len(scalars) == 1:  # (the count fed twice)
            raise given_count(scalars[0])
        if names.flags:
            hint = f"leave out the --input of the count, one of {', '.join(scalars)}"
        else:
            hint = f"leave the count, one of {', '.join(scalars)}, out of inputs"
        raise ExportArgumentError(f"{flag} gives every integer scalar input of {model_path} ({', '.join(scalars)}): "
                                  f"none is left for {arg('count')} to give", hint=hint)
    if len(candidates) > 1:
        # an input named count is the count: the example gives another
        others = [n for n in candidates if n != "count"] if "count" in candidates else candidates[1:]
        if len(candidates) == 2:
            the_count = next(n for n in candidates if n != others[0])
            hint = f"e.g. {example(others[0])} (then {the_count} is the count)"
        else:
            hint = f"give all but the count with {flag}, e.g. {example(others[0])}"
        raise ExportArgumentError(f"{model_path} has the integer scalar inputs {', '.join(candidates)} besides seed: "
                                  f"{arg('count')} gives one of them, {flag} the others", hint=hint)
    count_input = candidates[0]
    bounds = meta.get("bounds")  # (digit=12 of a one_hot of 10 classes drew from no class)
    ids = [n for n in scalars if n in _recorded_ids(meta)]
    non_ids = [n for n in scalars if n not in ids]
    if count_input in ids and non_ids:
        # (--count 4 --input n=3 drew 3 samples of digit 4: the ids were taken for the count)
        raise ExportArgumentError(f"{named(non_ids[0])}: {count_input!r} is read as ids (below {bounds[count_input][0]}), "
                                  f"so {non_ids[0]!r} is the generator's count, which {arg('count')} gives",
                                  hint=f"give {example(count_input)} and {names.given(count=_as_shown(given[non_ids[0]], 16))}")
    missing = [n for n in input_names if n not in ("seed", count_input) and n not in given]
    if missing:
        raise ExportArgumentError(f"{model_path} also takes the input(s) {', '.join(missing)} (a conditional "
                                  f"generator): give {'it' if len(missing) == 1 else 'them'} with {flag}",
                                  hint=f"e.g. {example(missing[0])}, {_input_takes(graph_inputs[missing[0]])}; "
                                       f"its count is {count_input!r} ({arg('count')})")
    count = check_count(names("count"), count, most=MAX_COUNT, has_default=False, error=ExportArgumentError,  # (1.5
                        most_hint=MAX_COUNT_WHY, required=True)  # drew 1 sample; predict --count is bounded by typer)
    count_dtype = onnx.helper.tensor_dtype_to_np_dtype(graph_inputs[count_input].type.tensor_type.elem_type)
    feeds = {count_input: np.asarray(count, dtype=count_dtype), "seed": np.asarray(seed or 0, dtype=np.int64)}
    for name, value in given.items():
        feeds[name] = _generator_input(value, graph_inputs[name], named(name))
    try:
        check_index_bounds({k: feeds[k] for k in given}, bounds, model_path, named=named)
    except DataError as e:  # (a bad argument, as the others)
        raise ExportArgumentError(e.message, hint=e.hint) from None
    return feeds


def _not_a_generator(model_path: str, input_names: list[str], why: str = "") -> ExportArgumentError:
    return ExportArgumentError(f"{model_path} is not a generator: its inputs are {', '.join(input_names) or 'none'}, "
                               f"not count and seed{why}",
                               hint="give its inputs to predict() (flowgrad predict --data), or a prompt to "
                                    "generate_text() (--text)")


def _is_integer_scalar(inp: onnx.ValueInfoProto) -> bool:
    t = inp.type.tensor_type
    return t.elem_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and t.HasField("shape") and not t.shape.dim


def _holds_bool(value) -> bool:
    """Whether lists of values hold a bool (which NumPy reads as 1 among numbers)."""
    if isinstance(value, (list, tuple)):
        return any(_holds_bool(v) for v in value)
    return isinstance(value, (bool, np.bool_))


_INT64_MIN, _INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)


def _whole_numbers(value) -> list[int]:
    """The whole numbers of a value and of its nested lists."""
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _whole_numbers(v)]
    return [int(value)] if is_whole_number(value) else []


def _beyond_int64_as_floats(value):
    """A value with each whole number beyond int64's range in its nested lists a float."""
    if isinstance(value, (list, tuple)):
        floats = [_beyond_int64_as_floats(v) for v in value]
        return tuple(floats) if isinstance(value, tuple) else floats
    if is_whole_number(value) and not _INT64_MIN <= value <= _INT64_MAX:
        return float(value)
    return value


def _as_shown(value, default: int) -> int:
    """A value given for a seed or a count, to show in a hint, where it is a plain integer."""
    return int(value) if is_whole_number(value) and value >= 0 else default


def _value_wanted(t: onnx.TypeProto.Tensor) -> str:
    """What a tensor type takes, without its dtype: "a number", "true or false", "a list of 2
    numbers", "an array of shape [N, 64]"."""
    is_bool = t.elem_type == onnx.TensorProto.BOOL
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
    if not dims:  # (a bool's hint said "a number", which it refuses)
        return "true or false" if is_bool else "a number"
    if len(dims) == 1 and isinstance(dims[0], int):
        return f"a list of {dims[0]} " + ("values true or false" if is_bool else "numbers")
    return f"an array of shape {shape_text(dims)}"


def _input_takes(inp: onnx.ValueInfoProto) -> str:
    """What an input takes, as a value given by name: "a number (int64)", "a list of 2 numbers
    (float32)", "an array of shape [N, 64] (float32)", "true or false (bool)"."""
    t = inp.type.tensor_type
    return f"{_value_wanted(t)} ({np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name})"


def _shape_described(a: np.ndarray) -> str:
    """An array's shape as a value given by name: "a number", "a list of 3", "an array of shape [2, 3]"."""
    if a.ndim == 0:
        return "a number"
    if a.ndim == 1:
        return f"a list of {len(a)}"
    return f"an array of shape {shape_text(a.shape)}"


def _generator_input(value, inp: onnx.ValueInfoProto, what: str) -> np.ndarray:
    """A conditional generator's input given by name (`what`: --input digit, inputs['digit']) as
    the array the model reads: numbers of its dtype (within its range, finite; integers not
    negative, as predict takes them) and of its shape (a symbolic dim any size)."""
    t = inp.type.tensor_type
    want = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))
    takes = f"{inp.name} takes {_input_takes(inp)}"  # the hint of most refusals

    def shown() -> str:
        return json.dumps(value) if isinstance(value, (int, float, list)) else repr(value)

    if isinstance(value, (str, bytes, Mapping)) or value is None:
        raise ExportArgumentError(f"{what} must be a number or a list of numbers, got {shown()}", hint=takes)
    # (NumPy reads a list holding a whole number beyond int64's range as objects, or as floats)
    if want.kind == "f":  # (a float input given a whole number: 100000000000000000000 is 1e20)
        value = float(value) if is_whole_number(value) else _beyond_int64_as_floats(value)
    else:
        beyond = [n for n in _whole_numbers(value) if not _INT64_MIN <= n <= _INT64_MAX]
        if beyond:
            raise ExportArgumentError(f"{what} holds {beyond[0]}, outside the range of {want.name}", hint=takes)
    try:
        a = as_array(value, what)
    except ValueError:  # np.load's pickled object array
        a = np.asarray([], dtype=object)
    except DataError as e:  # ragged lists
        raise ExportArgumentError(e.message, hint=takes) from None
    if not a.size and a.dtype.kind == "f" and isinstance(value, (list, tuple)):  # ([] is float64 to NumPy)
        a = a.astype(want)
    if a.dtype.kind in "iuf" and want.kind != "b" and _holds_bool(value):  # ([0.5, true] read true as 1.0)
        a = a.astype(bool)
    is_bool, wants_bool = a.dtype.kind == "b", want.kind == "b"
    if a.dtype.kind not in "biuf" or is_bool != wants_bool:
        got = shown() if a.dtype.kind != "O" else "values of no number type"
        if wants_bool:
            wanted = "true or false"
        elif t.shape.dim:
            wanted = "numbers"
        else:
            wanted = "a number"
        raise ExportArgumentError(f"{what} must be {wanted}, got {got}", hint=takes)
    if want.kind in "iu" and a.dtype.kind == "f":  # (as a count, 2.0 is refused as 2.5 is: never rounded)
        raise ExportArgumentError(f"{what} must hold integers, got {shown()}", hint=takes)
    if a.dtype.kind == "f" and a.size and not np.all(np.isfinite(a)):
        raise ExportArgumentError(f"{what} has NaN or inf values", hint="the samples would be meaningless")
    if want.kind in "iu" and a.size and a.min() < 0:
        raise ExportArgumentError(f"{what} holds negative values ({a.min()})",
                                  hint="integer inputs are ids, labels, lengths or counts, and none is negative")
    try:
        check_fits(a, want.name, what, None)
    except DataError as e:
        raise ExportArgumentError(e.message, hint=e.hint) from None
    if t.HasField("shape"):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]  # (None: any size)
        if a.ndim != len(dims) or any(d is not None and d != n for d, n in zip(dims, a.shape)):
            raise ExportArgumentError(f"{what} must be {_value_wanted(t)}, got {_shape_described(a)}",
                                      hint=takes + (": e.g. [0.1, 0.9]" if dims == [2] else ""))
    return np.array(a, dtype=want)  # (a copy, of the input's rank: ascontiguousarray makes a scalar [1])


def translate(model_path: str, texts: list[str], beam_width: int | None = None, max_len: int | None = None,
              length_penalty: float | None = None, device: str = "cpu", threads: int | None = None, *,
              names: ArgNames = KEYWORDS) -> list[str]:
    """Decode source strings with an exported sequence-to-sequence model (beam search in the graph).
    Unset arguments take the spec's `generate` values (beam width 4, length penalty 0.6 where
    the spec gives none); max_len 0 decodes empty strings. Bad arguments raise
    ExportArgumentError, an ExportError. `names`: how messages name the arguments."""
    from .datasets_text import decode_target

    tokens, meta = translate_tokens(model_path, texts, beam_width, max_len, length_penalty, device, threads,
                                    names=names)
    return [decode_target(row, meta) for row in tokens]


def translate_tokens(model_path: str, texts: list[str], beam_width: int | None = None, max_len: int | None = None,
                     length_penalty: float | None = None, device: str = "cpu", threads: int | None = None, *,
                     names: ArgNames = KEYWORDS):
    """`translate`'s target token ids, [texts, length] (<eos> and the padding after it
    included), and the model's metadata."""
    from .datasets_text import encode_source

    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):  # (a string decoded
        raise ExportArgumentError(f"texts must be a list of strings, got {type(texts).__name__}"  # each character)
                                  + ("" if not isinstance(texts, (list, tuple)) else " holding other values"),
                                  hint='give a list of source texts, e.g. ["26 November 2026"]')
    model = load_model_safely(model_path)
    meta = model_metadata(model)
    if "src_vocab" not in meta:
        ids = [i.name for i in model.graph.input if i.name not in ("beam_width", "max_len", "length_penalty")]
        if "generate.bos" in meta and "beam_width" in [i.name for i in model.graph.input]:  # a translator of ids
            raise ExportArgumentError(f"{model_path} was trained on token ids: it carries no source vocabulary "
                                      "to read texts with",
                                      hint=f"give it ids with predict() (flowgrad predict --data): {', '.join(ids)}, "
                                           "beam_width, max_len and length_penalty")
        raise ExportArgumentError(f"{model_path} carries no source vocabulary",
                                  hint="export a run trained on a bundled seq2seq dataset")
    if any(not t for t in texts):
        raise ExportArgumentError("a source text is empty", hint="give at least one character")
    if not texts:  # nothing to decode (np.stack refused the empty list)
        return np.zeros((0, 0), dtype=np.int64), meta
    src = np.stack([encode_source(t, meta, error=ExportArgumentError) for t in texts])
    lengths = np.asarray([len(t) for t in texts], dtype=np.int64)
    widest = _widest_beam(meta)
    beam_width = check_count(names("beam_width"), beam_width, most=widest, error=ExportArgumentError,  # (2.5 decoded
                             most_hint=BEAM_WIDTH_WHY) or widest  # with 2 beams)
    max_len = check_count(names("max_len"), max_len if max_len is not None
                          else _spec_count(meta, "generate.max_len", meta.get("tgt_len", 32)),
                          0, most=MAX_COUNT, error=ExportArgumentError, most_hint=MAX_COUNT_WHY)
    penalty = check_number(names("length_penalty"), length_penalty if length_penalty is not None  # (a string was a ValueError)
                           else meta.get("generate.length_penalty", 0.6), 0, error=ExportArgumentError,
                           hint=LENGTH_PENALTY_HINT)
    feeds = {"src": src, "src_len": lengths, "beam_width": np.asarray(beam_width, dtype=np.int64),
             "max_len": np.asarray(max_len, dtype=np.int64), "length_penalty": np.asarray(penalty, dtype=np.float32)}
    wanted = {i.name for i in model.graph.input}
    outs = predict(model_path, {k: v for k, v in feeds.items() if k in wanted}, device, threads)
    return outs["tokens"], meta
