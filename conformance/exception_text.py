"""How records name an exception: its type and the first line that says what went wrong (native
errors' messages run to pages, wrapped in lines that name only a layer or a graph node)."""

from __future__ import annotations

import re

_ANSI_ESCAPES = re.compile(r"\x1b\[[0-9;]*m")
# Keras wraps a backend's error in a line that names only the layer; the backend's words come next.
_GRAPH_ERROR = "Graph execution error:"
_KERAS_WRAPPER = "Exception encountered when calling"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (messages of native errors run to pages)."""
    lines = [line.strip() for line in _ANSI_ESCAPES.sub("", str(exc)).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith(_KERAS_WRAPPER):
        lines = [f"{lines[0]} {lines[1]}"]
    if lines and lines[0] == _GRAPH_ERROR:
        # TensorFlow's graph errors list the Python frames that built the node, then the message.
        message = [line for line in lines[1:] if not line.startswith(("Detected at node", "File "))]
        lines = [f"{lines[0]} {message[0]}" if message else lines[0]]
    return lines[0][:500] if lines else "(no message)"


def exception_text(exc: BaseException) -> str:
    """`TypeName: first line`, the way records name an exception."""
    return f"{type(exc).__name__}: {first_line(exc)}"
