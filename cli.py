"""flowgrad's command line: check, compile and inspect flow-graph specs."""
from __future__ import annotations

import contextlib
import errno
import math
import os
import signal
import sys
from typing import Annotated, Optional

# Ctrl-C while the imports below load ended in a traceback of whichever module was loading
_ctrl_c = signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))
import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

from runtime.console import print_table, widen_off_terminal  # noqa: E402

signal.signal(signal.SIGINT, _ctrl_c)

app = typer.Typer(
    name="flowgrad",
    help="Compile YAML flow-graph specs of neural networks into ONNX training graphs.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
err = Console(stderr=True, highlight=False, emoji=False)  # (a slice [1:-1:1] in a message is no :-1: emoji)
out = Console(highlight=False, emoji=False)
for _console in (err, out):  # (lines cut at 80 columns in a log or a pipe)
    widen_off_terminal(_console)

_state = {"debug": False}

SpecArg = Annotated[str, typer.Argument(help="Path of a spec YAML file.", show_default=False)]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a spec value, e.g. --set dims.H=32 (repeatable).", show_default=False),
]
DtypeOpt = Annotated[
    Optional[str], typer.Option("--dtype", help="Float type of the compiled graphs: float32, float64 or float16.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors and warnings; the exit code says how it went.")]


def _print_version(value: bool) -> None:
    if value:  # (a script recording what made its results had only pip show flowgrad)
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("flowgrad")
        except PackageNotFoundError:  # run from a checkout that was never installed
            number = "(not installed)"
        print(f"flowgrad {number}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks for user errors too.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print flowgrad's version and exit.", is_eager=True,
                                          callback=_print_version)] = False,
):
    _state["debug"] = debug


def visible(text: str) -> str:
    """One line, whatever a path or value in it holds: a control character is shown as its escape.
    A path read from a list with Windows line ends ends in '\\r': printed line by line, 'no such spec
    file: mlp.yaml\\r' lost the '\\r' and named a file that exists, and one with a line break printed
    half its message on an 'error:' line of its own."""
    return "".join(ascii(c)[1:-1] if c < " " or "\x7f" <= c <= "\x9f" or c in "\u2028\u2029" else c for c in text)


def _each_error(e) -> list:
    """The errors a MultiError holds (and theirs), else the error itself."""
    return [one for sub in e.errors for one in _each_error(sub)] if getattr(e, "errors", None) else [e]


@contextlib.contextmanager
def user_errors():
    """User mistakes end the command with their located message and exit code 1 (2 for a flag's
    value that is none of its choices), never a traceback."""
    from spec.errors import FlowgradError

    try:
        yield
    except FlowgradError as e:
        if _state["debug"]:
            raise
        for one in _each_error(e):  # escaped: a path or name may hold [brackets]
            err.print(f"[bold red]error:[/bold red] {escape(visible(one.one_line()))}", soft_wrap=True)
            if one.hint:
                err.print(f"[dim]  hint: {escape(visible(one.hint))}[/dim]", soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except ModuleNotFoundError as e:  # an installation without one of flowgrad's dependencies
        if _state["debug"] or not e.name:
            raise
        package = _PIP_NAMES.get(e.name.split(".")[0], e.name.split(".")[0])
        err.print(f"[bold red]error:[/bold red] this Python lacks the package {package!r}, which flowgrad needs here",
                  soft_wrap=True)
        err.print(f"[dim]  hint: pip install '{package}', or reinstall flowgrad with its dependencies[/dim]",
                  soft_wrap=True)
        raise typer.Exit(1) from None


class _Stopped(KeyboardInterrupt):
    """SIGTERM, raised where Python's default would end the process without a word."""


@contextlib.contextmanager
def _stopped_by_signals(spec_path: str, run_dir: str):
    """Ctrl-C or SIGTERM during training ends with one line saying what the run directory
    keeps and how to go on (exit 130 or 143, as a shell reports those signals). Checkpoints
    are written to a temporary file and renamed, so they are whole at any moment."""
    def stop_once(signum, frame):
        # one stop is enough: a second signal while the run winds down (Ctrl-C pressed twice) cut
        # off the line below and ended with 130 for a SIGTERM; the process ends ignoring them
        for sig in handled:
            signal.signal(sig, signal.SIG_IGN)
        raise _Stopped() if signum == signal.SIGTERM else KeyboardInterrupt()

    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, stop_once) for sig in handled}
    stopped = False
    try:
        yield
    except KeyboardInterrupt as stop:
        stopped = True
        from runtime.checkpoint import load_checkpoint

        ckpt = os.path.join(run_dir, "checkpoint.npz")
        try:
            kept = f"keeps its checkpoint of step {int(load_checkpoint(ckpt)[1]['step'])}"
        except Exception:  # none yet, or unreadable: say only what is sure
            kept = "has no checkpoint yet" if not os.path.exists(ckpt) else "keeps its last checkpoint"
        what = "SIGTERM" if isinstance(stop, _Stopped) else "Ctrl-C"
        err.print(f"[bold red]error:[/bold red] training stopped by {what}; {escape(run_dir)} {kept}", soft_wrap=True)
        if "no checkpoint" not in kept:
            err.print(f"[dim]  hint: go on with: flowgrad train {_shell(spec_path)} --run-dir {_shell(run_dir)} "
                      f"--resume (and this run's other flags)[/dim]", soft_wrap=True)
        raise typer.Exit(143 if isinstance(stop, _Stopped) else 130) from None
    finally:
        if not stopped:
            for sig in handled:
                signal.signal(sig, previous[sig])


# The graphs take the seed as an int64 input; every verb's --seed is 0 to MAX_SEED. runtime.checks'
# MAX_SEED, repeated: the CLI imports runtime only inside its commands, for a quick start.
MAX_SEED = 2**63 - 1

# import name -> the name pip installs it by, where they differ
_PIP_NAMES = {"yaml": "pyyaml", "sklearn": "scikit-learn", "onnxruntime": "onnxruntime-gpu"}


def _shell(path: str) -> str:
    """A path as a suggested command line takes it: quoted for the shell where it needs to be
    (spaces), and escaped from rich's markup (a [bracketed] part was dropped)."""
    import shlex

    return escape(shlex.quote(path))


