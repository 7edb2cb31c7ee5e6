"""The content hash that names every blob.

BLAKE3: a cryptographic hash (so a blob's name is a trustworthy integrity check, and
content addressing cannot collide by accident) that runs at memory speed on this class
of machine (about 4.5 GB/s per core, measured in benchmarks/), so it is never the
bottleneck of a save or a load.
"""

from typing import Iterable

import blake3

#: Buffers at least this large are hashed with several threads.
_MULTITHREAD_BYTES = 16 * 1024 * 1024


def new_hasher():
    """An incremental hasher (``update()``, ``hexdigest()``) for streaming writes."""
    return blake3.blake3()


def content_hash(parts: Iterable, all_cores: bool = True) -> str:
    """Hex BLAKE3 digest of the concatenation of ``parts`` (bytes-like objects); a large
    one on every core unless ``all_cores`` is False (a background save's: BLAKE3's own
    threads would compete with the training loop at full priority)."""
    parts = list(parts)
    big = all_cores and sum(memoryview(p).nbytes for p in parts) >= _MULTITHREAD_BYTES
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO if big else 1)
    for part in parts:
        hasher.update(part)
    return hasher.hexdigest()
