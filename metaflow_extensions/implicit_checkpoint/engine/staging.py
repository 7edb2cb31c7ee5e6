"""Host memory that holds a snapshot of the changed tensors (and the files of the task's
folder) while a background save writes.

One buffer, reused from save to save and grown only when more bytes changed than it
holds, so steady-state background saves allocate (and page-fault) nothing. It is mapped
with all its pages present (host_memory.py). With CUDA available the buffer
is pinned instead, so device-to-host copies run at full speed. Copies of large tensors
are split across two threads (numpy's copy releases the GIL), and so are file reads.
"""

import sys
from typing import Any, List, Optional

from .directory import FileEntry
from .host_memory import populated_buffer
from .parallel import LazyPool

#: The setting that caps the staging buffer (read on the plugins side), and its default.
STAGING_BUDGET_ENV = "METAFLOW_CHECKPOINT_STAGING_BYTES"
DEFAULT_BUDGET = 8 * 1024**3

_PIECE = 16 * 1024 * 1024  # copies are split into pieces of this size
_COPY_THREADS = 2


class StagingArea:
    """A reusable host buffer, and copies of tensors into it."""

    def __init__(self, budget: int = DEFAULT_BUDGET):
        self.budget = budget  # most bytes a background save stages; more is saved synchronously
        self._array = None  # uint8 numpy view of the buffer
        self._pinned = None  # the pinned torch tensor behind it, with CUDA
        self._mapping = None
        self.capacity = 0
        self._pool = LazyPool(_COPY_THREADS, "checkpoint-stage")

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.budget

    def _reserve(self, nbytes: int) -> None:
        if nbytes <= self.capacity:
            return
        import numpy as np

        # Drop the old buffer first; it is unmapped once the last view of it is gone.
        self._array = self._pinned = self._mapping = None
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            self._pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
            self._array = self._pinned.numpy()
        else:
            self._mapping = populated_buffer(nbytes)
            self._array = np.frombuffer(self._mapping, dtype=np.uint8)[:nbytes]
        self.capacity = nbytes

    def stage(self, objects: List[Any], sizes: List[int]) -> List[Optional[memoryview]]:
        """Copy each tensor/array's bytes (or read each file's: a ``FileEntry``) into the
        buffer; return a view per object (for a file, of what was read: None if it is
        gone)."""
        self._reserve(sum(sizes))
        views, pieces, files, offset, gpu = [], [], [], 0, False
        for obj, size in zip(objects, sizes):
            if isinstance(obj, FileEntry):
                files.append((len(views), obj, offset, size))
            elif size:
                if _on_gpu(obj):
                    self._copy_from_gpu(obj, offset, size)
                    gpu = True
                else:
                    source = _host_bytes(obj)
                    for start in range(0, size, _PIECE):
                        end = min(size, start + _PIECE)
                        pieces.append((offset + start, source[start:end]))
            views.append(memoryview(self._array[offset : offset + size]))
            offset += size
        self._copy_pieces(pieces)
        read = self._pool.map(
            lambda file: file[1].capture(memoryview(self._array[file[2] : file[2] + file[3]])), files
        )
        for (position, _, _, _), view in zip(files, read):
            views[position] = view
        if gpu:
            sys.modules["torch"].cuda.synchronize()
        return views

    def _copy_pieces(self, pieces: list) -> None:
        import numpy as np

        def copy(piece):
            at, source = piece
            np.copyto(self._array[at : at + len(source)], source)

        big = [p for p in pieces if len(p[1]) >= _PIECE // 2]
        small = [p for p in pieces if len(p[1]) < _PIECE // 2]
        self._pool.map(copy, big)
        for piece in small:
            copy(piece)

    def _copy_from_gpu(self, obj: Any, offset: int, size: int) -> None:
        torch = sys.modules["torch"]
        source = obj.detach().resolve_conj().resolve_neg()
        if not source.is_contiguous():
            source = source.contiguous()
        destination = self._pinned[offset : offset + size]
        destination.copy_(source.reshape(-1).view(torch.uint8), non_blocking=True)


def _on_gpu(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor) and obj.device.type != "cpu"


def _host_bytes(obj: Any):
    """A flat uint8 numpy view of a CPU tensor's or array's bytes (a copy only if strided)."""
    import numpy as np

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        t = obj.detach().resolve_conj().resolve_neg()
        if not t.is_contiguous():
            t = t.contiguous()
        return t.reshape(-1).view(torch.uint8).numpy()
    return np.ascontiguousarray(obj).reshape(-1).view(np.uint8)