def _print_json(value, indent: Optional[int] = 2) -> None:
    """What --json (and eval) print: valid JSON, a metric that is NaN as null, an infinite one as
    "Infinity" or "-Infinity" (runtime.jsontext). eval
    printed '"accuracy": -Infinity', which jq and other strict parsers refuse."""
    from runtime.jsontext import dumps

    print(dumps(value, indent=indent))


def _not_empty(required: tuple[str, ...] = (), **flags) -> None:
    """An option given as an empty string ('--data "$DATA"' with DATA unset) is an error: taken
    as not given, it trained on the spec's data, skipped --init-from, printed instead of -o.
    `required`: the flags that cannot be left out (export's -o), which the hint does not offer to."""
    from spec.errors import FLAGS, FlowgradError

    for flag, value in flags.items():
        if value is not None and not str(value).strip():
            name = FLAGS(flag)
            raise FlowgradError(f"{name} is empty", hint=f"give {name} a value" + ("" if flag in required else ", or leave it out"))


def _load(path: str, overrides):
    from spec import load_spec

    return load_spec(path, list(overrides or []))


def _check_device(device):
    from runtime.session import check_device

    check_device(device, "--device")


def _batch_dims(s) -> set:
    from compiler.training import batch_dims

    return batch_dims(s)


def _check_dtype(dtype):
    from compiler.training import check_dtype

    check_dtype(dtype, "--dtype")


@app.command()
def check(spec: SpecArg, set: SetOpt = None, dtype: DtypeOpt = None,
          as_json: Annotated[bool, typer.Option("--json", help="Print the nodes, parameters and warnings as JSON.")] = False,
          quiet: QuietOpt = False):
    """Validate a spec, infer every shape, and print its nodes and parameters."""
    from runtime.reports import check_spec_report

    with user_errors():
        _check_dtype(dtype)
        s = _load(spec, set)
        low, r = check_spec_report(s, dtype)
    for w in low.warnings:  # worth a look, but the spec is usable (exit code 0)
        err.print(f"[bold yellow]warning:[/bold yellow] {escape(visible(w.one_line()))}", soft_wrap=True)
        if w.hint:
            err.print(f"[dim]  hint: {escape(visible(w.hint))}[/dim]", soft_wrap=True)
    if as_json:  # (the pointer to summary below is for a person reading the tables, as summary's notes)
        _print_json(r)
        return
    if quiet:
        return
    _print_doc(s)
    table = Table(title=f"{s.name}: nodes", title_justify="left")
    table.add_column("name")
    table.add_column("op")
    table.add_column("shape")
    table.add_column("dtype")
    from compiler.ir import fmt_shape

    for n in r["nodes"]:
        # a compile-time number (c: 2.0, k: D * 2) has no shape: its value is shown instead
        shape = fmt_shape(n["shape"]) if n["shape"] is not None else n["value"] if isinstance(n["value"], str) else repr(n["value"])
        table.add_row(n["name"], n["op"], escape(shape), n["dtype"] or "")  # (a shape [t, N] read as markup)
    print_table(out, table)
    ptable = Table(title=f"{s.name}: parameters", title_justify="left")
    for col in ("name", "shape", "init", "kind"):
        ptable.add_column(col)
    for p in r["params"]:
        ptable.add_row(p["name"], escape(fmt_shape(p["shape"])), p["init"], p["kind"])
    print_table(out, ptable)
    warned = f" ({len(r['warnings'])} warning{'s' if len(r['warnings']) != 1 else ''})" if r["warnings"] else ""
    out.print(f"{r['tensors']} tensors, {r['trainable_values']:,} trainable values; spec OK{warned}")
    if r["step_dtype"] != r["master_dtype"]:  # (the nodes' dtype is the step's; the parameters' is not)
        out.print(f"mixed precision: the training step computes in {r['step_dtype']}; the parameters and "
                  f"optimizer state (master weights) stay {r['master_dtype']}")
    sets = "".join(f" --set {_shell(o)}" for o in set or [])  # (without them it summed up another model)
    dtype_flag = f" --dtype {_shell(dtype)}" if dtype else ""
    err.print(f"[dim]parameter counts and FLOPs per node: flowgrad summary {_shell(spec)}{sets}{dtype_flag}[/dim]",
              soft_wrap=True)


def _print_doc(s) -> None:
    """The spec's `doc` paragraph, which docs/schema.md says check and summary show."""
    if s.doc and s.doc.strip():
        out.print(f"[bold]{escape(s.name)}[/bold]: {escape(' '.join(s.doc.split()))}", soft_wrap=True)


@app.command("compile")
def compile_cmd(
    spec: SpecArg,
    output: Annotated[str, typer.Option("-o", "--output", help="Directory for the ONNX graphs and manifest.json.")] = "build",
    set: SetOpt = None,
    dtype: DtypeOpt = None,
    no_optimize: Annotated[bool, typer.Option("--no-optimize", help="Skip the graph rewrites.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the graphs written (file, nodes, inputs, outputs) as JSON.")] = False,
    quiet: QuietOpt = False,
):
    """Compile a spec into ONNX graphs: train, eval, infer, grads, apply (+ manifest.json)."""
    from compiler.training import compile_spec
    from runtime.api import save_graphs
    from spec.errors import FLAGS

    with user_errors():
        _not_empty(output=output)
        _check_dtype(dtype)
        s = _load(spec, set)
        cm = compile_spec(s, dtype, optimize_graph=not no_optimize)
        written = save_graphs(cm, output, FLAGS)
    r = _compile_report(cm, output, written)
    if as_json:
        _print_json(r)
        return
    if quiet:
        return
    table = Table(title=f"{r['name']} compiled in {r['compile_seconds']:.2f} s", title_justify="left")
    table.add_column("graph")
    table.add_column("nodes", justify="right")
    table.add_column("inputs", justify="right")
    table.add_column("outputs", justify="right")
    table.add_column("file")
    for g in r["graphs"]:
        table.add_row(g["graph"], str(g["nodes"]), str(len(g["inputs"])), str(len(g["outputs"])), escape(g["file"]))
    print_table(err, table)
    for w in r["files"]:
        print(w)


