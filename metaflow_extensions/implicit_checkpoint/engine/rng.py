"""Random number generator state: capture on save, restore on load.

Only generators of libraries the process already imported are captured (importing
torch just to read its seed would cost a second per task).
"""

import random
import sys
from typing import Any, Dict

PYTHON = "python"
NUMPY = "numpy"
TORCH = "torch"
TORCH_CUDA = "torch_cuda"


def capture_rng_state() -> Dict[str, Any]:
    """The state of Python's, numpy's global and torch's (CPU and CUDA) generators."""
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
    """Put back what ``capture_rng_state`` returned (sources missing here are skipped)."""
    if PYTHON in state:
        version, internal, gauss = state[PYTHON]
        random.setstate((version, tuple(internal), gauss))
    if NUMPY in state:
        import numpy as np

        np.random.set_state(tuple(state[NUMPY]))
    if TORCH in state:
        import torch

        torch.set_rng_state(state[TORCH])
        if TORCH_CUDA in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state[TORCH_CUDA])
