"""What changed since the previous save: the guess that picks a chunk's write path, and,
opt-in, trusting torch's version counters to skip storages that did not change.

``WriteHistory`` (always on) remembers each chunk of the previous save: a chunk that
probably changed is hashed and written in one pass; one that probably did not is hashed
first and written only if missing. Both paths store the same bytes.

Trusting version counters (``ChangeTracker``) is off by default, because it is not sound
for every way of writing a tensor:
torch counts in-place writes in ``tensor._version``, but writes through ``tensor.data`` (common in EMA
code), a numpy view or ``out=`` of some kernels do not bump it. By default every save
hashes every storage, and content addressing still writes only what changed.

With ``METAFLOW_CHECKPOINT_TRACK_CHANGES=1``, a storage whose first tensor is still
alive, backed by the same memory, with the same spec and version as when its bytes were
stored is neither copied nor hashed again. Every reused storage is re-hashed every
``VERIFY_EVERY`` saves (spread over saves); a mismatch turns tracking off for the rest
of the task and stores the live bytes — but up to that many checkpoints before it may
hold stale bytes. That is the hazard this mode trades for speed.
"""

import sys
import weakref
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .layout import PlannedBlob, chunk_bounds, is_chunked
from .tensors import StorageSpec
from .notices import warn

VERIFY_EVERY = 8


@dataclass(frozen=True)
class Location:
    """Where a tensor's bytes are stored: its extents and the blobs they fall in."""

    extents: Tuple[Tuple[str, int, int], ...]  # (blob hash, offset, length)
    blob_sizes: Tuple[Tuple[str, int], ...]
    fingerprint: Tuple[str, ...]  # content hashes, see fingerprint()


@dataclass(frozen=True)
class Observation:
    """A tensor's identity and version at the moment a save looked at it."""

    version: int
    data_ptr: int
    spec: StorageSpec


@dataclass
class _Entry:
    ref: Any  # weakref to the tensor object
    observation: Observation
    location: Location
    saves_since_verified: int


def fingerprint(data: memoryview) -> Tuple[str, ...]:
    """Content hashes of a tensor's bytes, chunked as layout.py cuts them."""
    from .hashing import content_hash

    view = memoryview(data).cast("B")
    return tuple(content_hash([view[start:end]]) for start, end in chunk_bounds(len(view)))


def fingerprint_of_stored(blob_digests: Sequence[str], data: memoryview) -> Tuple[str, ...]:
    """The fingerprint of bytes just stored in ``blob_digests``: a chunked buffer's chunks
    are blobs of their own, named by their content hash; a packed one is hashed."""
    if is_chunked(len(data)):
        return tuple(blob_digests)
    return fingerprint(data)


class WriteHistory:
    """Per task: each chunk of the previous save (its source version, and whether it was
    stored already), to guess whether a chunk changed since."""

    def __init__(self):
        self._previous: Dict[tuple, Tuple[Optional[int], bool]] = {}

    def probably_changed(self, blob: PlannedBlob) -> bool:
        if blob.slot is None:
            return False  # packed small buffers: hashing first is cheap
        previous = self._previous.get(blob.slot)
        if previous is None:
            return True
        version, was_unchanged = previous
        if blob.version is not None and version is not None:
            return blob.version != version
        return not was_unchanged

    def remember(self, blobs: Sequence[PlannedBlob], written: Sequence[bool]) -> None:
        self._previous = {
            blob.slot: (blob.version, not wrote)
            for blob, wrote in zip(blobs, written)
            if blob.slot is not None
        }


def observe(obj: Any, spec: StorageSpec) -> Optional[Observation]:
    """The observation of a torch tensor on CPU or GPU; None for anything untrackable."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(obj, torch.Tensor):
        return None
    return Observation(obj._version, obj.data_ptr(), spec)


class ChangeTracker:
    """Per task: where each tracked tensor's bytes were stored by the latest save."""

    def __init__(self):
        self._entries: Dict[int, _Entry] = {}
        self.enabled = True
        self._saves = 0

    def unchanged(self, obj: Any, now: Observation) -> Optional[Tuple[Location, bool]]:
        """``(location, needs_verification)`` if ``obj`` is known unchanged, else None."""
        if not self.enabled or now is None:
            return None
        entry = self._entries.get(id(obj))
        if entry is None or entry.ref() is not obj or entry.observation != now:
            return None
        due = entry.saves_since_verified + 1 >= VERIFY_EVERY
        return entry.location, due

    def remember(self, obj: Any, seen: Observation, location: Location, verified: bool) -> None:
        previous = self._entries.get(id(obj))
        if verified or previous is None or previous.ref() is not obj:
            # Stagger verification so each save re-hashes about 1/VERIFY_EVERY of them.
            count = (len(self._entries) % VERIFY_EVERY) if previous is None else 0
        else:
            count = previous.saves_since_verified + 1
        self._entries[id(obj)] = _Entry(weakref.ref(obj), seen, location, count)

    def keep_only(self, objects: List[Any]) -> None:
        """Drop entries of tensors the latest save did not hold."""
        alive = {id(obj) for obj in objects}
        self._entries = {k: v for k, v in self._entries.items() if k in alive}

    def disable(self, reason: str) -> None:
        if self.enabled:
            warn(
                "@checkpoint: %s. Unchanged-tensor detection is now off for this task: "
                "every save hashes all tensors." % reason
            )
        self.enabled = False
        self._entries.clear()