def _compile_report(cm, output: str, written: list[str]) -> dict:
    """What compile shows of the graphs it wrote, as its table and --json have them: the spec's
    name, the float type (and the training step's: its half type under mixed precision), the
    seconds compiling took, the directory, each graph's file, node count and its inputs' and
    outputs' names, and every file written (the manifest last)."""
    from compiler.training import step_float_type

    return {"name": cm.spec.name, "dtype": cm.float_dtype, "step_dtype": step_float_type(cm.spec, cm.float_dtype),
            "compile_seconds": cm.compile_seconds,
            "output": output,
            "graphs": [{"graph": k, "file": os.path.join(output, f"{k}.onnx"), "nodes": g.node_count,
                        "inputs": [i.name for i in g.inputs], "outputs": [o.name for o in g.outputs]}
                       for k, g in cm.graphs.items()],
            "files": list(written)}


@app.command()
def ops(
    as_json: Annotated[bool, typer.Option("--json", help="Print the registry as JSON.")] = False,
):
    """List the op registry (family, inputs, attributes, gradient), layer shorthands and special forms."""
    from compiler import recurrent  # noqa: F401  (registers the recurrent layers)
    from compiler.layers import LAYERS
    from compiler.lower import SPECIAL_FORM_DOCS, signature
    from compiler.registry import all_ops

    rows = []
    for name, op in all_ops().items():
        if name in SPECIAL_FORM_DOCS or op.internal:  # (scan(...) is the special form, not the op it builds)
            continue
        grad = "composite" if op.composite else ("none" if op.nondiff else "yes")
        rows.append({"name": name, "family": op.family, "signature": signature(op), "gradient": grad, "doc": op.doc})
    # a shorthand or special form builds ops: its gradient is theirs
    for name, layer in LAYERS.items():
        rows.append({"name": name, "family": "layer", "signature": layer.usage, "gradient": "composite", "doc": layer.doc})
    for name, (usage, doc) in SPECIAL_FORM_DOCS.items():
        rows.append({"name": name, "family": "special form", "signature": usage, "gradient": "composite", "doc": doc})
    if as_json:
        _print_json(rows)
        return
    table = Table(title="flowgrad ops", title_justify="left")
    for col in ("family", "signature", "gradient", "doc"):
        table.add_column(col)
    for r in sorted(rows, key=lambda r: (r["family"], r["name"])):
        table.add_row(r["family"], escape(r["signature"]), r["gradient"], escape(r["doc"]))
    print_table(out, table)


# eval, export, plot attention and plot samples read one of a run's two checkpoints, in the same words
CheckpointOpt = Annotated[str, typer.Option("--checkpoint", help="Which checkpoint: best (the epoch with the best "
                                            "early_stopping metric, else validation loss, else training loss) or last.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when available, else CPU), cuda or cpu.")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", help="onnxruntime intra-op threads (default: all cores).", min=1,
                                                   max=1024)]  # runtime.checks' MAX_THREADS
CudaGraphsOpt = Annotated[bool, typer.Option("--cuda-graphs/--no-cuda-graphs",
                                             help="On CUDA, capture training steps as CUDA graphs and replay them.")]


@app.command()
def train(
    spec: SpecArg,
    set: SetOpt = None,
    run_dir: Annotated[Optional[str], typer.Option("--run-dir", help="Where the run is written (default runs/<name>).")] = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed for initialisation, the validation and test split, data order and dropout "
                                                "(overrides train.seed, whose default is 0).", min=0,
                                                             max=MAX_SEED)] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Override train.epochs.", min=1)] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Stop after this many updates (overrides train.steps; "
                                                 "with train.epochs or --epochs, the first limit reached ends the run).",
                                                 min=1)] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Override train.batch_size.", min=1)] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Training data: an .npz whose arrays are named like the spec's inputs.")] = None,
    valid: Annotated[Optional[str], typer.Option("--valid", help="Validation data: an .npz, or a fraction of the training data (0 for none).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in the run directory from its checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start over in a run directory that holds a run.")] = False,
    init_from: Annotated[Optional[str], typer.Option("--init-from", help="Warm start from another run's parameters.")] = None,
    freeze: Annotated[Optional[list[str]], typer.Option("--freeze", help="Keep parameters matching this glob fixed (repeatable; each glob must match one).")] = None,
    accumulate: Annotated[int, typer.Option("--accumulate", help="Average gradients over K batches per update.", min=1)] = 1,
    steps_per_call: Annotated[int, typer.Option(
        "--steps-per-call", help="Run K training steps per session call (the step graph in a Loop over stacked "
                                 "minibatches): less per-step overhead, e.g. for recurrent models on a GPU.", min=1)] = 1,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Also checkpoint every N steps (0: each epoch).", min=0)] = 0,
    dtype: DtypeOpt = None,
    cuda_graphs: CudaGraphsOpt = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no 'training NAME on DEVICE' line.")] = False,
):
    """Compile a spec and train it on its data, with progress, validation and checkpoints."""
    from runtime.train import TrainOptions, run_dir_of, train as run_training
    from spec.errors import FLAGS

    with user_errors():
        _not_empty(run_dir=run_dir, data=data, valid=valid, init_from=init_from)
        _check_device(device)
        _check_dtype(dtype)
        s = _load(spec, set)
        opts = TrainOptions(run_dir=run_dir, device=device, threads=threads, seed=seed, epochs=epochs, steps=steps,
                            batch_size=batch_size, data=data, valid=valid, resume=resume, overwrite=overwrite,
                            init_from=init_from, freeze=list(freeze or []), accumulate=accumulate,
                            steps_per_call=steps_per_call, checkpoint_every=checkpoint_every, progress=not quiet,
                            dtype=dtype, cuda_graphs=cuda_graphs, names=FLAGS)
        if not quiet:
            err.print(f"training [bold]{s.name}[/bold] on {_device_name(device)}")
        with _stopped_by_signals(spec, run_dir_of(s, opts)):
            result = run_training(s, opts)
    if as_json:
        _print_json(result.to_json())
        return
    # The headline stands on its own line: as a table title it would wrap to the table's width.
    err.print(f"[bold]{s.name}[/bold]: {result.stopped} after {result.epochs} epoch{'s' if result.epochs != 1 else ''}, {result.steps} step{'s' if result.steps != 1 else ''}, "
              f"{result.seconds:.1f} s on {result.device}")
    summary = Table()
    summary.add_column("metric")
    summary.add_column("final", justify="right")
    summary.add_column(f"best (epoch {result.best.get('epoch', '-')})", justify="right")
    for k, v in result.final.items():
        if k.startswith(("train_", "valid_")):
            summary.add_row(k, f"{v:.4f}", f"{result.best.get(k, float('nan')):.4f}")
    print_table(err, summary)
    if result.warm_start:
        ws = result.warm_start
        n = len(ws["taken"])
        err.print(f"warm-started {n} parameter{'s' * (n != 1)} from {escape(ws['from'])}", soft_wrap=True)
        if ws["kept"]:
            kept = ", ".join(f"{name} ({why})" for name, why in ws["kept"].items())
            err.print(f"  kept their initial values: {escape(kept)}", soft_wrap=True)
        if ws.get("unused"):  # (a run.json of an earlier flowgrad has none)
            err.print(f"  left unused, this spec has none of: {escape(', '.join(ws['unused']))}", soft_wrap=True)
    err.print(f"run written to {escape(result.run_dir)}", soft_wrap=True)
    err.print(f"  plot the curves: flowgrad plot curves {_shell(result.run_dir)} -o "
              f"{_shell(os.path.join(result.run_dir, 'curves.png'))}", soft_wrap=True)
    if s.outputs or s.generate:  # export writes the outputs' or the sampler's graph: without either it refuses
        err.print(f"  export the model: flowgrad export {_shell(result.run_dir)} -o {s.name}.onnx", soft_wrap=True)


