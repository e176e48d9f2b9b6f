"""Op families. Importing this package registers every op."""
import importlib

FAMILIES = ("elementwise", "reduce", "linalg", "shape", "indexing", "nn", "loss", "random", "scan", "batching", "attention", "noise", "search")

for _family in FAMILIES:
    try:
        importlib.import_module(f"{__name__}.{_family}")
    except ModuleNotFoundError as _e:  # a family not written yet
        if _e.name != f"{__name__}.{_family}":
            raise
