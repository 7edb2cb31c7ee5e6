"""I/O preparation: how a save's buffers are cut into blobs.

Large buffers are split into fixed-size chunks, one blob each, so a big tensor is
written and read by several threads at once and an unchanged chunk dedups on its own.
Small buffers (biases, norms, pickled skeletons, small files) are packed together into
a few blobs, so a model with hundreds of small tensors does not become hundreds of tiny
files. A pack never mixes buffers of different groups (the files of one folder are a
group): a new folder's files go into new packs, and the packs of the folders that did not
change stay byte-identical, so they dedup. The RNG state is a group of its own too
(RNG_GROUP): two runs, or two epochs, whose small tensors are equal but whose RNG states
are not share their packs of small tensors. Nothing is copied: a blob is a list of views
into the original buffers.
"""

from dataclasses import dataclass, field
from typing import Hashable, List, Optional, Sequence, Tuple

#: The group of the RNG state's buffers: packed apart from the tensors of the fields.
RNG_GROUP = ("rng",)

CHUNK_BYTES = 64 * 1024 * 1024
SMALL_BYTES = 1024 * 1024
PACK_BYTES = 4 * 1024 * 1024


def is_chunked(nbytes: int) -> bool:
    """Whether a buffer of ``nbytes`` is cut into chunk blobs of its own (else it is
    packed with other small buffers)."""
    return nbytes >= SMALL_BYTES


def chunk_bounds(nbytes: int) -> List[Tuple[int, int]]:
    """``(start, end)`` of each chunk a buffer of ``nbytes`` is cut into; one piece for a
    small buffer."""
    if not is_chunked(nbytes):
        return [(0, nbytes)]
    return [(start, min(start + CHUNK_BYTES, nbytes)) for start in range(0, nbytes, CHUNK_BYTES)]


@dataclass
class PlannedBlob:
    parts: List[memoryview] = field(default_factory=list)
    size: int = 0
    #: For a chunk of a large buffer: ((source identity, offset), source version), from
    #: which change_tracking.WriteHistory guesses whether the chunk changed.
    slot: Optional[Tuple[Hashable, int]] = None
    version: Optional[int] = None

    def append(self, view: memoryview) -> int:
        """Add ``view`` at the end; return its offset in the blob."""
        offset = self.size
        self.parts.append(view)
        self.size += len(view)
        return offset


#: Where one buffer's bytes live: ``(blob index, offset in blob, length)``, in order.
Extents = List[Tuple[int, int, int]]


def plan_blobs(
    buffers: Sequence[memoryview],
    sources: Sequence[Optional[Hashable]],
    groups: Optional[Sequence[Hashable]] = None,
) -> Tuple[List[PlannedBlob], List[Extents]]:
    """Cut ``buffers`` into blobs; return the blobs and, per buffer, its extents.

    ``sources[i]`` is ``(identity, version)`` of the tensor buffer i came from (version
    None when the kind of tensor has no version counter), or None. ``groups[i]`` is the
    group of buffer i (default: all one group); small buffers are packed only with
    buffers of their own group that come right before or after them.
    """
    blobs: List[PlannedBlob] = []
    extents: List[Extents] = []
    pack_index, pack_group = None, None
    if groups is None:
        groups = [None] * len(buffers)
    for buffer, source, group in zip(buffers, sources, groups):
        view = memoryview(buffer).cast("B")
        if len(view) == 0:
            extents.append([])
        elif not is_chunked(len(view)):
            if (
                pack_index is None
                or group != pack_group
                or blobs[pack_index].size + len(view) > PACK_BYTES
            ):
                pack_index, pack_group = len(blobs), group
                blobs.append(PlannedBlob())
            offset = blobs[pack_index].append(view)
            extents.append([(pack_index, offset, len(view))])
        else:
            own = []
            for start, end in chunk_bounds(len(view)):
                chunk = view[start:end]
                slot = None if source is None else (source[0], start)
                version = None if source is None else source[1]
                blobs.append(PlannedBlob([chunk], len(chunk), slot, version))
                own.append((len(blobs) - 1, 0, len(chunk)))
            extents.append(own)
    return blobs, extents