def _device_name(device: str) -> str:
    from runtime.session import pick_device
    from spec.errors import FLAGS

    return pick_device(device, names=FLAGS)


@app.command("eval")
def eval_cmd(
    run_dir: Annotated[str, typer.Argument(help="A run directory written by 'flowgrad train'.")],
    data: Annotated[Optional[str], typer.Option("--data", help="An .npz with arrays named like the spec's inputs (default: the test examples the spec holds out, train.data.test).")] = None,
    checkpoint: CheckpointOpt = "best",
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Examples per evaluation batch.", min=1)] = 256,
    # (eval prints JSON in any case; train, bench, summary and ops take --json, and a script passing
    # it to eval too was refused 'No such option: --json')
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON (what eval prints anyway).")] = False,
):
    """Loss and metrics of a trained run on other data, or on the test examples it held out (JSON on stdout)."""
    from runtime.api import evaluate_run
    from spec.errors import FLAGS

    with user_errors():
        _not_empty(data=data)
        metrics = evaluate_run(run_dir, data, checkpoint, device, threads, batch_size, names=FLAGS)
    if data is None:
        err.print("on the test examples the run's spec held out (train.data.test)")
    _print_json(metrics)


@app.command()
def export(
    run_dir: Annotated[str, typer.Argument(help="A run directory written by 'flowgrad train'.")],
    output: Annotated[str, typer.Option("-o", "--output", help="The ONNX file to write.")],
    checkpoint: CheckpointOpt = "best",
    graph: Annotated[Optional[str], typer.Option("--graph", help="infer (the spec's outputs) or generate (sampling); default: generate where the spec has it.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the model written (path, inputs, outputs, parameters, bytes) as JSON.")] = False,
):
    """Write the deployment graph with the trained weights baked in."""
    from runtime.export import export as do_export
    from spec.errors import FLAGS

    with user_errors():
        _not_empty(required=("output",), output=output)
        info = do_export(run_dir, output, checkpoint, graph, names=FLAGS)
    r = _export_report(info)
    if as_json:
        _print_json(r)
        return
    err.print(f"wrote {escape(r['path'])}: inputs {', '.join(r['inputs'])} -> outputs {', '.join(r['outputs'])}",
              soft_wrap=True)
    print(r["path"])


