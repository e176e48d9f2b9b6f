"""spec/: YAML spec files -> validated, located Spec objects (see README.md, "A spec", and docs/schema.md)."""
from .errors import FlowgradError, Loc, MultiError, MultiSpecError, SpecError
from .expr import parse_expr
from .loader import load_spec, spec_from_dict, spec_from_text
from .model import Spec

__all__ = ["load_spec", "spec_from_dict", "spec_from_text", "Spec", "SpecError", "Loc",
           "FlowgradError", "MultiError", "MultiSpecError", "parse_expr"]
