"""What a step's own code says about its saves, read from its source before it runs."""

import ast
import inspect
import textwrap
from typing import Any


def saves_in_background(step_function: Any) -> bool:
    """Whether the step's code passes ``blocking=`` anything but ``True`` to a call:
    ``current.checkpoint.save(blocking=False)``, ``save(blocking=not last)``, or a
    framework callback made with ``blocking=False``. Such a task keeps its staging buffer
    mapped ahead from its start (CheckpointSession's ``saves_in_background``). A save in
    a function the step calls is not seen; a step whose source cannot be read counts as
    saving synchronously (its first background save maps the buffer itself, as before).
    """
    try:
        source = textwrap.dedent(inspect.getsource(inspect.unwrap(step_function)))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError, ValueError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for keyword in node.keywords:
                if keyword.arg == "blocking" and not (
                    isinstance(keyword.value, ast.Constant) and keyword.value.value is True
                ):
                    return True
    return False
