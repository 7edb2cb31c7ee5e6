"""Reading stored bytes into device memory through a bounded host bounce buffer.

A load into CUDA tensors never holds the model in host memory: blobs are read (and
verified) into one of two pinned slots, and copied from there to the device on a side
stream, without blocking, while the next blobs are read into the other slot. A slot is
refilled only once the copies out of it ran (an event per slot). Peak host memory is the
two slots; peak device memory is the destination tensors (live ones: nothing more).
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

from .device_streams import DeviceOrdering, Event, group_into_slots, ordered_copies, wait_all
from .layout import CHUNK_BYTES
from .store import BlobRead

#: Host memory a load into device memory reads through: two slots of half of it each
#: (a slot holds at least the largest blob, a chunk of CHUNK_BYTES).
DEFAULT_BOUNCE_BYTES = 8 * CHUNK_BYTES


@dataclass(frozen=True)
class DeviceRead:
    """One stored buffer to read into device memory."""

    extents: Sequence[Tuple[str, int, int]]  # (blob digest, offset in blob, length), in order
    destination: Any  # a flat uint8 tensor in device memory, as long as the extents together
    label: str  # what the bytes belong to, for error messages ("field 'model'")


@dataclass(frozen=True)
class _Piece:
    """Bytes of one blob that go to one place in a destination."""

    blob_offset: int
    length: int
    destination: Any
    position: int


def read_into_device(
    read_blobs: Callable[[List[BlobRead]], None],
    blob_sizes: Mapping[str, int],
    requests: Sequence[DeviceRead],
    ordering: DeviceOrdering,
    bounce_bytes: int = DEFAULT_BOUNCE_BYTES,
) -> None:
    """Fill each request's destination with its extents' bytes.

    ``read_blobs`` reads and verifies whole blobs into the given host views (raising
    CheckpointCorrupted); nothing of a blob reaches the device before it is verified.
    """
    pieces: Dict[str, List[_Piece]] = {}
    labels: Dict[str, str] = {}
    for request in requests:
        position = 0
        for digest, offset, length in request.extents:
            pieces.setdefault(digest, []).append(_Piece(offset, length, request.destination, position))
            labels.setdefault(digest, request.label)
            position += length
    if not pieces:
        return
    slot_bytes = max(bounce_bytes // 2, max(blob_sizes[d] for d in pieces))
    bounce = _DoubleBuffer(ordering, _batches(list(pieces), blob_sizes, slot_bytes), blob_sizes)
    try:
        for number, batch in enumerate(bounce.batches):
            slot = bounce.refillable(number)
            host = slot.numpy()
            reads, starts, at = [], {}, 0
            for digest in batch:
                size = blob_sizes[digest]
                reads.append(BlobRead(digest, size, [(0, memoryview(host[at : at + size]))], labels[digest]))
                starts[digest] = at
                at += size
            read_blobs(reads)
            bounce.copy_out(
                number,
                [
                    (
                        piece.destination[piece.position : piece.position + piece.length],
                        slot[starts[digest] + piece.blob_offset :][: piece.length],
                    )
                    for digest in batch
                    for piece in pieces[digest]
                ],
            )
    finally:
        bounce.drain()  # also when a blob fails verification: no copy runs from a slot


class _DoubleBuffer:
    """Two host slots, filled by turns; each refilled only after the copies out of it ran."""

    def __init__(self, ordering: DeviceOrdering, batches: List[List[str]], blob_sizes: Mapping[str, int]):
        self.ordering = ordering
        self.batches = batches
        # Each slot as large as the largest batch it will hold.
        self._sizes = [_batch_bytes(batches[which::2], blob_sizes) for which in range(min(2, len(batches)))]
        self._slots: List[Any] = []
        self._copied: List[List[Event]] = [[], []]

    def refillable(self, number: int) -> Any:
        """The slot batch ``number`` is read into, once the copies out of it ran."""
        which = number % 2
        if which == len(self._slots):
            self._slots.append(self.ordering.host_buffer(self._sizes[which]))
        wait_all(self._copied[which])
        self._copied[which] = []
        return self._slots[which]

    def copy_out(self, number: int, copies: List[Tuple[Any, Any]]) -> None:
        """Enqueue the ``(device destination, slot view)`` copies of batch ``number``."""
        self._copied[number % 2] = ordered_copies(self.ordering, copies)

    def drain(self) -> None:
        for events in self._copied:
            wait_all(events)


def _batches(digests: List[str], blob_sizes: Mapping[str, int], slot_bytes: int) -> List[List[str]]:
    """Consecutive blobs grouped so that each group fits in a slot."""
    groups = group_into_slots([blob_sizes[d] for d in digests], slot_bytes)
    return [[digests[i] for i in group] for group in groups]


def _batch_bytes(batches: List[List[str]], blob_sizes: Mapping[str, int]) -> int:
    """The most bytes any of ``batches`` holds: a slot is no larger than it needs."""
    return max(sum(blob_sizes[d] for d in batch) for batch in batches)
