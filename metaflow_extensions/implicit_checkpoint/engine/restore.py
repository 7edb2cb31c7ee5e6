"""Putting loaded fields back onto an object (the step's ``self``, or any object)."""

from typing import Any, Dict

from .errors import CheckpointException

_MISSING = object()


def _live_value(target: Any, name: str) -> Any:
    # Look only at what the object holds itself: on a flow, getattr() of a missing name
    # would fetch a parent artifact from the datastore just to be replaced.
    holder = getattr(target, "__dict__", None)
    if holder is not None:
        return holder.get(name, _MISSING)
    return getattr(target, name, _MISSING)


def apply_fields(target: Any, values: Dict[str, Any], key: str = "") -> None:
    """Set each value on ``target``; restore stateful objects in place.

    A live value that has ``load_state_dict()`` (torch module, optimizer, LR scheduler,
    grad scaler, ...) and the same type as the loaded one is updated in place, so
    objects built on it (an optimizer over a model's parameters) and references the
    user holds keep working. Everything else is replaced.
    """
    for name, value in values.items():
        live = _live_value(target, name)
        if (
            live is not _MISSING
            and live is not value
            and type(live) is type(value)
            and callable(getattr(live, "load_state_dict", None))
            and callable(getattr(value, "state_dict", None))
        ):
            try:
                live.load_state_dict(value.state_dict())
            except Exception as ex:
                raise CheckpointException(
                    "Could not restore self.%s in place from checkpoint %s: "
                    "%s.load_state_dict() failed (%s: %s). Was the %s built differently "
                    "than when it was saved?"
                    % (name, key, type(live).__name__, type(ex).__name__, ex, type(live).__name__)
                ) from ex
        else:
            setattr(target, name, value)
