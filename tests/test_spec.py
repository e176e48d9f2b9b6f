"""spec/: loading, locations, overrides, schema errors, sizes, names, hostile YAML, docs."""
import json
import time
from pathlib import Path

import pytest

from spec import Loc, MultiError, Spec, SpecError, load_spec, spec_from_dict, spec_from_text
from spec.errors import FlowgradError
from spec.loader import LocList, LocMap, load_yaml, locate, schema, schema_default
from spec.model import Call, Name

HERE = Path(__file__).parent

MLP = """\
flowgrad: 1
name: mlp
doc: Rectifier MLP with dropout, softmax output.
dims: {D: 64, H: 256, K: 10}
inputs:
  x: {shape: [N, D]}
  y: {shape: [N], dtype: int64}
params:
  W1: {shape: [D, H], init: glorot_uniform}
  b1: {shape: [H], init: zeros}
  W2: {shape: [H, K], init: {normal: {std: 0.01}}}
  b2: {shape: [K], init: zeros}
graph:
  h: dropout(relu(x @ W1 + b1), rate=0.5)
  logits: h @ W2 + b2
  i, f: split(logits, 2, axis=-1)
  d: dense(h, K, act=relu)
outputs:
  probs: softmax(logits)
  label: argmax(logits, axis=-1)
loss: cross_entropy(logits, y) + 1e-4 * l2(W1, W2)
metrics:
  accuracy: mean(argmax(logits, axis=-1) == y)
train:
  data: {dataset: digits, valid: 0.2}
  optimizer: {sgd: {lr: 0.1, momentum: 0.9}}
  batch_size: 64
  epochs: 30
"""

MINI = "flowgrad: 1\nname: m\ndims: {D: 4}\ninputs:\n  x: {shape: [N, D]}\n"


def load(text, overrides=(), path="models/t.yaml") -> Spec:
    return spec_from_text(text, path, overrides)


def error(text, overrides=(), path="models/t.yaml") -> SpecError:
    with pytest.raises(SpecError) as info:
        load(text, overrides, path)
    return info.value


def errors(text, overrides=()) -> list:
    e = error(text, overrides)
    return e.errors if isinstance(e, MultiError) else [e]


def line_col(e) -> str:
    return f"{e.loc.line}:{e.loc.col}"


# ---------------------------------------------------------------- the example
def test_mlp_example_loads():
    s = load(MLP, path="models/mlp.yaml")
    assert (s.version, s.name, s.doc) == (1, "mlp", "Rectifier MLP with dropout, softmax output.")
    assert s.dims == {"D": 64, "H": 256, "K": 10}
    assert s.inputs["x"].shape == ["N", 64] and s.inputs["x"].dtype == "float32"
    assert s.inputs["y"].shape == ["N"] and s.inputs["y"].dtype == "int64"
    assert s.params["W1"].shape == [64, 256] and s.params["W1"].init.kind == "glorot_uniform"
    assert s.params["W1"].init.args == {"gain": 1.0}
    assert s.params["W2"].init.kind == "normal" and s.params["W2"].init.args == {"mean": 0, "std": 0.01}
    assert s.params["b1"].init.kind == "zeros" and s.params["b1"].trainable
    assert [a.targets for a in s.graph] == [["h"], ["logits"], ["i", "f"], ["d"]]
    assert [a.targets for a in s.outputs] == [["probs"], ["label"]]
    assert [a.targets for a in s.metrics] == [["accuracy"]]
    assert s.loss.targets == ["loss"] and isinstance(s.loss.expr.left, Call)
    assert s.train == {"data": {"dataset": "digits", "valid": 0.2},
                       "optimizer": {"sgd": {"lr": 0.1, "momentum": 0.9}}, "batch_size": 64, "epochs": 30}
    assert type(s.train) is dict and type(s.train["optimizer"]) is dict
    assert s.blocks == {}


def test_mlp_locations():
    s = load(MLP, path="models/mlp.yaml")
    assert str(s.inputs["y"].loc) == "models/mlp.yaml:7:3"
    assert str(s.params["W2"].loc) == "models/mlp.yaml:11:3"
    assert str(s.params["W2"].init.loc) == "models/mlp.yaml:11:29"
    assert str(s.dim_locs["H"]) == "models/mlp.yaml:4:15"
    unpack = s.graph[2]
    assert unpack.loc == Loc("models/mlp.yaml", 16, 3)
    assert unpack.target_locs == [Loc("models/mlp.yaml", 16, 3), Loc("models/mlp.yaml", 16, 6)]
    assert str(s.graph[0].expr.loc) == "models/mlp.yaml:14:6"
    assert str(s.graph[0].expr.args[0].loc) == "models/mlp.yaml:14:14"  # relu(...)
    assert str(s.loss.loc) == "models/mlp.yaml:21:1"
    assert str(s.locate("train", "optimizer", "sgd", "lr")) == "models/mlp.yaml:26:25"
    assert str(s.locate("train", "nope")) == "models/mlp.yaml:25:3"  # deepest part that exists


def test_located_tree_api():
    t = load_yaml("a:\n  b: [1, 'two', {c: 3}]\n  d: x\n", "f.yaml")
    assert isinstance(t, LocMap) and isinstance(t["a"]["b"], LocList)
    assert t == {"a": {"b": [1, "two", {"c": 3}], "d": "x"}}
    assert t.key_locs["a"] == Loc("f.yaml", 1, 1)
    a = t["a"]
    assert a.loc == Loc("f.yaml", 2, 3)
    assert a.key_locs["d"] == Loc("f.yaml", 3, 3) and a.value_locs["d"] == Loc("f.yaml", 3, 6)
    assert a["b"].item_locs == [Loc("f.yaml", 2, 7), Loc("f.yaml", 2, 10), Loc("f.yaml", 2, 17)]
    assert a["b"].item_srcs[1].quoted and a["b"].item_srcs[0] is None
    assert locate(t, ["a", "b", 2, "c"], "f.yaml") == Loc("f.yaml", 2, 21)
    assert locate(t, [], "f.yaml") == Loc("f.yaml", 1, 1)


def test_spec_from_dict_and_load_spec(tmp_path):
    d = {"flowgrad": 1, "name": "m", "dims": {"D": 4}, "inputs": {"x": {"shape": ["N", "D"]}},
         "graph": {"h": "relu(x)", "i, j": "split(h, 2, axis=-1)"}}
    s = spec_from_dict(d)
    assert s.path == "<dict>" and [a.targets for a in s.graph] == [["h"], ["i", "j"]]
    assert s.graph[0].expr.loc.file == "<dict>"
    d["graph"]["h"] = "relu(x) % 2"
    with pytest.raises(SpecError) as info:
        spec_from_dict(d, name="gen")
    assert str(info.value).startswith("gen:") and "'%'" in str(info.value)
    p = tmp_path / "mlp.yaml"
    p.write_text(MLP)
    assert load_spec(str(p), ["dims.H=32"]).params["W1"].shape == [64, 32]


