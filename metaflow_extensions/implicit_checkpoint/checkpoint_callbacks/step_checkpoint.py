"""What the framework callbacks share: the step's ``current.checkpoint``, and metadata
values the card can chart."""

import numbers
from typing import Any, Dict, Mapping

from ..engine.errors import CheckpointException


def step_checkpointer(callback: str):
    """``current.checkpoint`` of the @checkpoint step this process runs; a clear error
    elsewhere (a notebook, or a worker process the step started)."""
    from metaflow import current

    try:
        return current.checkpoint
    except AttributeError:
        raise CheckpointException(
            "%s saves through current.checkpoint, which exists only while a @checkpoint step "
            "runs, in the step's own process. Build the trainer inside a step decorated "
            "with @checkpoint (a worker process the step started saves with "
            "Checkpoint().save(...) instead)." % callback
        )


def numeric_values(values: Mapping[str, Any]) -> Dict[str, float]:
    """The values of ``values`` that are numbers (one-element tensors included), as floats."""
    numbers_only = {}
    for name, value in values.items():
        if hasattr(value, "numel") and value.numel() == 1:
            value = value.item()
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            numbers_only[str(name)] = float(value)
    return numbers_only
