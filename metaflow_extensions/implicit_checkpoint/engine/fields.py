"""Field selection: which attributes of the step a save captures.

By default: every public attribute the step assigned in this task, except functions,
classes and modules, and except Metaflow's own names. ``include`` replaces that default
with the attributes matching its names or fnmatch patterns (parent artifacts included);
``exclude`` removes matches from the default.
"""

import difflib
import fnmatch
import re
import types
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from .errors import CheckpointConfigError

#: Attributes Metaflow itself puts on a flow object; never captured by default.
METAFLOW_NAMES = frozenset(
    {"name", "input", "index", "foreach_stack", "cmd", "script_name", "merge_artifacts", "next"}
)

_NOT_STATE = (
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.BuiltinMethodType,
    types.ModuleType,
    type,
)


def is_pattern(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def normalize_patterns(value: Any, argument: str, step: str) -> Optional[List[str]]:
    """Turn an include/exclude argument into a list of names/patterns, or raise clearly.

    Accepts a list or tuple of strings, or one string (comma-separated, as ``--with``
    passes it). A name that no attribute can have (not an identifier, a pattern that
    matches no identifier, or a private name in ``include``, which is never captured)
    is a ``CheckpointConfigError`` here, in step_init, before any task runs.
    """
    if value is None or value == "" or value == "None":
        return None
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, str) and v for v in value
    ):
        raise CheckpointConfigError(
            "@checkpoint(%s=...) on step *%s* must be a list of attribute names or "
            "fnmatch patterns, e.g. %s=[\"model\", \"optimizer*\"]; got %r."
            % (argument, step, argument, value)
        )
    for entry in value:
        problem = _impossible_name(entry, argument)
        if problem:
            raise CheckpointConfigError(
                "@checkpoint(%s=[..., %r, ...]) on step *%s*: %s. Name attributes as the "
                "step assigns them (self.model -> \"model\"), or use an fnmatch pattern "
                "such as \"optim*\"." % (argument, entry, step, problem)
            )
    return list(value)


#: What is left of a pattern once its wildcards are replaced by a letter: the characters
#: an attribute name can hold.
_WILDCARDS = re.compile(r"\*|\?|\[!?\]?[^\]]*\]")


def _impossible_name(entry: str, argument: str) -> str:
    """Why no attribute of a step can ever match ``entry`` ('' when one can)."""
    if is_pattern(entry):
        stripped = _WILDCARDS.sub("a", entry)
        if not re.fullmatch(r"[A-Za-z0-9_]*", stripped):
            return "a pattern with characters no attribute name has (only letters, digits and _)"
        if entry[0].isdigit():
            return "attribute names never start with a digit"
        if argument == "include" and entry.startswith("_"):
            return "private attributes (a leading _) are never captured"
        return ""
    if not entry.isidentifier():
        return "that is not a valid attribute name"
    if argument == "include" and entry.startswith("_"):
        return "private attributes (a leading _) are never captured"
    return ""


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """' Did you mean 'model'?' when a candidate is close to ``name`` ('' otherwise)."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return " Did you mean %r?" % close[0] if close else ""


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _is_state(name: str, value: Any) -> bool:
    return (
        not name.startswith("_")
        and name not in METAFLOW_NAMES
        and not isinstance(value, _NOT_STATE)
    )


class FieldSelector:
    """Applies a step's include/exclude rules to the attributes available at save time."""

    def __init__(self, include: Optional[List[str]] = None, exclude: Optional[List[str]] = None):
        self.include = include
        self.exclude = exclude or []

    def select(
        self,
        assigned: Dict[str, Any],
        available_names: Iterable[str] = (),
        lookup: Optional[Callable[[str], Any]] = None,
        step: str = None,
        strict: bool = True,
    ) -> Dict[str, Any]:
        """Return ``{field name: value}`` for one save, in a stable (sorted) order.

        ``assigned``: attributes the step assigned in this task.
        ``available_names`` / ``lookup``: other readable attributes (parent artifacts),
        considered only when ``include`` names them.
        ``strict``: raise CheckpointConfigError when ``include`` names a field (not a
        pattern) that is not there; without it, what is there is returned.
        """
        if self.include is None:
            return {
                name: assigned[name]
                for name in sorted(assigned)
                if _is_state(name, assigned[name]) and not _matches(name, self.exclude)
            }
        candidates = set(assigned) | set(available_names)
        chosen = {}
        for name in sorted(candidates):
            if name.startswith("_") or not _matches(name, self.include):
                continue
            chosen[name] = assigned[name] if name in assigned else lookup(name)
        missing = [
            pattern
            for pattern in self.include
            if not is_pattern(pattern) and pattern not in chosen
        ]
        if missing and strict:
            public = [name for name in candidates if not name.startswith("_")]
            raise CheckpointConfigError(
                "@checkpoint(include=...) on step *%s* names %s, but the step has no "
                "such attribute at save() time.%s Assign it before saving (self.%s = ...) "
                "or remove it from include."
                % (step, ", ".join(repr(m) for m in missing), did_you_mean(missing[0], public),
                   missing[0])
            )
        return chosen

    def left_out(self, assigned: Dict[str, Any], saved: Iterable[str]) -> List[str]:
        """Attributes the step assigned that the default rule would capture, but that a
        save of ``saved`` fields leaves out because ``include`` does not name them
        (``exclude``d names are the user's own choice, never listed)."""
        saved = set(saved)
        return sorted(
            name
            for name, value in assigned.items()
            if name not in saved and _is_state(name, value) and not _matches(name, self.exclude)
        )