def test_spec_from_dict_keeps_strings_that_look_like_exponent_floats():
    """The dict went through safe_dump, which wrote the string '1e5' unquoted (YAML 1.1 wants a dot in a
    float), and the spec, which reads 1e5 as a number, refused the name as 'the number 100000.0'."""
    d = {"flowgrad": 1, "name": "1e5", "doc": "-1.5E+3", "inputs": {"x": {"shape": ["N", 3]}}, "loss": "mean(x)"}
    s = spec_from_dict(d)
    assert (s.name, s.doc) == ("1e5", "-1.5E+3")


def test_load_spec_file_problems(tmp_path):
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(str(tmp_path / "missing.yaml"))
    with pytest.raises(SpecError, match="directory"):
        load_spec(str(tmp_path))
    p = tmp_path / "latin1.yaml"
    p.write_bytes(b"flowgrad: 1\nname: caf\xe9\n")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec(str(p))
    # at the byte (it said column 1), with old Mac line ends too (it said line 1)
    for ends in ("\n", "\r\n", "\r"):
        p.write_bytes(f"flowgrad: 1{ends}name: m{ends}doc: caf\xe9 ".encode("utf-8") + b"\xe9t\xe9" + ends.encode())
        with pytest.raises(SpecError) as info:
            load_spec(str(p))
        assert info.value.message == "the file is not UTF-8 text (byte 0xe9)" and line_col(info.value) == "3:11", ends
    p.write_text("flowgrad: 1\nname: caf\xe9\n", encoding="utf-16")
    with pytest.raises(SpecError, match="the file is UTF-16 text, not UTF-8"):
        load_spec(str(p))
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * 5_000_001)
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match="too large"):
        load_spec(str(big))
    assert time.perf_counter() - t0 < 0.5


def test_errors_are_one_line_with_a_hint_line():
    e = error(MLP.replace("optimizer:", "optimiser:"))
    assert str(e) == ("models/t.yaml:26:3: unknown key 'optimiser' in train\n"
                      "  hint: did you mean 'optimizer'?")
    assert isinstance(e, FlowgradError)


# ---------------------------------------------------------------- overrides
def test_overrides_change_values_before_validation():
    s = load(MLP, ["dims.H=32", "train.optimizer.sgd.lr=1e-3", "train.epochs=3",
                   "graph.h=relu(x @ W1 + b1)", "train.optimizer={adam: {lr: 0.001}}"])
    assert s.dims["H"] == 32 and s.params["W1"].shape == [64, 32] and s.params["W2"].shape == [32, 10]
    assert s.train["epochs"] == 3
    assert s.train["optimizer"] == {"adam": {"lr": 0.001}}
    assert s.graph[0].expr.func == "relu"
    assert s.graph[0].expr.loc == Loc("--set graph.h=relu(x @ W1 + b1)", 1, 15)
    s = load(MLP, ["train.optimizer.sgd.lr=1e-3"])
    assert s.train["optimizer"]["sgd"]["lr"] == 0.001
    s = load(MLP, ["train.optimizer.sgd.nesterov=true", "inputs.x.shape.1=32", "dims.D=32"])
    assert s.train["optimizer"]["sgd"]["nesterov"] is True and s.inputs["x"].shape == ["N", 32]


def test_override_errors_say_where_the_value_came_from():
    e = error(MLP, ["dims.H=0"])
    assert str(e.loc) == "--set dims.H=0:1:14" and e.message == "dims.H must be >= 1, not 0"
    e = error(MLP, ["train.epoch=3"])
    assert e.message == "unknown key 'epoch' in train" and e.hint == "did you mean 'epochs'?"
    assert str(e.loc) == "--set train.epoch=3:1:13"
    e = error(MLP, ["tran.epochs=3"])
    assert "has no key 'tran'" in e.message and e.hint == "did you mean 'train'?"
    assert e.loc == Loc("--set tran.epochs=3", 1, 7)
    e = error(MLP, ["train.optimizer.adam.lr=0.1"])
    assert "train.optimizer has no key 'adam'" in e.message and "sgd" in e.hint
    e = error(MLP, ["graph.h=relu(x) % 2"])
    assert e.loc == Loc("--set graph.h=relu(x) % 2", 1, 23)
    e = error(MLP, ["train.batch_size=big"])
    assert e.message == "train.batch_size must be an integer, not the string 'big'"
    e = error(MLP, ["dims.Hx=32"])  # a dim only the command line defines is a misspelt one: H stayed 256
    assert e.message == "cannot set 'dims.Hx': the spec has no dim 'Hx'" and e.hint == "did you mean 'H'?"
    assert e.loc == Loc("--set dims.Hx=32", 1, 12)
    # a dim the spec uses without defining it is a symbolic size: --set fixes it
    assert load(MINI.replace("[N, D]", "[N, T, D]"), ["dims.T=16"]).inputs["x"].shape == ["N", 16, 4]
    assert load(MLP, ["dims.M=16", "graph.logits=dense(h, M)"]).dims["M"] == 16  # used by a later --set
    # a word of the spec that no size or expression can mean as a dim does not make one used: a
    # word of the doc, an op's or a keyword's name, the dataset's or an init's was let through,
    # and the misspelt dim set nothing
    for word in ("Rectifier", "softmax", "rate", "digits", "glorot_uniform", "momentum"):
        e = error(MLP, [f"dims.{word}=3"])
        assert e.message == f"cannot set 'dims.{word}': the spec has no dim '{word}'", word
        assert e.loc == Loc(f"--set dims.{word}=3", 1, 12) and e.hint
    assert load(MLP, ["dims.N=32"]).inputs["x"].shape == [32, 64]  # a symbolic size: fixed
    # a key the spec leaves out is added whole: the hint said only "expected one of: dataset, valid"
    e = error(MLP, ["train.data.options.labelled=40"])
    assert e.message == "cannot set 'train.data.options.labelled': train.data has no key 'options'"
    assert e.hint == "expected one of: dataset, valid; or, to add options, set it whole: " \
                     "--set 'train.data.options={labelled: 40}'"
    assert load(MLP, ["train.data.options={labelled: 40}"]).train["data"]["options"] == {"labelled": 40}
    assert error(MLP, ["dims.k=3"]).hint == "did you mean 'K'?"  # (it listed D, H, K: no name is close by ratio)
    blocks = MINI + "blocks:\n  B:\n    in: [v]\n    params:\n      W: {shape: [D, M], init: zeros}\n" \
                    "    graph:\n      o: v @ W\n    out: [o]\n"
    assert load(blocks, ["dims.M=3"]).dims["M"] == 3  # a size of a block's parameter
    for bad in ["dims.H", "dims..H=3", "name.x=3"]:
        with pytest.raises(SpecError):
            load(MLP, [bad])


# ---------------------------------------------------------------- schema
def test_schema_errors_are_all_reported_sorted():
    text = MLP.replace("batch_size: 64", "batch_size: 0").replace("dtype: int64", "dtype: int46") \
              .replace("dataset: digits", "dataset: digitz").replace("lr: 0.1", "lr: 0")
    errs = errors(text)
    assert [line_col(e) for e in errs] == sorted((line_col(e) for e in errs), key=lambda s: tuple(map(int, s.split(":"))))
    msgs = {line_col(e): (e.message, e.hint) for e in errs}
    assert msgs["7:26"][0].startswith("inputs.y.dtype must be one of") and "int64" in msgs["7:26"][1]
    assert msgs["25:19"][1] == "did you mean 'digits'?"
    assert msgs["26:25"][0] == "train.optimizer.sgd.lr must be > 0, not 0"
    assert msgs["27:15"][0] == "train.batch_size must be >= 1, not 0"


