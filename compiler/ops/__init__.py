"""Op families. Importing this package registers every op."""
import importlib

FAMILIES = ("elementwise", "reduce", "linalg", "shape", "indexing", "nn", "loss", "random", "noise", "scan",
            "batching", "attention", "search")

for _family in FAMILIES:
    importlib.import_module(f"{__name__}.{_family}")
