"""Host memory that holds a snapshot of the changed tensors while a background save writes.

One buffer, reused from save to save and grown only when more bytes changed than it
holds, so steady-state background saves allocate (and page-fault) nothing. When CUDA is
available the buffer is pinned, so device-to-host copies run at full speed.
"""

import os
import sys
from typing import Any, List

STAGING_BUDGET_ENV = "METAFLOW_CHECKPOINT_STAGING_BYTES"
DEFAULT_BUDGET = 8 * 1024**3


def staging_budget() -> int:
    """Most bytes a background save may stage; a larger change is saved synchronously."""
    return int(os.environ.get(STAGING_BUDGET_ENV, DEFAULT_BUDGET))


class StagingArea:
    """A reusable host buffer, and copies of tensors into it."""

    def __init__(self, budget: int = None):
        self.budget = staging_budget() if budget is None else budget
        self._buffer = None  # a uint8 torch tensor or numpy array
        self.capacity = 0

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.budget

    def _reserve(self, nbytes: int) -> None:
        if nbytes <= self.capacity:
            return
        self._buffer = None  # free the old buffer before allocating the new one
        torch = sys.modules.get("torch")
        if torch is not None:
            pinned = torch.cuda.is_available()
            self._buffer = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
        else:
            import numpy as np

            self._buffer = np.empty(nbytes, dtype=np.uint8)
        self.capacity = nbytes

    def stage(self, objects: List[Any], sizes: List[int]) -> List[memoryview]:
        """Copy each tensor/array's bytes into the buffer; return a view per object."""
        self._reserve(sum(sizes))
        views, offset, synchronize = [], 0, False
        for obj, size in zip(objects, sizes):
            if size:
                synchronize |= self._copy(obj, offset, size)
            views.append(self._view(offset, size))
            offset += size
        if synchronize:
            sys.modules["torch"].cuda.synchronize()
        return views

    def _view(self, offset: int, size: int) -> memoryview:
        buffer = self._buffer
        if hasattr(buffer, "numpy"):
            buffer = buffer.numpy()
        return memoryview(buffer[offset : offset + size])

    def _copy(self, obj: Any, offset: int, size: int) -> bool:
        """Copy one object's bytes; True if a GPU copy is still in flight."""
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(obj, torch.Tensor):
            source = obj.detach().resolve_conj().resolve_neg()
            if not source.is_contiguous():
                source = source.contiguous()
            destination = self._buffer[offset : offset + size]
            on_gpu = source.device.type != "cpu"
            destination.copy_(source.reshape(-1).view(torch.uint8), non_blocking=on_gpu)
            return on_gpu
        import numpy as np

        flat = np.ascontiguousarray(obj).reshape(-1).view(np.uint8)
        target = self._buffer.numpy() if hasattr(self._buffer, "numpy") else self._buffer
        target[offset : offset + size] = flat
        return False
