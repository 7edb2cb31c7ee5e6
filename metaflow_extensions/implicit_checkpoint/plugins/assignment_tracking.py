"""Knowing which attributes a step assigned on ``self`` (the default capture set).

Metaflow caches a parent artifact on the flow object the first time the step reads it,
through the same ``setattr`` a step uses to assign one, so ``flow.__dict__`` alone
cannot tell "assigned" from "only read". For the duration of the task, the flow object
gets a subclass of its own class (same name) that records assignments, except the ones
Metaflow's ``__getattr__`` makes while loading an artifact.
"""

from typing import Any, Dict, List, Optional, Set

from ..engine.errors import CheckpointConfigError
from ..engine.fields import FieldSelector


class AssignmentLog:
    """Names assigned on one flow object since tracking started."""

    def __init__(self):
        self.names: Set[str] = set()
        self.loading_depth = 0

    def assigned_values(self, flow: Any) -> Dict[str, Any]:
        values = vars(flow)
        return {name: values[name] for name in self.names if name in values}


def track_assignments(flow: Any) -> AssignmentLog:
    """Start recording assignments on ``flow``; undo with ``stop_tracking(flow)``."""
    log = AssignmentLog()
    original = type(flow)

    def __setattr__(self, name, value):
        if not log.loading_depth:
            log.names.add(name)
        original.__setattr__(self, name, value)

    def __delattr__(self, name):
        log.names.discard(name)
        original.__delattr__(self, name)

    def __getattr__(self, name):
        log.loading_depth += 1
        try:
            return original.__getattr__(self, name)
        finally:
            log.loading_depth -= 1

    # type.__new__ builds the class without running FlowSpecMeta.__init__, which would
    # re-parse the flow's graph and give the subclass a fresh, empty flow state.
    tracked = type.__new__(
        type(original),
        original.__name__,
        (original,),
        {
            "__setattr__": __setattr__,
            "__delattr__": __delattr__,
            "__getattr__": __getattr__,
            "__module__": original.__module__,
            "__qualname__": original.__qualname__,
            "_checkpoint_untracked_class": original,
            "_checkpoint_assignments": log,
            # Metaflow persists every attribute of the flow object at task end, class
            # attributes too, except the names in _EPHEMERAL: these two are ours, not the
            # user's, and would be artifacts of every task (one needing this package to load).
            "_EPHEMERAL": set(getattr(original, "_EPHEMERAL", ()))
            | {"_checkpoint_untracked_class", "_checkpoint_assignments"},
        },
    )
    flow.__class__ = tracked
    return log


def stop_tracking(flow: Any) -> None:
    original = getattr(type(flow), "_checkpoint_untracked_class", None)
    if original is not None:
        flow.__class__ = original


def implicit_fields(
    flow: Any, exclude: Optional[List[str]] = None, include: Optional[List[str]] = None
) -> Dict[str, Any]:
    """
    The attributes a save would capture from ``flow`` with these include/exclude
    rules: in a `@checkpoint` step, what the step assigned (or what ``include`` names);
    elsewhere, the object's public attributes. metaflow-checkpoint's
    ``_get_implicit_fields``, under our rules.

    Raises
    ------
    CheckpointConfigError
        A ValueError: ``include`` and ``exclude`` are mutually exclusive.
    """
    if include is not None and exclude is not None:
        raise CheckpointConfigError(
            "implicit_fields(include=..., exclude=...): include and exclude are mutually "
            "exclusive. Pass include=[...] to capture only those attributes, or "
            "exclude=[...] to capture everything else, not both."
        )
    log = getattr(type(flow), "_checkpoint_assignments", None)
    assigned = log.assigned_values(flow) if log is not None else dict(vars(flow))
    return FieldSelector(include, exclude).select(
        assigned, dir(flow), lambda name: getattr(flow, name), getattr(flow, "name", None)
    )