def _export_report(info: dict) -> dict:
    """What export says of the model it wrote, as its line and --json have them: its path, the
    inputs it takes and outputs it gives (names), the parameters baked in, their bytes and the
    bytes of the files written (the model's, and its weights' file beside it if it has one)."""
    # (export's files: an earlier export's .data may lie beside a smaller model)
    files = info.get("files") or [info["path"]]
    return {"path": info["path"], "inputs": info["inputs"], "outputs": info["outputs"],
            "parameters": info["parameters"], "parameter_bytes": info["bytes"],
            "bytes": sum(os.path.getsize(p) for p in files)}


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="An exported ONNX file.")],
    data: Annotated[Optional[str], typer.Option("--data", help="An .npz with one array per model input.")] = None,
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="Write the outputs to this .npz.")] = None,
    # (a list, so that a second --text is refused where click kept the last one without a word)
    texts: Annotated[Optional[list[str]], typer.Option("--text", metavar="TEXT", help="Prompt for a text generator (models with a 'generate' section).")] = None,
    max_len: Annotated[Optional[int], typer.Option("--max-len", help="Tokens to generate with --text, 0 or more (default: the spec's generate.max_len; without it 200, or a translator's target length).", min=0,
                                                   max=1 << 20)] = None,  # runtime.checks' MAX_COUNT
    beam_width: Annotated[Optional[int], typer.Option("--beam-width", help="Beam width with --text for sequence-to-sequence models; 1 is greedy (default and most: the spec's generate.beam_width, else 4).", min=1)] = None,
    length_penalty: Annotated[Optional[float], typer.Option("--length-penalty", help="Length penalty of the beam search with --text for sequence-to-sequence models, 0 or more; 0 ranks by total log-probability (default: the spec's generate.length_penalty, else 0.6).")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", help="Sampling temperature with --text; 0 is greedy (default: the spec's generate.temperature, else 1).", min=0.0)] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the sampling with --text, or of a generator's draws with --count (default: 0).",
                                                min=0, max=MAX_SEED)] = None,
    count: Annotated[Optional[int], typer.Option("--count", help="How many samples a generator (a model whose inputs are seed and an integer scalar, the count; a conditional one's others given with --input) draws.",
                                                 min=1, max=1 << 20)] = None,  # runtime.checks' MAX_COUNT
    inputs: Annotated[Optional[list[str]], typer.Option("--input", metavar="NAME=VALUE", help="Another input of a conditional generator with --count, a number or a JSON list (--input digit=3, --input 'weights=[0.1,0.9]', quoted for the shell); repeatable.")] = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outputs (each one's shape, dtype and values; with -o, the file written; with --text, the text) as JSON.")] = False,
):
    """Run an exported model on an .npz of inputs, generate text from a prompt, or draw samples from a generator."""
    from runtime.data import check_data_path, load_npz
    from runtime.export import generate_text, generator_feeds
    from runtime.export import predict as run_predict
    from runtime.session import pick_device
    from spec.errors import FLAGS, FlowgradError

    with user_errors():
        _not_empty(data=data, output=output)
        _check_device(device)
        if texts and len(texts) > 1:
            raise FlowgradError(f"--text is given {len(texts)} times; predict reads one prompt",
                                hint="run predict once per text (the Python API's translate() takes a list)")
        text = texts[0] if texts else None
        if sum(x is not None for x in (data, text, count)) != 1:
            raise FlowgradError("give one of --data (an .npz of inputs), --text (a prompt) or --count "
                                "(samples of a generator)", hint="--data for any model, --text for language models and translators, --count for generators")
        text_only = {"--max-len": max_len, "--temperature": temperature, "--beam-width": beam_width,
                     "--length-penalty": length_penalty}
        if text is None:  # these would be silently ignored
            given = [f for f, v in {**text_only, "--seed": seed if data is not None else None}.items() if v is not None]
            if given:
                raise FlowgradError(f"{given[0]} is for --text" + (" or --count" if given[0] == "--seed" else ""),
                                    hint="the .npz gives every input of the model" if data is not None
                                    else "a generator takes --count and --seed")
        if inputs and count is None:  # (a text generator's inputs are its prompt and the flags above)
            raise FlowgradError(f"--input {inputs[0]} is for --count (the inputs of a conditional generator)",
                                hint="the .npz gives every input of the model" if data is not None
                                else "--text reads a prompt with --max-len, --temperature, --seed, --beam-width and "
                                     "--length-penalty; "
                                     "run other inputs with --data (an .npz of them)")
        if output:  # (it replaced the model, or the inputs, it was reading, without a word)
            for flag, path in (("the model", model), ("--data", data)):
                if path is not None and os.path.exists(output) and os.path.exists(path) \
                        and os.path.samefile(output, path):
                    raise FlowgradError(f"-o {output} is {flag}'s file: the outputs would replace it",
                                        hint="write the outputs to another .npz with -o")
        if text is not None:
            if output:
                raise FlowgradError("-o writes the arrays of --data or --count; --text prints its text",
                                    hint="redirect it instead: > out.txt")
            generated = generate_text(model, text, max_len, temperature, seed, pick_device(device, names=FLAGS), beam_width,
                                      with_prompt=not _is_translator(model), threads=threads,
                                      length_penalty=length_penalty, names=FLAGS)
            if as_json:
                _print_json({"prompt": text, "text": generated}, indent=None)
            else:
                print(generated)
            return
        if data is not None:
            check_data_path(data, flag="--data")
        feeds = load_npz(data).arrays if data is not None else \
            generator_feeds(model, count, seed, _given_inputs(inputs or []), names=FLAGS)
        # an .npz of a dataset also holds its labels: arrays the model does not read are left out
        # --json refuses outputs too many to print before the model runs where their shapes say it,
        # and after it where only the run tells (a decoder's max_len tokens)
        printed = as_json and not output
        outs = run_predict(model, feeds, pick_device(device, names=FLAGS), threads, ignore_extra=True,
                           before_run=_check_printable if printed else None)
        if printed:
            _check_printable({k: v.shape for k, v in outs.items()})
        if output:
            _write_npz(output, outs)
    r = _predict_report(outs, output, values=as_json and not output)
    if as_json:  # (one line, as bench's: the values of a batch of outputs are many)
        _print_json(r, indent=None)
        return
    if output:
        err.print("wrote " + escape(output) + ": " + ", ".join(f"{k} {o['shape']}" for k, o in r["outputs"].items()),
                  soft_wrap=True)
        print(output)  # the path on stdout, as export, compile, graph and plot print what they wrote
        return
    for k, v in outs.items():
        print(f"{k}: shape {list(v.shape)} dtype {v.dtype}")
        # the first 10 rows, or a sequence's first 50 values (a sampler's tokens [300] were a column of 10)
        print(v if v.size <= 50 else v[:50] if v.ndim == 1 else v.reshape(len(v), -1)[:10])


def _given_inputs(texts: list[str]) -> dict:
    """predict's --input NAME=VALUE flags as {name: value}: VALUE is JSON, a number or a list
    (generator_feeds checks it against the model's input)."""
    import json

    from spec.errors import FlowgradError

    given, written = {}, {}  # {name: value}, {name: the flag's text}
    for text in texts:
        name, eq, value = text.partition("=")
        name = name.strip()
        if not eq or not name:
            raise FlowgradError(f"bad --input {text!r}: expected NAME=VALUE" + ("" if eq else " (no '=')"),
                                hint="e.g. --input digit=3, or --input 'weights=[0.1,0.9]' for a list (quoted for the shell)")
        if name in given:  # (the last one was taken without a word)
            raise FlowgradError(f"--input {name} is given twice ({written[name]} and {text})",
                                hint="give each input once: predict reads one value of it")
        try:
            parsed = json.loads(value)
        except ValueError:  # (JSONDecodeError, or a number of too many digits)
            parsed = None
        if parsed is None or isinstance(parsed, (str, dict)):  # (null, a quoted string, an object)
            raise FlowgradError(f"--input {text}: {value.strip() or 'the empty value'} is not a number or a JSON list",
                                hint=f"e.g. --input {name}=3, or --input '{name}=[0.1,0.9]' for a list (quoted for the shell)")
        given[name], written[name] = parsed, text
    return given


# predict --json prints at most this many output values; more are for an .npz (-o)
MAX_JSON_VALUES = 100_000


def _check_printable(shapes: dict) -> None:
    """Outputs few enough to print as JSON (predict --json without -o), else a refusal before any of
    it. `shapes`: {output name: shape}, of all the outputs or (before the run) those known."""
    from spec.errors import FlowgradError

    count = sum(math.prod(s) for s in shapes.values())
    if count > MAX_JSON_VALUES:
        raise FlowgradError(f"the outputs hold {count:,} values, more than --json prints (at most {MAX_JSON_VALUES:,})",
                            hint="write them to an .npz with -o (with --json, it describes the file written)")


def _predict_report(outs: dict, path: Optional[str], values: bool) -> dict:
    """What predict says of its outputs, as its lines and --json have them: each output's shape and
    dtype, and its values (`values`); `path`: the .npz they were written to (-o)."""
    rows = {k: {"shape": list(v.shape), "dtype": str(v.dtype), **({"values": v.tolist()} if values else {})}
            for k, v in outs.items()}
    return {**({"path": path} if path else {}), "outputs": rows}


