"""What check and gradcheck report of a spec, as the dicts `--json` prints: the CLI draws its
tables from them and the Python API (runtime.api's check and gradcheck) returns them. Nothing
here imports onnxruntime: check runs no model."""
from __future__ import annotations

from spec.model import Spec

# gradcheck's status of a parameter whose every probe crossed a kink of the loss (neither ok nor FAIL)
UNCHECKABLE = "not checkable here"


def check_spec_report(s: Spec, dtype: str | None = None):
    """Check `s` as `flowgrad check` does (shapes, names, the data section as written, the
    metrics a train section watches) and return (its lowering, its report)."""
    from compiler.training import check_spec

    from .train import check_data_section, check_watched_metrics

    low = check_spec(s, dtype)
    check_data_section(s)
    # (the names validation would report too: whether there is any comes with the data, at train)
    check_watched_metrics(s, None, validated=True, dtype=dtype)
    return low, check_report(s, low)


def check_report(s: Spec, low) -> dict:
    """What check shows of a checked spec, the rows of its tables as check --json prints them:
    each graph entry's op, shape and type (a compile-time number, which has neither, its value);
    each parameter's shape, init, kind (param, buffer, or frozen: a param with trainable: false)
    and count of values; the count of tensors and of trained values; the warnings."""
    from compiler.visual import op_word

    nodes = []
    for a in s.graph:
        for t in a.targets:
            v = low.env.get(t)
            op = op_word(a.expr)  # as summary and graph name it: h @ W + b is an add (not 'binop')
            if hasattr(v, "shape"):
                nodes.append({"name": t, "op": op, "shape": list(v.shape), "dtype": str(v.dtype)})
            else:
                value = v if isinstance(v, (bool, int, float)) else repr(v)
                nodes.append({"name": t, "op": op, "shape": None, "dtype": None, "value": value})
    params = []
    for n, p in low.params.items():
        count = 1
        for d in p.shape:
            count *= d
        kind = p.kind if p.trainable or p.kind != "param" else "frozen"
        params.append({"name": n, "shape": list(p.shape), "init": p.init_kind, "kind": kind, "count": count})
    return {"name": s.name, "doc": s.doc,
            # the float type the training step computes in (a mixed-precision step's half type) and the
            # one the parameters and optimizer state are kept in
            "step_dtype": low.graph.float_dtype, "master_dtype": low.stored_dtype,
            "nodes": nodes, "params": params, "tensors": len(params),
            # a frozen parameter (trainable: false) is not trained, nor is a buffer
            "trainable_values": sum(p["count"] for p in params if p["kind"] == "param"),
            "warnings": [{"message": w.one_line(), "hint": w.hint} for w in low.warnings]}


def gradcheck_report(s: Spec, seed: int, tolerance: float) -> dict:
    """gradcheck's rows, as its table shows them and --json prints them: per objective and
    parameter, the worst relative error and its status: ok up to `tolerance`, FAIL above it (an
    infinite error too: a NaN or infinite gradient), 'not checkable here' where every probe
    crossed a kink (gradcheck_spec's NaN; no error). The check passes without a FAIL."""
    from compiler.gradcheck import gradcheck_spec

    checks = []
    for obj, errs in gradcheck_spec(s, seed).items():
        for p, e in errs.items():
            status = UNCHECKABLE if e != e else "ok" if e <= tolerance else "FAIL"
            checks.append({"objective": obj, "parameter": p, "relative_error": None if e != e else e, "status": status})
    checked = [c["relative_error"] for c in checks if c["status"] != UNCHECKABLE]
    return {"name": s.name, "seed": seed, "tolerance": tolerance,
            "passed": all(c["status"] != "FAIL" for c in checks),
            "worst_relative_error": max(checked) if checked else None, "checks": checks}
