"""What the hardware allows for the bytes a save or load must move: the floor we compete with.

- ``write_with_fdatasync``: the changed bytes written into one file on the same filesystem,
  then fdatasync (what ``dd conv=fdatasync`` measures), single stream;
- ``copy_into``: a memcpy of the changed bytes into a preallocated buffer (torch's copy,
  the fastest copy this process has);
- ``read_into``: the stored files read into a preallocated buffer, after one untimed read
  made sure they are in the page cache.

The sound limit adds what a checkpoint that holds exactly the live bytes cannot skip, done
by the simplest fast code: ``hash_all`` (BLAKE3 of every byte, on every core: the blake3
package's ``max_threads``), ``read_and_hash`` (a page-cache read and a hash of the stored
bytes in one pass, a thread per core), and ``first_touch`` (fresh memory written once,
what a load into new tensors must get before it can read into them).
"""

import os
from concurrent.futures import ThreadPoolExecutor
from typing import List, Sequence

import blake3
import torch

#: A read-and-hash pass reads this much, then hashes it while it is in the cache.
READ_CHUNK = 8 * 1024 * 1024


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    return memoryview(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy())


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def write_with_fdatasync(path: str, tensors: Sequence[torch.Tensor]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for tensor in tensors:
            _write_all(fd, _bytes_of(tensor))
        os.fdatasync(fd)
    finally:
        os.close(fd)


def hash_and_write_with_fdatasync(path: str, buffer: torch.Tensor) -> str:
    """``buffer``'s bytes hashed and written to one file in one pass, a READ_CHUNK at a time
    (each piece written while it is in the cache), on the calling thread alone, then
    fdatasync: a background save's work, done by the simplest code. Its BLAKE3 digest."""
    hasher = blake3.blake3()
    view = memoryview(buffer.numpy())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for start in range(0, len(view), READ_CHUNK):
            piece = view[start : start + READ_CHUNK]
            hasher.update(piece)
            _write_all(fd, piece)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    return hasher.hexdigest()


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



def hash_all(tensors: Sequence[torch.Tensor]) -> str:
    """BLAKE3 of every tensor's bytes, each with all cores (a save hashes each blob alone)."""
    digest = ""
    for tensor in tensors:
        digest = blake3.blake3(_bytes_of(tensor), max_threads=blake3.blake3.AUTO).hexdigest()
    return digest


def read_and_hash(buffer: torch.Tensor, paths: List[str]) -> int:
    """Read ``paths`` back to back into ``buffer``, each in chunks of READ_CHUNK hashed right
    after they are read (one pass), the files shared out among a thread per core; the bytes
    read."""
    view = memoryview(buffer.numpy())
    offsets, total = [], 0
    for path in paths:
        offsets.append(total)
        total += os.path.getsize(path)

    def read_one(path_and_offset) -> None:
        path, offset = path_and_offset
        hasher = blake3.blake3()
        with open(path, "rb", buffering=0) as f:
            while True:
                n = f.readinto(view[offset : offset + READ_CHUNK])
                if not n:
                    break
                hasher.update(view[offset : offset + n])
                offset += n
        hasher.hexdigest()

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(read_one, zip(paths, offsets)))
    return total


def first_touch(nbytes: int) -> torch.Tensor:
    """``nbytes`` of fresh memory from torch's allocator, every page written once."""
    return torch.empty(nbytes, dtype=torch.uint8).fill_(0)