def _write_npz(path: str, arrays: dict) -> None:
    """The arrays as an .npz at exactly `path`, whole or not at all."""
    from runtime.checkpoint import atomic_write, make_parent_dir, refuse_replacing, refuse_run_file, write_predictions
    from spec.errors import FLAGS

    refuse_run_file(path, names=FLAGS)
    # (predictions replaced a spec or notes given as -o, and an .npz of data other than --data)
    refuse_replacing(path, "npz", names=FLAGS, outputs=list(arrays))
    make_parent_dir(path, names=FLAGS)
    atomic_write(path, lambda f: write_predictions(f, arrays),
                 hint="check the directory's permissions and free space, or pick another path with -o")


def _is_translator(path: str) -> bool:
    from runtime.export import load_model_safely

    return any(i.name == "beam_width" for i in load_model_safely(path).graph.input)


@app.command()
def gradcheck(
    spec: SpecArg,
    set: SetOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the parameters, inputs and probe directions.",
                                                 min=0, max=MAX_SEED)] = 0,
    tolerance: Annotated[float, typer.Option("--tolerance", help="Largest relative error that passes.", min=0.0)] = 1e-4,
    as_json: Annotated[bool, typer.Option("--json", help="Print each parameter's relative error and status as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No table: a failed check says which parameters failed, as an error.")] = False,
):
    """Compare each parameter's symbolic gradient with finite differences (float64)."""
    from runtime.reports import UNCHECKABLE, gradcheck_report

    with user_errors():
        if not tolerance < float("inf"):  # NaN passes typer's min= check
            from spec.errors import FlowgradError

            raise FlowgradError(f"--tolerance must be a finite number, got {tolerance}", hint="give a finite positive number, e.g. --tolerance 1e-4")
        s = _load(spec, set)
        r = gradcheck_report(s, seed, tolerance)
    if as_json:
        _print_json(r)
    elif quiet:
        failed = [c for c in r["checks"] if c["status"] == "FAIL"]
        if failed:  # (without the table, the exit code alone said nothing of which)
            worst = ", ".join(f"{c['parameter']} ({c['relative_error']:.2e})" for c in failed)
            err.print(f"[bold red]error:[/bold red] {escape(s.name)}: the gradient of {escape(worst)} differs from "
                      f"finite differences by more than --tolerance {tolerance:g}", soft_wrap=True)
            err.print("[dim]  hint: run without --quiet for every parameter's error[/dim]", soft_wrap=True)
    else:
        table = Table(title=f"{s.name}: gradient check (float64, central differences)", title_justify="left")
        for col in ("objective", "parameter", "worst relative error", ""):
            table.add_column(col)
        colour = {"ok": "green", "FAIL": "red", UNCHECKABLE: "yellow"}
        for c in r["checks"]:
            e = c["relative_error"]
            table.add_row(c["objective"], c["parameter"], "-" if c["status"] == UNCHECKABLE else f"{e:.2e}",
                          f"[{colour[c['status']]}]{c['status']}[/{colour[c['status']]}]")
        print_table(out, table)
    # (the notes stay on stderr with --json: they say why a check could not pass)
    unchecked = [c["parameter"] for c in r["checks"] if c["status"] == UNCHECKABLE]
    if unchecked:
        err.print(f"[yellow]  note: {', '.join(escape(p) for p in unchecked)}: every probe crossed a non-differentiable "
                  "point of the loss (a kink of relu, max, abs, ...), where finite differences cannot verify a "
                  f"gradient; try another --seed (this was --seed {seed})[/yellow]", soft_wrap=True)
    if not r["passed"]:
        from compiler.training import spec_calls

        calls = list(spec_calls(s))
        if any("truncate" in c.kwargs for c in calls):
            err.print("[dim]  note: truncate=K cuts backpropagation through time on purpose, so its gradient "
                      "differs from finite differences of the loss; check the spec without truncate[/dim]",
                      soft_wrap=True)
        if any(c.func == "stop_gradient" for c in calls):  # (finite differences of the loss see through it)
            err.print("[dim]  note: stop_gradient(...) holds its argument constant on purpose, so the gradient "
                      "differs from finite differences of the loss, which move it too; check the spec without "
                      "stop_gradient[/dim]", soft_wrap=True)
        raise typer.Exit(1)


