"""flowgrad's command line: check, compile and inspect flow-graph specs."""
from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="flowgrad",
    help="Compile YAML flow-graph specs of neural networks into ONNX training graphs.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
err = Console(stderr=True, highlight=False)
out = Console(highlight=False)

_state = {"debug": False}

SpecArg = Annotated[str, typer.Argument(help="Path of a spec YAML file.", show_default=False)]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a spec value, e.g. --set dims.H=32 (repeatable).", show_default=False),
]
DtypeOpt = Annotated[
    Optional[str], typer.Option("--dtype", help="Float type of the compiled graphs: float32, float64 or float16.")
]


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks for user errors too.")] = False,
):
    _state["debug"] = debug


@contextlib.contextmanager
def user_errors():
    """User mistakes end the command with their located message and exit code 1, never a traceback."""
    from spec.errors import FlowgradError

    try:
        yield
    except FlowgradError as e:
        if _state["debug"]:
            raise
        for line in str(e).splitlines():
            if line.startswith("  hint:"):
                err.print(f"[dim]{line}[/dim]", soft_wrap=True)
            else:
                err.print(f"[bold red]error:[/bold red] {line}", soft_wrap=True)
        raise typer.Exit(1) from None


def _load(path: str, overrides):
    from spec import load_spec

    return load_spec(path, list(overrides or []))


def _check_dtype(dtype):
    from spec.errors import FlowgradError

    if dtype is not None and dtype not in ("float32", "float64", "float16"):
        raise FlowgradError(f"unknown --dtype {dtype!r}", hint="choose float32, float64 or float16")


@app.command()
def check(spec: SpecArg, set: SetOpt = None, dtype: DtypeOpt = None):
    """Validate a spec, infer every shape, and print its nodes and parameters."""
    from compiler.training import check_spec

    with user_errors():
        _check_dtype(dtype)
        s = _load(spec, set)
        low = check_spec(s, dtype)
    table = Table(title=f"{s.name}: nodes", title_justify="left")
    table.add_column("name")
    table.add_column("op")
    table.add_column("shape")
    table.add_column("dtype")
    for a in s.graph:
        for t in a.targets:
            v = low.env.get(t)
            shape = "[" + ", ".join(str(d) for d in v.shape) + "]" if hasattr(v, "shape") else repr(v)
            op = a.expr.func if hasattr(a.expr, "func") else type(a.expr).__name__.lower()
            table.add_row(t, op, shape, getattr(v, "dtype", ""))
    out.print(table)
    ptable = Table(title=f"{s.name}: parameters", title_justify="left")
    for col in ("name", "shape", "init", "kind"):
        ptable.add_column(col)
    total = 0
    for n, p in low.params.items():
        size = 1
        for d in p.shape:
            size *= d
        if p.kind == "param":
            total += size
        ptable.add_row(n, "[" + ", ".join(map(str, p.shape)) + "]", p.init_kind, p.kind if p.trainable or p.kind != "param" else "frozen")
    out.print(ptable)
    out.print(f"{len(low.params)} tensors, {total:,} trainable values; spec OK")


@app.command("compile")
def compile_cmd(
    spec: SpecArg,
    output: Annotated[str, typer.Option("-o", "--output", help="Directory for the ONNX graphs and manifest.json.")] = "build",
    set: SetOpt = None,
    dtype: DtypeOpt = None,
    no_optimize: Annotated[bool, typer.Option("--no-optimize", help="Skip the graph rewrites.")] = False,
):
    """Compile a spec into ONNX graphs: train, eval, infer, grads, apply (+ manifest.json)."""
    from compiler.training import compile_spec

    with user_errors():
        _check_dtype(dtype)
        s = _load(spec, set)
        cm = compile_spec(s, dtype, optimize_graph=not no_optimize)
        written = cm.save(output)
    table = Table(title=f"{s.name} compiled in {cm.compile_seconds:.2f} s", title_justify="left")
    table.add_column("graph")
    table.add_column("nodes", justify="right")
    table.add_column("inputs", justify="right")
    table.add_column("outputs", justify="right")
    table.add_column("file")
    for k, g in cm.graphs.items():
        table.add_row(k, str(g.node_count), str(len(g.inputs)), str(len(g.outputs)), os.path.join(output, f"{k}.onnx"))
    err.print(table)
    for w in written:
        print(w)


@app.command()
def ops(
    as_json: Annotated[bool, typer.Option("--json", help="Print the registry as JSON.")] = False,
):
    """List the op registry: family, inputs, attributes, gradient."""
    from compiler.lower import signature
    from compiler.registry import all_ops

    rows = []
    for name, op in all_ops().items():
        grad = "composite" if op.composite else ("none" if op.nondiff else "yes")
        rows.append({"name": name, "family": op.family, "signature": signature(op), "gradient": grad, "doc": op.doc})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="flowgrad ops", title_justify="left")
    for col in ("family", "signature", "gradient", "doc"):
        table.add_column(col)
    for r in sorted(rows, key=lambda r: (r["family"], r["name"])):
        table.add_row(r["family"], r["signature"], r["gradient"], r["doc"])
    out.print(table)


def main():
    app()


if __name__ == "__main__":
    main()