def test_missing_keys_are_located_at_the_parent():
    e = error(MLP.replace("{sgd: {lr: 0.1, momentum: 0.9}}", "{sgd: {momentum: 0.9}}"))
    assert e.message == "missing required key 'lr' in train.optimizer.sgd" and line_col(e) == "26:20"
    e = error(MLP.replace("name: mlp\n", ""))
    assert e.message == "missing required key 'name' at the top level" and line_col(e) == "1:1"
    e = error(MINI.replace("  x: {shape: [N, D]}", "  x: {dtype: int64}"))
    assert e.message == "missing required key 'shape' in inputs.x" and line_col(e) == "5:6"


@pytest.mark.parametrize("old,new,message,hint", [
    ("optimizer: {sgd: {lr: 0.1, momentum: 0.9}}", "optimizer: {sgd: {lr: 0.1}, adam: {lr: 0.1}}",
     "train.optimizer takes exactly one key, got 'sgd', 'adam'", "optimizer: {sgd:"),
    ("optimizer: {sgd: {lr: 0.1, momentum: 0.9}}", "optimizer: {sdg: {lr: 0.1}}",
     "unknown key 'sdg' in train.optimizer", "did you mean 'sgd'?"),
    ("momentum: 0.9", "momentun: 0.9", "unknown key 'momentun' in train.optimizer.sgd", "did you mean 'momentum'?"),
    ("data: {dataset: digits, valid: 0.2}", "data: {dataset: digits, path: d.npz}",
     "train.data takes only one of 'dataset' or 'path'", None),
    ("data: {dataset: digits, valid: 0.2}", "data: {valid: 0.2}", "train.data needs 'dataset' or 'path'", None),
    ("valid: 0.2", "valid: 1.5", "train.data.valid must be < 1, not 1.5", None),
    ("init: glorot_uniform", "init: {normal: {sdt: 1}}", "unknown key 'sdt' in params.W1.init.normal",
     "did you mean 'std'?"),
    ("init: glorot_uniform", "init: {glorot_uniform: {}, zeros: {}}",
     "params.W1.init takes exactly one key, got 'glorot_uniform', 'zeros'", "init: glorot_uniform"),
    ("init: glorot_uniform", "init: 3", "params.W1.init must be a string or a mapping, not the number 3", "init:"),
    ("loss: cross_entropy(logits, y) + 1e-4 * l2(W1, W2)", "loss: [a, b]",
     "loss must be a string or a number or true or false, not a list", "quote"),
    ("name: mlp", "name: my/model", "name the string 'my/model' has characters that are not allowed", "letters"),
    ("epochs: 30", "epochs: 30\n  lr_schedule: {step: {every: 0}}", "train.lr_schedule.step.every must be >= 1, not 0",
     None),
    ("epochs: 30", "epochs: 30\n  lr_schedule: {step: {every: 100, gamma: 2}}",  # (a 'decay' that doubled lr)
     "train.lr_schedule.step.gamma must be <= 1, not 2", None),
    ("epochs: 30", "epochs: 30\n  lr_schedule: {step: {gamma: 0.5}}",  # (every was required by the schema alone)
     "train.lr_schedule.step takes every (optimizer steps) or every_epochs", "every_epochs: 10"),
    ("epochs: 30", "epochs: 30\n  lr_schedule: {step: {every: 100, every_epochs: 2}}",
     "train.lr_schedule.step takes one of every and every_epochs, got both", "StepLR stepped per epoch"),
    ("epochs: 30", "epochs: 30\n  early_stopping: {metric: valid_loss, mode: maximum}",
     "train.early_stopping.mode must be one of min, max, not the string 'maximum'", None),
    ("epochs: 30", "epochs: 30\n  dtype: 32",  # (a number for a choice of words printed no hint)
     "train.dtype must be one of float32, float64, float16, not the number 32", "expected one of: float32"),
    ("epochs: 30", "epochs: 30\n  objectives: {g: {loss: g_loss, params: []}}",
     "train.objectives.g.params needs at least 1 item(s)", None),
])
def test_schema_messages(old, new, message, hint):
    assert old in MLP
    e = error(MLP.replace(old, new))
    assert e.message == message
    if hint:
        assert hint in e.hint


def test_a_data_path_written_as_a_string_is_told_to_be_a_mapping_once():
    """data: train.npz was told it must be a mapping with the hint 'write a mapping', and besides that
    'train.data takes only one of 'dataset' or 'path'', which it gave neither of (oneOf's required
    branches take any string). It is one error now, whose hint shows a path written as a mapping."""
    errs = errors(MLP.replace("data: {dataset: digits, valid: 0.2}", "data: train.npz"))
    assert [(e.message, e.hint) for e in errs] == [
        ("train.data must be a mapping, not the string 'train.npz'", "write a mapping, e.g. data: {path: data/train.npz, valid: 0.1}")]


def test_a_name_that_starts_with_a_dot_is_told_why_it_is_refused():
    """name: .. (or .hidden, -x) was refused for characters that are not allowed, with the hint to
    use letters, digits, '_', '-' and '.': every character of it was one of those."""
    for name in ("..", ".hidden", "-x"):
        e = error(MLP.replace("name: mlp", f"name: '{name}'"))
        assert "not allowed" in e.message and "not starting with '-' or '.'" in e.hint, e.hint


def test_keys_of_a_mapping_that_takes_none_have_a_hint():
    """An unknown key where the schema allows none (zeros takes no options), or set with --set
    inside an empty mapping, printed its error with no hint."""
    e = error(MLP.replace("b1: {shape: [H], init: zeros}", "b1: {shape: [H], init: {zeros: {scale: 2}}}"))
    assert e.message == "unknown key 'scale' in params.b1.init.zeros" and "takes no keys" in e.hint
    e = error(MLP.replace("b1: {shape: [H], init: zeros}", "b1: {shape: [H], init: {zeros: {}}}"),
              ["params.b1.init.zeros.x.y=1"])
    assert "params.b1.init.zeros has no key 'x'" in e.message
    assert e.hint == "params.b1.init.zeros is empty; or, to add x, set it whole: --set 'params.b1.init.zeros.x={y: 1}'"


def test_version_key():
    e = error(MLP.replace("flowgrad: 1\n", ""))
    assert e.message.startswith("missing required key 'flowgrad'") and "flowgrad: 1" in e.hint
    for bad in ["2", "true", "'1'", "1.0"]:
        e = error(MLP.replace("flowgrad: 1", f"flowgrad: {bad}"))
        assert e.message.startswith("unsupported spec version") and line_col(e) == "1:11"


