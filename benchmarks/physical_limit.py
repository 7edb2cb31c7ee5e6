"""What the hardware allows for the bytes a save or load must move: the floor we compete with.

- ``write_with_fdatasync``: the changed bytes written into one file on the same filesystem,
  then fdatasync (what ``dd conv=fdatasync`` measures), single stream;
- ``copy_into``: a memcpy of the changed bytes into a preallocated buffer (torch's copy,
  the fastest copy this process has);
- ``read_from_page_cache``: the stored files read into a preallocated buffer, after one
  untimed read made sure they are in the page cache.
"""

import os
from typing import List, Sequence

import torch


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    return memoryview(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy())


def write_with_fdatasync(path: str, tensors: Sequence[torch.Tensor]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for tensor in tensors:
            view = _bytes_of(tensor)
            while view:
                view = view[os.write(fd, view) :]
        os.fdatasync(fd)
    finally:
        os.close(fd)


def buffer_for(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """A preallocated buffer that holds ``tensors``' bytes back to back, every page of it
    written once (torch.zeros would leave them to be faulted in by the timed copy)."""
    return torch.empty(sum(t.numel() * t.element_size() for t in tensors), dtype=torch.uint8).fill_(1)


def copy_into(buffer: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
    offset = 0
    for tensor in tensors:
        flat = tensor.detach().reshape(-1).view(torch.uint8)
        buffer[offset : offset + flat.numel()].copy_(flat)
        offset += flat.numel()


def read_into(buffer: torch.Tensor, paths: List[str]) -> int:
    """Read ``paths`` back to back into ``buffer``; the bytes read."""
    view = memoryview(buffer.numpy())
    offset = 0
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while True:
                n = f.readinto(view[offset:])
                if not n:
                    break
                offset += n
    return offset