@app.command()
def bench(
    spec: SpecArg,
    set: SetOpt = None,
    steps: Annotated[int, typer.Option("--steps", help="Timed training steps (after 5 warm-up calls; with --steps-per-call K, rounded up to whole calls of K).", min=1)] = 50,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Batch size to time (default: train.batch_size).", min=1)] = None,
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the measurements as JSON.")] = False,
    steps_per_call: Annotated[int, typer.Option("--steps-per-call", help="Training steps per session call (a Loop over stacked minibatches in one graph).", min=1)] = 1,
    cuda_graphs: CudaGraphsOpt = True,
    dtype: DtypeOpt = None,
    dim: Annotated[Optional[list[str]], typer.Option("--dim", help="Size of another symbolic dim of a spec without data (random inputs), e.g. --dim T=64 (repeatable; unset ones are 4).")] = None,
):
    """Median training-step time, samples/s, compile time, node counts and peak memory."""
    from runtime.bench import bench as run_bench
    from spec.errors import FLAGS

    with user_errors():
        _check_device(device)
        _check_dtype(dtype)
        from compiler.training import parse_dims

        dims = parse_dims(dim)
        s = _load(spec, set)
        r = run_bench(s, batch_size, steps, device=device, threads=threads, steps_per_call=steps_per_call,
                      cuda_graphs=cuda_graphs, dtype=dtype, dims=dims, names=FLAGS)
    if as_json:
        _print_json(r, indent=None)
        return
    mixed = f" (steps in {r['step_dtype']}, mixed precision)" if r["step_dtype"] != r["dtype"] else ""
    table = Table(title=f"{s.name} on {r['device']}, batch {r['batch_size']}, {r['dtype']}{mixed}", title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("median step", f"{r['step_ms']:.3f} ms")
    table.add_row("samples/s", f"{r['samples_per_s']:,.0f}")
    table.add_row("compile", f"{r['compile_s']:.3f} s")
    batch = _batch_dims(s)  # (`set` is the --set flags here)
    for d, n in r["dims"].items():  # the sizes timed of the dims besides the batch (a random batch's T)
        if d not in batch:
            table.add_row(f"dim {d}", f"{n}" + (" (default; --dim to set)" if d in r["dims_defaulted"] else ""))
    for k, n in r["nodes"].items():
        table.add_row(f"nodes: {k}", str(n))
    table.add_row("peak RSS", f"{r['peak_rss_mb']:.0f} MB")
    table.add_row("threads", str(r["threads"]) if r["threads"] else "all cores")
    if r["steps_per_call"] > 1:
        table.add_row("steps per call", str(r["steps_per_call"]))
    if r["device"] == "cuda":
        table.add_row("CUDA graphs", "replayed" if r["cuda_graphs"] else "no (kernel by kernel)")
    print_table(out, table)


@app.command("graph")
def graph_cmd(
    spec: SpecArg,
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="File to write: .svg, .png, .pdf (need Graphviz's dot) or .dot (default <name>.svg, <name>_backward.svg with --backward, <name>_optimized.svg with --optimized).")] = None,
    set: SetOpt = None,
    backward: Annotated[bool, typer.Option("--backward", help="Add the gradient of the loss at every spec value on the way to the parameters.")] = False,
    optimized: Annotated[bool, typer.Option("--optimized", help="Draw the primitive ops of the optimized training step instead.")] = False,
    objective: Annotated[Optional[str], typer.Option("--objective", help="Objective whose gradients to draw (default: the first).")] = None,
    expand: Annotated[bool, typer.Option("--expand", help="Draw block and scan step bodies op by op instead of one box.")] = False,
    dtype: DtypeOpt = None,
):
    """Draw the flow graph as written (with --backward its gradients, with --optimized the emitted ops)."""
    from compiler import visual

    with user_errors():
        from spec.errors import FlowgradError

        _check_dtype(dtype)
        _not_empty(output=output)
        if optimized and backward:  # (--backward was ignored)
            raise FlowgradError("--backward and --optimized draw two different pictures: give one of them",
                                hint="--backward: the spec's graph and its gradients; --optimized: the emitted ops "
                                     "of the training step, gradients included")
        if objective is not None and not (backward or optimized):  # (ignored, even a misspelt one)
            raise FlowgradError(f"--objective {objective} picks whose gradients to draw, with --backward or --optimized",
                                hint="add --backward (or --optimized), or leave out --objective")
        s = _load(spec, set)
        if optimized:
            d = visual.ir_dot(visual.training_step(s, objective, dtype), s, expand)
        else:
            d = visual.spec_dot(visual.SpecGraph(s, dtype), backward, objective, expand)
        suffix = "_optimized" if optimized else "_backward" if backward else ""
        path, note = visual.write_picture(d, output or f"{s.name}{suffix}.svg")
    err.print(escape(note or f"wrote {path}"), soft_wrap=True)
    print(path)


@app.command()
def summary(
    spec: SpecArg,
    set: SetOpt = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Value of the batch dim N (default: train.batch_size).", min=1)] = None,
    dim: Annotated[Optional[list[str]], typer.Option("--dim", help="Value of another symbolic dim, e.g. --dim T=64 (repeatable; unset ones count as 1).")] = None,
    objective: Annotated[Optional[str], typer.Option("--objective", help="Objective whose training step to count (default: the first).")] = None,
    dtype: DtypeOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
):
    """Nodes, parameters and FLOPs (forward and training, counted from the IR) of a spec."""
    from compiler import visual
    from spec.errors import FLAGS

    with user_errors():
        _check_dtype(dtype)
        from compiler.training import parse_dims

        dims = parse_dims(dim)
        s = _load(spec, set)
        if objective is not None:  # (a spec without a loss has no training step: any name was taken)
            visual.pick_objective(s, objective)
        r = visual.summary(s, batch_size, dtype, dims, objective, names=FLAGS)
    if as_json:
        _print_json(r)
        return
    t, B = r["totals"], r["batch_size"]
    _print_doc(s)
    num = lambda x: f"{x:,.0f}" if x else "-"  # noqa: E731
    table = Table(title=f"{s.name}: nodes (FLOPs per example, N = {B})", title_justify="left")
    for col, just in (("name", "left"), ("kind", "left"), ("op", "left"), ("shape", "left"), ("params", "right"), ("FLOPs", "right")):
        table.add_column(col, justify=just)
    for n in r["nodes"]:
        # an output drawn `count` rows at a time (a generator's samples) counts per row it draws, not per example
        per = "" if n["flops_per"] == "example" else f" per {n['flops_per']} row"
        table.add_row(n["name"], n["kind"], n["op"], escape(n["shape"]), num(n["params"]), num(n["flops_per_example"]) + per)
    print_table(out, table)
    ptable = Table(title=f"{s.name}: parameters", title_justify="left")
    for col, just in (("name", "left"), ("shape", "left"), ("count", "right"), ("init", "left"), ("made by", "left")):
        ptable.add_column(col, justify=just)
    for p in r["params"]:
        kind = "" if p["kind"] == "param" and p["trainable"] else f" ({'frozen' if p['kind'] == 'param' else p['kind']})"
        ptable.add_row(p["name"] + kind, escape("[" + ", ".join(map(str, p["shape"])) + "]"), f"{p['count']:,}", p["init"], p["created_by"] or "")
    print_table(out, ptable)
    totals = Table(title=f"{s.name}: totals (batch N = {B})", title_justify="left")
    for col, just in (("", "left"), ("per step", "right"), ("per example", "right")):
        totals.add_column(col, justify=just)
    totals.add_row("parameters", f"{t['params']:,}", "")
    if t["buffers"]:
        totals.add_row("buffers", f"{t['buffers']:,}", "")
    # several objectives: the forward and training FLOPs are those of one objective's step
    step = f" ({t['training_objective']})" if "objectives" in (s.train or {}) and "training_objective" in t else ""
    totals.add_row(f"forward FLOPs{step}", f"{t['forward_flops_per_step']:,}", num(t["forward_flops_per_example"]))
    totals.add_row("  of which matmul", f"{t['forward_matmul_flops_per_step']:,}", num(t["forward_matmul_flops_per_example"]))
    if t["forward_conv_flops_per_step"]:
        totals.add_row("  of which conv", f"{t['forward_conv_flops_per_step']:,}", num(t["forward_conv_flops_per_step"] / B))
    if "training_flops_per_step" in t:
        totals.add_row(f"training FLOPs{step}", f"{t['training_flops_per_step']:,}", num(t["training_flops_per_example"]))
    print_table(out, totals)
    if r["dims_counted_as_1"]:
        err.print(f"[dim]symbolic dims counted as 1: {', '.join(r['dims_counted_as_1'])} (set them with --dim NAME=VALUE)[/dim]")