def test_schema_file_is_valid_and_documented():
    from jsonschema import Draft202012Validator

    s = schema()
    Draft202012Validator.check_schema(s)
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"

    undocumented, open_objects = [], []

    def walk(node, path):
        if isinstance(node, dict):
            for key, child in node.get("properties", {}).items():
                target = child
                if "$ref" in child:
                    target = {**s["$defs"][child["$ref"].split("/")[-1]], **child}
                if not target.get("description"):
                    undocumented.append(path + "." + key)
            if node.get("properties") and node.get("additionalProperties") is not False:
                open_objects.append(path)
            for key, child in node.items():
                walk(child, f"{path}.{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, f"{path}[{i}]")

    walk(s, "")
    assert undocumented == []
    assert open_objects == []


def test_schema_defaults():
    assert schema_default("train", "batch_size") == 32
    assert schema_default("train", "optimizer", "adam", "beta2") == 0.999
    assert schema_default("train", "optimizer", "adam", "eps") == 1e-8
    assert schema_default("params", "W", "init", "normal", "std") == 0.01
    assert schema_default("train", "clip_norm") is None
    with pytest.raises(KeyError):
        schema_default("train", "nope")


def test_docs_schema_md_is_up_to_date():
    from spec.schema_doc import DOC_PATH, generate_schema_markdown

    text = generate_schema_markdown()
    assert DOC_PATH.read_text(encoding="utf-8") == text, "run: python -m spec.schema_doc"
    for path in ["train.optimizer.sgd.lr", "params.<param>.init", "train.lr_schedule.warmup",
                 "blocks.<block>.out", "train.objectives.<objective>.params"]:
        assert f"`{path}`" in text


def test_docs_schema_md_lists_every_key_of_the_schema():
    """train.mixed_precision's keys (compute, init_scale, growth_interval, max_scale) sit in a
    oneOf branch, and the page showed the key as 'type: any' without them."""
    import re

    from spec.loader import schema
    from spec.schema_doc import generate_schema_markdown

    text = generate_schema_markdown()
    headed = set(re.findall(r"^#+ `(?:[^`]*\.)?([^`.]+)`$", text, re.M))
    keys = set()

    def collect(node):
        if isinstance(node, dict):
            keys.update(node.get("properties", {}))
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(schema())
    assert keys - headed == set()
    assert "type: any" not in text
    assert "### `train.mixed_precision.growth_interval`" in text


def test_docs_schema_md_points_at_files_that_exist():
    """It sent readers to DESIGN.md, which the project does not have."""
    import re

    from spec.schema_doc import DOC_PATH

    root = DOC_PATH.parent.parent
    named = set(re.findall(r"\b([\w/.-]+\.md)\b", DOC_PATH.read_text(encoding="utf-8")))
    assert named and [n for n in named if not (root / n).is_file()] == []


# ---------------------------------------------------------------- sizes
@pytest.mark.parametrize("expr,value", [
    ("4*H", 32), ("H//3", 2), ("H/2", 4), ("(H+1)*2", 18), ("H - 1", 7), ("-(-H)", 8), ("2*H//3 + 1", 6),
])
def test_dims_arithmetic(expr, value):
    s = load(f"flowgrad: 1\nname: m\ndims: {{H: 8, G: \"{expr}\"}}\n"
             f"inputs: {{x: {{shape: [N, \"{expr}\", G, 3]}}}}\n"
             f"params: {{W: {{shape: [\"{expr}\", H], init: zeros}}}}\n")
    assert s.dims["G"] == value
    assert s.inputs["x"].shape == ["N", value, value, 3]
    assert s.params["W"].shape == [value, 8]


@pytest.mark.parametrize("expr,message,col", [
    ("H/3", "is not a whole number (8 / 3)", 18),
    ("H**2", "may only use integers, dim names, + - * // / and parentheses", 18),
    ("H % 2", "may only use integers", 18),
    ("f(H)", "may only use integers", 18),
    ("H//0", "division by zero", 18),
    ("2*Hx", "unknown dim 'Hx' in dim 'G'", 20),
    ("H-8", "size 'H-8' (= 0) in dim 'G' is not a positive integer", 17),
    ("H*1000000*1000000", "is too large", 18),
    ("4*", "invalid size '4*' in dim 'G'", 18),
    ("1.5", "may only use integers", 18),
])
def test_dims_arithmetic_errors(expr, message, col):
    e = error(f"flowgrad: 1\nname: m\ndims: {{H: 8, G: \"{expr}\"}}\ninputs: {{x: {{shape: [N]}}}}\n")
    assert message in e.message, e
    assert e.loc.line == 3 and e.loc.col == col, e


def test_dims_order_and_hints():
    e = error("flowgrad: 1\nname: m\ndims: {G: 2*H, H: 8}\ninputs: {x: {shape: [N]}}\n")
    assert e.message == "unknown dim 'H' in dim 'G'" and "defined further down" in e.hint
    e = error("flowgrad: 1\nname: m\ndims: {H: 8}\ninputs: {x: {shape: [N, H+1, T]}}\n"
              "params: {W: {shape: [N, H], init: zeros}}\n")
    assert e.message == "unknown dim 'N' in the shape of parameter 'W'" and "concrete" in e.hint
    e = error("flowgrad: 1\nname: m\ndims: {H: 8}\ninputs: {x: {shape: [N+1]}}\n")
    assert e.message == "unknown dim 'N' in the shape of input 'x'" and "stand alone" in e.hint
    assert load("flowgrad: 1\nname: m\ndims: {H: 8.0}\ninputs: {x: {shape: [T, H]}}\n").dims == {"H": 8}
    e = error("flowgrad: 1\nname: m\ndims: {2H: 8}\ninputs: {x: {shape: [T]}}\n")
    assert "not a valid name" in e.message
    # (--set dims.H=H*2 was told to use numbers or the dims D)
    e = error("flowgrad: 1\nname: m\ndims: {D: 4, H: H*2}\ninputs: {x: {shape: [T]}}\n")
    assert e.message == "unknown dim 'H' in dim 'H'" and "cannot be defined by itself" in e.hint


# ---------------------------------------------------------------- names
def test_unpacking_targets():
    s = load(MINI + "graph:\n  i, f, o, g: split(x, 4, axis=-1)\n  'a,b': split(x, 2)\n")
    assert s.graph[0].targets == ["i", "f", "o", "g"]
    assert [loc.col for loc in s.graph[0].target_locs] == [3, 6, 9, 12]
    assert s.graph[1].targets == ["a", "b"] and [loc.col for loc in s.graph[1].target_locs] == [4, 6]


@pytest.mark.parametrize("key,message,col", [
    ("a b", "target name 'a b' is not a valid name", 3),
    ("a, 1x", "target name '1x' is not a valid name", 6),
    ("a,", "empty target in 'a,'", 5),
    ("__x__", "target name '__x__' is not allowed", 3),
    ("lambda", "target name 'lambda' is a Python keyword", 3),
    ("a, b, a", "target 'a' appears twice in 'a, b, a'", 9),
    ("h.W", "target name 'h.W' is not a valid name", 3),
])
def test_bad_targets(key, message, col):
    e = error(MINI + f"graph:\n  {key}: relu(x)\n")
    assert e.message == message and e.loc == Loc("models/t.yaml", 7, col)


def test_names_defined_twice_are_reported_at_the_second_definition():
    text = MINI + ("params: {D: {shape: [2], init: zeros}}\n"
                   "graph:\n  h: relu(x)\n  x: h\n  a, h: split(x, 2)\n  loss: h\n"
                   "loss: mean(h)\n")
    errs = errors(text)
    got = [(line_col(e), e.message) for e in errs]
    assert got == [
        ("6:10", "'D' is already defined as a dim at models/t.yaml:3:8"),
        ("9:3", "'x' is already defined as an input at models/t.yaml:5:3"),
        ("10:6", "'h' is already defined as a graph value at models/t.yaml:8:3"),
        ("12:1", "'loss' is already defined as a graph value at models/t.yaml:11:3"),
    ]


def test_outputs_may_share_names_with_graph_values():
    s = load(MINI + "graph:\n  logits: relu(x)\noutputs:\n  logits: logits\nmetrics:\n  m: mean(logits)\n")
    assert s.outputs[0].targets == ["logits"] and isinstance(s.outputs[0].expr, Name)


def test_blocks():
    s = load("""\
flowgrad: 1
name: lm
dims: {V: 50, E: 16, H: 32}
inputs:
  tokens: {shape: [N, T], dtype: int64}
blocks:
  lstm_step:
    in: [x_t, h, c]
    params:
      W: {shape: [E, 4*H], init: glorot_uniform}
      U: {shape: [H, 4*H], init: orthogonal}
      b: {shape: [4*H], init: zeros, trainable: false, seed: 3}
    graph:
      i, f, o, g: split(x_t @ W + h @ U + b, 4, axis=-1)
      c2: sigmoid(f) * c + sigmoid(i) * tanh(g)
      h2: sigmoid(o) * tanh(c2)
    out: [h2, c2]
graph:
  e: embedding(tokens, V, E)
  hs, cs: scan(lstm_step, over=e, init=[zeros(N, H), zeros(N, H)], axis=1)
""")
    b = s.blocks["lstm_step"]
    assert b.inputs == ["x_t", "h", "c"] and b.outputs == ["h2", "c2"]
    assert b.params["W"].shape == [16, 128] and b.params["U"].init.kind == "orthogonal"
    assert b.params["b"].trainable is False and b.params["b"].seed == 3
    assert [a.targets for a in b.graph] == [["i", "f", "o", "g"], ["c2"], ["h2"]]
    assert b.loc == Loc("<string>", 7, 3) or b.loc.line == 7
    assert s.inputs["tokens"].shape == ["N", "T"]
    scan = s.graph[1].expr
    assert scan.func == "scan" and scan.args[0].id == "lstm_step"


def test_block_names_are_checked():
    base = ("flowgrad: 1\nname: m\ninputs: {x: {shape: [N]}}\nblocks:\n  step:\n"
            "    in: [x_t, h]\n    params: {h: {shape: [2], init: zeros}}\n"
            "    graph: {x_t: h}\n    out: [x_t]\n")
    errs = errors(base)
    assert [(line_col(e), e.message) for e in errs] == [
        ("7:14", "'h' is already defined as a block input at models/t.yaml:6:15"),
        ("8:13", "'x_t' is already defined as a block input at models/t.yaml:6:10"),
    ]
    e = error(base.replace("  step:", "  x:"))
    assert "'x' is already defined as an input" in str(e)


def test_train_cross_checks():
    gan = MLP.replace("  epochs: 30\n", """\
  epochs: 30
  objectives:
    discriminator: {loss: d_loss, params: "D.*", optimizer: {adam: {lr: 2.0e-4, beta1: 0.5}}}
    generator:     {loss: g_loss, params: ["G.*"], optimizer: {adam: {lr: 2e-4, beta1: 0.5}}}
  schedule: [discriminator, generator]
""")
    s = load(gan)
    assert s.train["objectives"]["generator"]["optimizer"]["adam"]["lr"] == 2e-4
    e = error(gan.replace("schedule: [discriminator, generator]", "schedule: [discriminator, generater]"))
    assert e.message == "unknown objective 'generater' in train.schedule" and e.hint == "did you mean 'generator'?"
    e = error(MLP + "  schedule: [a]\n")
    assert "train.objectives is missing" in e.message
    e = error(MLP + "  lr_schedule: {step: {every: 3}, cosine: {}, warmup: 10}\n")
    assert e.message == "train.lr_schedule takes one schedule, got step, cosine"
    assert load(MLP + "  lr_schedule: {cosine: {min_lr: 1e-5}, warmup: 10}\n").train["lr_schedule"]["warmup"] == 10


def test_init_checks():
    e = error(MINI + "params: {W: {shape: [D], init: constant}}\n")
    assert "needs a value" in e.message and "{constant: {value:" in e.hint
    e = error(MINI + "params: {W: {shape: [D], init: {uniform: {low: 1, high: 0}}}}\n")
    assert "low < high" in e.message
    s = load(MINI + "params:\n  W: {shape: [D], init: {constant: {value: 0.5}}}\n"
                    "  V: {shape: [], init: {uniform: }}\n  U: {shape: [D, D], init: {he_normal: {gain: 2}}}\n")
    assert s.params["W"].init.args == {"value": 0.5}
    assert s.params["V"].shape == [] and s.params["V"].init.args == {"low": -0.05, "high": 0.05}
    assert s.params["U"].init.args == {"gain": 2}


# ---------------------------------------------------------------- YAML
def test_yaml_syntax_errors_are_located():
    e = error(MINI + "graph:\n  h: relu(x\n   oops: 1\n")
    assert e.message.startswith("invalid YAML") and e.loc.line == 8 and e.hint
    e = error("flowgrad: 1\nname: m\n\tinputs: {}\n")
    assert e.message.startswith("invalid YAML") and e.loc.line == 3 and "tab" in e.hint
    e = error(MINI + "---\nflowgrad: 1\n")
    assert "one YAML document" in e.hint
    e = error(MINI + "graph: {h: *nope}\n")
    assert "undefined alias" in e.message


def test_a_tab_that_is_not_indentation_is_not_told_to_indent_with_spaces():
    """The YAML reader refuses a tab after a value (unseen in an editor), after a key's ':', inside an
    unquoted value and between a flow list's items too, where the hint said to indent with spaces."""
    for text, col, hint in [(MINI + "doc: a model\t\n", 13, "remove the tab at the end of the line"),
                            (MINI + "doc: a\tmodel\n", 7, "write a space instead of the tab, or quote the value"),
                            (MINI + "doc:\ta model\n", 5, "write a space instead of the tab"),
                            (MINI + "graph: {h: x,\ti: x}\n", 14, "write a space instead of the tab"),
                            (MINI + "graph:\n\th: x\n", 1, "indent with spaces")]:
        e = error(text)
        assert e.message.startswith("invalid YAML: found character '\\t'") and line_col(e).endswith(f":{col}"), text
        assert e.hint.startswith(hint), (text, e.hint)
    e = error(MLP, ["dims.H=\t32"])
    assert e.hint.startswith("write a space instead of the tab"), e.hint


def test_lines_are_counted_as_editors_count_them():
    """YAML reads U+2028, U+2029 and U+0085 (text pasted from web pages and documents) as line breaks,
    which editors do not show: every error below one was reported a line too far down, and one that it
    caused (ending a comment, or a value without quotes) named no reason."""
    for char in ("\u2028", "\u2029", "\x85"):
        e = error(MLP.replace("doc: Rectifier MLP with", f"doc: 'Rectifier MLP{char}with").replace(
            "output.", "output.'").replace("batch_size: 64", "batch_size: 0"))
        assert e.message.startswith("train.batch_size must be") and line_col(e) == "27:15", repr(char)
    e = error(MINI + "# pasted\u2028 text\ndoc: m\n")
    assert line_col(e) == "6:11" and e.hint.startswith("line 6 holds the invisible character U+2028 (LINE SEPARATOR)")
    with pytest.raises(SpecError) as info:
        load_yaml("\ufeffdoc: a\u2028b\n", "f.yaml")
    assert info.value.hint.startswith("line 1 holds the invisible character U+2028")
    with pytest.raises(SpecError) as info:  # (a byte-order mark takes no column)
        load_yaml("\ufeffdoc: a\u2028b: [\n", "f.yaml")
    assert info.value.hint == "the '[' at f.yaml:1:11 is not closed where expected"


def test_an_unclosed_bracket_at_the_end_is_named_where_it_opens():
    """A file ending inside a flow collection with a value missing (`a: [` or `a: {b: `) is
    reported as a flow node, whose mark is the end of the file: the hint named a '{' there."""
    for text, opened in [("a: [\n", "["), ("a: {b: \n", "{"), ("x: [1, {b: \n", "{"), ("a: [1, \n", "[")]:
        with pytest.raises(SpecError) as info:
            load_yaml(text, "f.yaml")
        col = text.rindex(opened) + 1
        assert info.value.hint == f"the '{opened}' at f.yaml:1:{col} is not closed where expected", text


def test_yaml_values_people_write():
    t = load_yaml("a: 1e-4\nb: 2.0e-4\nc: 1_000\nd: 2024-01-01\ne: .5\nf: 1e3\ng: -1E-2\nh: '1e-4'\n", "f")
    assert t == {"a": 1e-4, "b": 2e-4, "c": 1000, "d": "2024-01-01", "e": 0.5, "f": 1000.0, "g": -0.01,
                 "h": "1e-4"}
    t = load_yaml("base: &b {lr: 0.1, momentum: 0.9}\nsgd:\n  <<: *b\n  lr: 0.5\n", "f")
    assert t["sgd"] == {"lr": 0.5, "momentum": 0.9}


def test_yaml_numbers_that_are_not_what_they_look_like_are_errors():
    # YAML 1.1 reads a leading zero as octal (batch_size: 064 is 52) and ':' as base 60 (1:30 is 90)
    e = error(MLP.replace("batch_size: 64", "batch_size: 064"))
    assert e.message == "'064' is read as the octal number 52: a leading zero makes YAML read base 8"
    assert e.hint == "write 64 without the leading zero" and line_col(e) == "27:15"
    e = error(MLP.replace("dims: {D: 64", "dims: {D: 1:04"))
    assert e.message == "'1:04' is read as the base-60 number 64" and line_col(e) == "4:11"
    e = error(MLP, ["dims.H=040"])
    assert e.loc == Loc("--set dims.H=040", 1, 14)
    t = load_yaml("a: 0\nb: 00\nc: 07\nd: '010'\ne: 0x10\nf: 10:30 x\n", "f")  # same in base 8 and 10, or text
    assert t == {"a": 0, "b": 0, "c": 7, "d": "010", "e": 16, "f": "10:30 x"}


def test_non_finite_numbers_are_errors():
    # a nan gain or l2 went through to the parameters or the update; only lr was checked, at the optimizer
    for old, new, where, lc in [("lr: 0.1", "lr: .nan", "train.optimizer.sgd.lr", "26:25"),
                                ("batch_size: 64", "batch_size: 64\n  l2: .inf", "train.l2", "28:7"),
                                ("init: glorot_uniform", "init: {glorot_uniform: {gain: .nan}}", "params.W1.init.glorot_uniform.gain", "9:53")]:
        e = error(MLP.replace(old, new, 1))
        assert e.message in (f"{where} must be a finite number, not nan", f"{where} must be a finite number, not inf")
        assert line_col(e) == lc, (where, line_col(e))
    e = error(MLP, ["train.optimizer.sgd.weight_decay=-.inf"])
    assert e.message == "train.optimizer.sgd.weight_decay must be >= 0, not -inf"  # one message per value


def test_duplicate_keys_are_errors():
    e = error(MLP.replace("  b1: {shape: [H], init: zeros}", "  b1: {shape: [H], init: zeros}\n  b1: {shape: [H], init: ones}"))
    assert e.message == "duplicate key 'b1' (first defined at models/t.yaml:10:3)" and line_col(e) == "11:3"
    e = error(MINI + "graph: {h: x, h: x}\n")
    assert e.message.startswith("duplicate key 'h'") and line_col(e) == "6:15"


@pytest.mark.parametrize("key,message", [
    ("1", "a key must be a string, got '1' (read as int)"),
    ("true", "a key must be a string, got 'true' (read as bool)"),
    ("~", "a key must be a string, got '~' (read as NoneType)"),
    ("[a, b]", "a key must be a string, not a list"),
    ("? {a: 1}", "a key must be a string, not a mapping"),
])
def test_non_string_keys_are_errors(key, message):
    text = MINI + f"graph:\n  {key}: x\n" if not key.startswith("?") else MINI + f"graph:\n  {key}\n  : x\n"
    e = error(text)
    assert e.message == message and e.loc.line == 7


def test_tags_are_refused():
    for value in ["!!python/object/apply:os.system ['echo hi']", "!!python/name:os.system", "!foo bar",
                  "!!binary aGk=", "!!set {a, b}", "!!omap [a: 1]"]:
        e = error(MINI + f"doc: {value}\n")
        assert "unsupported YAML tag" in e.message and e.loc.line == 6, value
    e = error(MINI + "dims: {D: !!int 'x4'}\n")
    assert e.loc.line == 6


def test_billion_laughs_is_refused_fast():
    lines = ['lol0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 9):
        lines.append(f"lol{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    text = "flowgrad: 1\nname: bomb\n" + "\n".join(lines) + "\n"
    t0 = time.perf_counter()
    e = error(text)
    assert time.perf_counter() - t0 < 0.5
    assert "expand to more than" in e.message and e.hint
    # the same from a file in the suite of bad specs
    with pytest.raises(SpecError, match="expand"):
        load_spec(str(HERE / "bad_specs" / "alias_bomb.yaml"))


def test_alias_limits():
    many = "flowgrad: 1\nname: m\nx: &x 1\nl: [" + ", ".join(["*x"] * 101) + "]\n"
    assert "too many YAML aliases" in error(many).message
    e = error("flowgrad: 1\nname: m\nx: &x [1, *x]\n")
    assert "cycle" in e.message
    chain = "flowgrad: 1\nname: m\na0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 80))
    assert "nest more than" in error(chain).message


def test_deep_nesting_is_refused():
    for text in ["x: " + "[" * 10_000 + "]" * 10_000, "x: " + "{a: " * 5000 + "1" + "}" * 5000,
                 "".join("  " * i + f"k{i}:\n" for i in range(60)) + "  " * 60 + "v: 1\n"]:
        with pytest.raises(SpecError, match="nested more than"):
            load("flowgrad: 1\nname: m\n" + text)


def test_big_text_is_refused():
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match="too large"):
        load("flowgrad: 1\nname: m\n" + "#" * 6_000_000)
    assert time.perf_counter() - t0 < 0.5


def test_control_characters_are_located_as_yaml_counts_lines():
    """A control character's place was counted by \\n alone: with old Mac line ends (\\r) it was on line 1,
    after a byte-order mark a column too far, and in a --set value at the start of the value."""
    for text in ("flowgrad: 1\nname: m\ndoc: 'a\x07'\n", "flowgrad: 1\r\nname: m\r\ndoc: 'a\x07'\r\n",
                 "flowgrad: 1\rname: m\rdoc: 'a\x07'\r"):
        e = error(text)
        assert e.message == "cannot read YAML: character U+0007 is not allowed" and line_col(e) == "3:8", repr(text)
    assert line_col(error("\ufeffdoc: 'a\x07'\n")) == "1:8"
    e = error(MLP, ["doc=ab\x07"])
    assert e.loc == Loc("--set doc=ab\x07", 1, 13)


@pytest.mark.parametrize("text,message", [
    ("", "the spec is empty"),
    ("# only a comment\n", "the spec is empty"),
    ("- a\n- b\n", "a spec must be a YAML mapping of keys, not a list"),
    ("just text\n", "a spec must be a YAML mapping of keys, not the string 'just text'"),
    ("flowgrad: 1\nname: m\ninputs: {x: {shape: [N]}}\ndoc: \"\x07\"\n", "cannot read YAML"),
])
def test_not_a_spec(text, message):
    assert error(text).message.startswith(message)


# ---------------------------------------------------------------- a suite of bad files
BAD = sorted((HERE / "bad_specs").glob("*.yaml"))


@pytest.mark.parametrize("path", BAD, ids=[p.name for p in BAD])
def test_bad_specs(path):
    """Each file starts with '# expect: LINE:COL: message | hint' lines, one per reported error;
    every error carries a hint, and the file records it."""
    expected = [line[len("# expect: "):] for line in path.read_text().splitlines() if line.startswith("# expect: ")]
    assert expected
    with pytest.raises(SpecError) as info:
        load_spec(str(path))
    report = str(info.value)
    for err in getattr(info.value, "errors", [info.value]):
        assert err.hint and err.hint.strip(), f"no hint: {err}"
    for want in expected:
        where_message, _, hint = want.partition(" | ")
        assert hint.strip(), f"{path.name}: record the hint after ' | ' in: {want}"
        assert f"{path}:{where_message}" in report or where_message in report, report
        assert hint in report, report


MODEL_WITH_A_BLOCK = """flowgrad: 1
name: two
dims: {D: 4, H: 8}
inputs:
  x: {shape: [N, D]}
  y: {shape: [N], dtype: int64}
blocks:
  F:
    in: [v]
    graph:
      h: dense(v, H, act=tanh)
    out: [h]
graph:
  a: F(x)
  logits: dense(a, 2)
loss: cross_entropy(logits, y)
train:
  objectives:
    main: {loss: loss, params: "*", optimizer: {adam: {lr: 0.01}}}
"""


@pytest.mark.parametrize("edit, words", [
    (("act=tanh", "act=relu"), "block F's graph entry 'h' is now dense(v, H, act=relu); run trained "
                               "dense(v, H, act=tanh)"),
    (("in: [v]", "in: [v, w]"), "block F is now in [v, w], out [h]; run trained in [v], out [h]"),
    (("dtype: int64}", "dtype: int32}"), "input 'y' is now [N] int32; run trained [N] int64"),
    (("{D: 4, H: 8}", "{D: 4, H: 8, K: 3}"), "dim K (3) is new: run trained without it"),
    (("  logits: dense(a, 2)\n", "  logits: dense(a, 2)\n  extra: a * 2\n"),
     "graph entry 'extra' (a * 2) is new: run trained without it"),
    (("  logits: dense(a, 2)\n  extra: a * 2\n", "  logits: dense(a, 2)\n"), "graph entry 'extra' (a * 2) that run trained is gone"),
    (("{loss: loss,", "{loss: logits,"), "objective main's loss is now logits; run trained loss"),
])
def test_model_change_names_the_first_part_of_the_model_that_differs(edit, words):
    from spec.compare import model_change

    before = MODEL_WITH_A_BLOCK if edit[0] in MODEL_WITH_A_BLOCK else MODEL_WITH_A_BLOCK.replace(*reversed(edit))
    then = spec_from_text(before, "then.yaml")
    now = spec_from_text(before.replace(*edit), "now.yaml")
    change = model_change(then, now)
    assert change is not None and change.describe("run") == words
    assert change.loc.file == "now.yaml"


def test_model_change_leaves_out_what_does_not_change_the_model():
    """Spacing, comments, order, outputs, metrics, docs and train settings other than the
    objectives' losses define the same model: a resume with them goes on."""
    from spec.compare import model_change

    then = spec_from_text(MODEL_WITH_A_BLOCK, "then.yaml")
    same = (MODEL_WITH_A_BLOCK.replace("dense(v, H, act=tanh)", "dense(v,H,act = tanh)  # the cell")
            .replace("name: two", "name: two\ndoc: a block and a dense layer")
            .replace("lr: 0.01", "lr: 0.001")
            .replace("loss: cross_entropy(logits, y)\n", "loss: cross_entropy(logits, y)\noutputs:\n  p: softmax(logits)\n"
                     "metrics:\n  acc: mean(argmax(logits, axis=-1) == y)\n")
            + "  epochs: 3\n  clip_norm: 1.0\n")
    assert model_change(then, spec_from_text(same, "now.yaml")) is None
    assert model_change(then, then) is None


def test_model_change_reads_an_initializers_numbers_by_value():
    """An initializer's std: 1 and std: 1.0, or a gain written as 1 where the run's spec left
    the default 1.0, were refused on resume as another initializer ("init normal(mean=0,
    std=1.0); run trained ... std=1")."""
    from spec.compare import model_change

    base = MODEL_WITH_A_BLOCK.replace("blocks:", "params:\n  W: {shape: [D, H], init: {normal: {std: 1}}}\n"
                                      "  V: {shape: [H, D], init: glorot_uniform}\nblocks:")
    then = spec_from_text(base, "then.yaml")
    same = base.replace("std: 1}", "std: 1.0}").replace("init: glorot_uniform}", "init: {glorot_uniform: {gain: 1}}}")
    assert model_change(then, spec_from_text(same, "now.yaml")) is None
    other = spec_from_text(base.replace("std: 1}", "std: 1.5}"), "now.yaml")
    assert model_change(then, other).describe("run") == ("parameter W is now [4, 8] float32, init normal(mean=0, "
                                                        "std=1.5); run trained [4, 8] float32, init normal(mean=0, std=1)")


@pytest.mark.parametrize("edit, overrides, where", [
    # a --set is pointed at (its value), not the file's line, which still shows the run's value
    (None, ["blocks.F.graph.h=dense(v, H, act=relu)"], None),
    (None, ["params.W.init=he_normal"], None),
    (None, ["params.W.trainable=false"], None),
    (None, ["inputs.y.dtype=int32"], None),
    (None, ["blocks.F.out=[h]"], None),
    (None, ["loss=cross_entropy(logits, y) * 2"], None),
    # a parameter's init, not its shape; an entry of several targets at its own line
    (("init: {normal: {std: 1}}}", "init: he_normal}"), [], "now.yaml:8:28"),
    (("a, g: F(x)", "a, g: F(x * 2)"), [], "now.yaml:16:9"),
])
def test_model_change_is_located_at_the_value_that_differs(edit, overrides, where):
    """A changed block entry, parameter, input or loss given with --set was pointed at the spec
    file's line, which still showed the run's value; an entry of several targets ('a, g: ...')
    at the first line of the graph section."""
    from spec.compare import model_change

    base = (MODEL_WITH_A_BLOCK.replace("blocks:", "params:\n  W: {shape: [D, H], init: {normal: {std: 1}}}\nblocks:")
            .replace("    out: [h]", "    out: [h, h]").replace("  a: F(x)", "  a, g: F(x)"))
    then = spec_from_text(base, "then.yaml")
    now = spec_from_text(base.replace(*edit) if edit else base, "now.yaml", overrides)
    change = model_change(then, now)
    where = where or f"--set {overrides[0]}:1:{overrides[0].index('=') + 8}"
    assert change is not None and str(change.loc) == where, change


def test_model_change_of_a_long_entry_shows_what_differs():
    """An edit to a long expression printed both texts whole, a line of hundreds of characters
    in which the change was hard to find; it shows the part that differs, with some context."""
    from spec.compare import model_change

    long = "dense(v * 2 + v * 3 + v * 4 + v * 5 + v * 6 + v * 7 + v * 8 + v * 9 + v * 10, H, act=tanh)"
    base = MODEL_WITH_A_BLOCK.replace("dense(v, H, act=tanh)", long)
    then = spec_from_text(base, "then.yaml")
    change = model_change(then, spec_from_text(base.replace("act=tanh", "act=relu"), "now.yaml"))
    assert change.describe("run") == ("block F's graph entry 'h' is now ...+ v * 10, H, act=relu); run trained "
                                      "...+ v * 10, H, act=tanh)")
    assert change.now == long.replace("tanh", "relu")  # (whole, for a caller that wants it)
    change = model_change(then, spec_from_text(base.replace("  logits: dense(a, 2)\n", f"  logits: dense(a, 2)\n"
                                                             f"  extra: {long.replace('v', 'a')}\n"), "now.yaml"))
    assert change.describe("run") == ("graph entry 'extra' (dense(a * 2 + a * 3 + a * 4 + a * 5 + a * 6 + a * 7 + a *"
                                      "...) is new: run trained without it")
    short = model_change(then, spec_from_text(MODEL_WITH_A_BLOCK.replace("act=tanh", "act=relu"), "now.yaml"))
    assert short is not None and "dense(v, H, act=relu)" in short.describe("run")


def test_an_override_of_one_value_of_an_entry_of_several_names_the_entry():
    """--set graph.hs=... on a spec whose entry is 'hs, h' added an entry beside it and was refused
    as "'hs' is already defined as a graph value", and --set 'graph.hs,h=...' (no space) the same:
    the first names the entry and gives the override as written, the second sets that entry."""
    spec = MINI.replace("[N, D]", "[N, T, D]") + "graph:\n  hs, h: gru(x, 4, return_state=true)\nloss: mean(h)\n"
    e = error(spec, ["graph.hs=gru(x, 5)"])
    assert e.message == "cannot set 'graph.hs': 'hs' is computed by the graph entry 'hs, h'"
    assert e.hint == "override that entry as the spec writes it, all its values: --set 'graph.hs, h=gru(x, 5)'"
    assert e.loc == Loc("--set graph.hs=gru(x, 5)", 1, 13)
    e = error(spec, ["graph.hs, hn=gru(x, 5, return_state=true)"])
    assert e.message == "cannot set 'graph.hs, hn': 'hs' is computed by the graph entry 'hs, h'"
    overridden = load(spec, ["graph.hs,h=gru(x, 6, return_state=true)"])
    assert [a.targets for a in overridden.graph if "hs" in a.targets] == [["hs", "h"]]


@pytest.mark.parametrize("override, message, col", [
    ("graph.hs, h=lstm(x, 4, return_state=true)", "cannot unpack 3 value(s) into 2 names", 19),
    ("graph.g=split(x, 2, axis=-1)", "'g' is given 2 values, but names one", 15),
])
def test_an_override_giving_an_entry_another_count_of_values_is_located_in_the_override(override, message, col):
    """--set 'graph.hs, h=lstm(...)' over 'hs, h: gru(...)' was refused as 'cannot unpack 3 value(s)
    into 2 names' at the file's 'hs, h' key, a line whose gru gives two: the values come from the
    override, which the error now points into (an entry of the file is still located at its key)."""
    from compiler.training import check_spec

    spec = MINI.replace("[N, D]", "[N, T, D]") + ("graph:\n  hs, h: gru(x, 4, return_state=true)\n  g: x * 2\n"
                                                 "loss: mean(h) + mean(g)\n")
    with pytest.raises(SpecError) as e:
        check_spec(load(spec, [override]))
    assert e.value.message == message and e.value.loc == Loc(f"--set {override}", 1, col)
    with pytest.raises(SpecError) as e:
        check_spec(load(spec.replace("gru(", "lstm(")))
    assert e.value.message == "cannot unpack 3 value(s) into 2 names" and line_col(e.value) == "7:3"


def test_an_override_of_one_value_of_a_blocks_entry_of_several_names_the_entry():
    """--set blocks.F.graph.hs=... on a block whose entry is 'hs, h' added an entry beside it,
    refused as "'hs' is already defined as a graph value" with the hint to rename one, and
    --set 'blocks.F.graph.hs,h=...' (no space) the same (twice, once per name): a block's graph
    is read as the spec's is, the first naming the entry, the second setting it."""
    spec = MODEL_WITH_A_BLOCK.replace("h: dense(v, H, act=tanh)", "hs, h: gru(unsqueeze(v, axes=1), H, return_state=true)")
    e = error(spec, ["blocks.F.graph.hs=gru(v, 5)"])
    assert e.message == "cannot set 'blocks.F.graph.hs': 'hs' is computed by the graph entry 'hs, h'"
    assert e.hint == ("override that entry as the spec writes it, all its values: "
                      "--set 'blocks.F.graph.hs, h=gru(v, 5)'")
    assert e.loc == Loc("--set blocks.F.graph.hs=gru(v, 5)", 1, 22)
    overridden = load(spec, ["blocks.F.graph.hs,h=gru(unsqueeze(v, axes=1), 6, return_state=true)"])
    assert [a.targets for a in overridden.blocks["F"].graph] == [["hs", "h"]]
