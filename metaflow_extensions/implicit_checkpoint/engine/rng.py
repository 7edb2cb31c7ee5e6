"""Random number generator state: capture on save, restore on load.

Only generators of libraries the process already imported are captured (importing
torch just to read its seed would cost a second per task). CUDA's generators (one per
device) are captured once CUDA is initialized; before, nothing drew from them.
"""

import random
import sys
from typing import Any, Dict

from .errors import CheckpointException
from .notices import warn

PYTHON = "python"
NUMPY = "numpy"
TORCH = "torch"
TORCH_CUDA = "torch_cuda"  # a list: device i's generator state at index i


def capture_rng_state() -> Dict[str, Any]:
    """The state of Python's, numpy's global and torch's (CPU and every CUDA device's)
    generators."""
    state: Dict[str, Any] = {PYTHON: random.getstate()}
    np = sys.modules.get("numpy")
    if np is not None:
        state[NUMPY] = np.random.get_state()
    torch = sys.modules.get("torch")
    if torch is not None:
        state[TORCH] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state[TORCH_CUDA] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Put back what ``capture_rng_state`` returned (sources missing here are skipped).

    CUDA generators are restored device by device, as many as both the checkpoint and
    this machine have; a difference in the number of devices is warned about."""
    if PYTHON in state:
        version, internal, gauss = state[PYTHON]
        random.setstate((version, tuple(internal), gauss))
    if NUMPY in state:
        import numpy as np

        np.random.set_state(tuple(state[NUMPY]))
    if TORCH in state:
        import torch

        torch.set_rng_state(state[TORCH])
        if TORCH_CUDA in state:
            _restore_cuda(torch, state[TORCH_CUDA])


def _restore_cuda(torch: Any, states: Any) -> None:
    if not isinstance(states, (list, tuple)) or not all(isinstance(s, torch.Tensor) for s in states):
        raise CheckpointException(
            "The checkpoint's RNG state has CUDA generator states that are not a list of "
            "tensors; it was altered. Resume with @checkpoint(rng=False), or load an earlier checkpoint."
        )
    here = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if len(states) != here:
        restored = "the first %d are" % min(len(states), here) if here else "none is"
        warn(
            "@checkpoint: the checkpoint holds the CUDA generator states of %d device(s), this "
            "machine has %d: %s restored. Random numbers drawn on the GPU differ from the "
            "run that saved it." % (len(states), here, restored)
        )
    for index, device_state in enumerate(states[:here]):
        torch.cuda.set_rng_state(device_state, index)
