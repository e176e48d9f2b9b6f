"""onnxruntime's process-wide (default) logger, which warns outside any session's own log level
(a provider it cannot load, ...). A program using flowgrad's API keeps its own onnxruntime logging:
only the flowgrad command asks for errors only, and the level is set when flowgrad first makes a
session, not at start-up, so that a verb that runs no model (--help, check, ops, summary) does not
import onnxruntime (about 50 ms of each run)."""
from __future__ import annotations

_asked: int | None = None  # the severity asked for, not yet set


def quiet_default_logger(severity: int = 3) -> None:
    """Ask for onnxruntime's default logger at `severity` (3: errors only), set by the next
    session_options() call, before the session it is for is made."""
    global _asked
    _asked = severity


def session_options():
    """A new onnxruntime SessionOptions, for every session flowgrad makes; the first one after
    quiet_default_logger() sets onnxruntime's default logger as it asked."""
    global _asked
    import onnxruntime as ort

    if _asked is not None:
        ort.set_default_logger_severity(_asked)
        _asked = None
    return ort.SessionOptions()