plot_app = typer.Typer(help="Pictures of runs.", no_args_is_help=True)
app.add_typer(plot_app, name="plot")


@plot_app.command("attention")
def plot_attention_cmd(
    run_dir: Annotated[str, typer.Argument(help="A run of an attention model (e.g. models/dates_attention.yaml).")],
    text: Annotated[str, typer.Option("--text", help="Source text to translate and show.")],
    output: Annotated[str, typer.Option("-o", "--output", help="PNG (or SVG/PDF) file to write.")] = "attention.png",
    checkpoint: CheckpointOpt = "best",
):
    """Attention weights (source positions × generated positions) while translating --text."""
    from runtime.checkpoint import check_checkpoint
    from runtime.plots import plot_attention

    with user_errors():
        check_checkpoint(checkpoint, "--checkpoint")
        _not_empty(output=output)
        path = plot_attention(run_dir, text, output, checkpoint=checkpoint)
    err.print(f"wrote {escape(path)}", soft_wrap=True)
    print(path)


@plot_app.command("curves")
def plot_curves(
    run_dirs: Annotated[list[str], typer.Argument(help="One or more run directories.")],
    output: Annotated[str, typer.Option("-o", "--output", help="PNG (or SVG/PDF) file to write.")] = "curves.png",
):
    """Training and validation loss and metrics per epoch; several runs overlaid."""
    from runtime.plots import plot_curves as draw

    with user_errors():
        _not_empty(output=output)
        path = draw(run_dirs, output, warn=lambda w: err.print(f"[bold yellow]warning:[/bold yellow] {escape(w)}",
                                                                soft_wrap=True))
    err.print(f"wrote {escape(path)}", soft_wrap=True)
    print(path)


@plot_app.command("samples")
def plot_samples(
    run_dir: Annotated[str, typer.Argument(help="A run directory of a generator (VAE, GAN) or an auto-encoder (DAE, CAE).")],
    output: Annotated[str, typer.Option("-o", "--output", help="PNG (or SVG/PDF) file to write.")] = "samples.png",
    count: Annotated[Optional[int], typer.Option("--count", help="Digits to draw (default 64), or to reconstruct (default 16).", min=1,
                                                 max=100_000)] = None,  # runtime.samples' MAX_SAMPLES
    seed: Annotated[int, typer.Option("--seed", help="Seed of the generator's noise, or of the examples and their corruption.", min=0,
                                      max=MAX_SEED)] = 0,
    checkpoint: CheckpointOpt = "best",
    corrupt: Annotated[Optional[float], typer.Option("--corrupt", help="Masking noise level for the triples (default: the spec's own noise, else 0.25).", min=0.0, max=1.0)] = None,
):
    """A grid of generated digits (generators), or input / corrupted / reconstructed triples (auto-encoders)."""
    from runtime.checkpoint import check_checkpoint
    from runtime.samples import plot_samples as draw

    with user_errors():
        check_checkpoint(checkpoint, "--checkpoint")
        _not_empty(output=output)
        path = draw(run_dir, output, count, seed, checkpoint, None if corrupt is None else [("masking_noise", corrupt)])
    err.print(f"wrote {escape(path)}", soft_wrap=True)
    print(path)


def main():
    """The `flowgrad` command. A mistyped flag or a value out of its range ends with one
    located line and a hint, like every other user error, not click's usage panel."""
    try:  # typer 0.2x carries its own click
        from typer._click.exceptions import ClickException, NoSuchOption
    except ImportError:
        from click.exceptions import ClickException, NoSuchOption

    # Output whose encoding lacks a character of a spec's names or doc (a terminal or a redirect in a
    # Latin-1 locale, and 'Réseau 中文') ended check and summary in a UnicodeEncodeError traceback:
    # such characters are written as escapes instead.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    try:
        # onnxruntime's process-wide logger warns outside any session (providers it cannot load);
        # the command's own sessions are quiet already. Asked for here, not on import: a program
        # using the API keeps its own onnxruntime logging; and set when the first session is made:
        # importing onnxruntime here (about 50 ms) slowed --help and the verbs that run no model,
        # and without onnxruntime ended every verb in a traceback.
        from runtime.ortlog import quiet_default_logger

        quiet_default_logger()
        code = app(standalone_mode=False)
    except ClickException as e:
        if not e.format_message().strip():  # no_args_is_help: the help is printed, nothing went wrong to say
            sys.exit(e.exit_code)
        where = getattr(getattr(e, "ctx", None), "command_path", None) or "flowgrad"
        err.print(f"[bold red]error:[/bold red] {escape(e.format_message())}", soft_wrap=True)
        hint = f"see {where} --help"
        if isinstance(e, NoSuchOption) and e.option_name == "--debug":  # (the verb's --help does not list it)
            prog, _, verb = where.partition(" ")
            hint = f"--debug goes before the verb: {prog} --debug {verb or 'VERB'} ..."
        elif isinstance(e, NoSuchOption) and e.option_name == "--version":
            hint = f"--version goes before the verb: {where.partition(' ')[0]} --version"
        err.print(f"[dim]  hint: {escape(hint)}[/dim]", soft_wrap=True)
        sys.exit(e.exit_code)
    except typer.Abort:
        err.print("[bold red]error:[/bold red] aborted")
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C while typer builds the command from its functions, before
        sys.exit(130)  # typer's main, which ends an interrupted command with 130 and no words, runs
    except OSError as e:
        # Output sent to a full disk (> /dev/full, a quota) ended every verb in a traceback of the
        # print that failed. Files flowgrad writes say which file; this is the output itself.
        if _state["debug"] or e.filename or e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO):
            raise
        with contextlib.suppress(OSError, ValueError, AttributeError):  # what is still buffered is lost:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        with contextlib.suppress(OSError):
            err.print(f"[bold red]error:[/bold red] cannot write the output: {escape(e.strerror or str(e))}",
                      soft_wrap=True)
            err.print("[dim]  hint: free some space, or send the output elsewhere[/dim]", soft_wrap=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
