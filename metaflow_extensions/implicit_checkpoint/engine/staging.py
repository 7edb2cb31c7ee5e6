"""Host memory that holds a snapshot of the changed tensors (and the files of the task's
folder) while a background save writes.

One buffer, reused from save to save and grown only when more bytes changed than it
holds, so steady-state background saves allocate (and page-fault) nothing. ``prepare``
maps it ahead, on a thread of its own, sized to a state (the session does when it resumes
from a checkpoint saved in the background, and when a task starts a step whose newest
checkpoint in an earlier run was saved in the background), and ``follow`` keeps it as
large as the state grows from the task's start (for a step whose code saves in the
background), so the first background save only copies. It is mapped
with all its pages present (host_memory.py). With CUDA available the buffer
is pinned instead, so device-to-host copies run at full speed. Copies of large tensors
are split across two threads (numpy's copy releases the GIL), and so are file reads.

Tensors in device memory are copied on a side stream, after an event recorded on the
stream their work runs on (device_streams.py): ``stage`` returns once those copies ran,
so work enqueued after it (the next optimizer step) cannot change what is saved, and it
waits for nothing else the device runs. The bytes must have been written on the current
stream, or synchronized with it: a tensor written from another stream without that is
copied whenever the copy happens to run.
"""

import sys
import threading
from concurrent.futures import Future
from typing import Any, Callable, Iterator, List, Optional, Tuple

from .device_streams import DeviceOrdering, group_into_slots, on_device, ordered_copies, process_ordering, wait_all
from .directory import FileEntry
from .host_memory import populated_buffer
from .parallel import LazyPool

#: The staging buffer's default cap (SessionOptions.staging_bytes).
DEFAULT_BUDGET = 8 * 1024**3

_PIECE = 16 * 1024 * 1024  # copies are split into pieces of this size
_COPY_THREADS = 2

#: How often ``follow`` asks for the state's size: (first, at most) seconds.
FOLLOW_EVERY = (0.25, 2.0)


def _headroom(nbytes: int) -> int:
    """What ``follow`` maps beyond the state's estimated size."""
    return nbytes // 64 + 4 * 1024 * 1024


class StagingArea:
    """A reusable host buffer, and copies of tensors into it."""

    def __init__(self, budget: int = DEFAULT_BUDGET, ordering: Optional[DeviceOrdering] = None):
        self.budget = budget  # most bytes a background save stages; more is saved synchronously
        self._ordering = ordering  # None: this process's (CUDA's, if it sees a GPU)
        self._array = None  # uint8 numpy view of the buffer
        self._host_tensor = None  # the torch tensor behind it (pinned, with CUDA)
        self._mapping = None
        self.capacity = 0
        self._pool = LazyPool(_COPY_THREADS, "checkpoint-stage")
        self._prepared: Optional[Future] = None  # a buffer being mapped ahead of its use
        self._following: Optional[threading.Event] = None  # set: stop following the state
        self.mapped_ahead = 0  # bytes ``follow`` has mapped so far, for a stage to take

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.budget

    def prepare(self, nbytes: int) -> None:
        """Map (and fault in) a buffer of ``nbytes`` on a thread of its own, so that the
        next ``stage`` of at most that much finds it ready and only copies: the first
        background save of a task then blocks for the copy alone. Nothing happens when the
        buffer already holds that much, when ``nbytes`` is over the budget, or while a
        preparation is under way; a preparation that fails (no memory) leaves ``stage``
        to map the buffer itself, and report what fails then."""
        if nbytes <= self.capacity or not self.fits(nbytes):
            return
        self.prepare_sized_by(lambda: nbytes)

    def prepare_sized_by(self, size: Callable[[], int]) -> None:
        """``prepare``, with the size found by ``size()`` on the preparing thread (a
        lookup that reads the store, so the caller does not wait for it). A size of 0, one
        over the budget or within the capacity, or an exception maps nothing; a ``stage``
        that comes first waits for the preparation, then maps what it still needs."""
        if self._prepared is not None:
            return
        self._prepared = Future()
        threading.Thread(
            target=self._map_into_future, args=(size, self._prepared), name="checkpoint-staging", daemon=True
        ).start()

    def follow(self, size_now: Callable[[], int]) -> None:
        """Keep a buffer mapped ahead, on a thread of its own, as large as ``size_now()``
        says the state is, until the first ``stage`` takes it (or ``close``): a step that
        builds its state after the task started finds, at its first background save, a
        buffer that only needs the copy. The size is asked for every
        ``FOLLOW_EVERY[0]`` seconds, less often (up to ``FOLLOW_EVERY[1]``) while it stays
        the same; ``size_now`` is called on that thread, and an exception counts as no
        size. Each growth drops the buffer before mapping the larger one (with
        a little more, for what the estimate leaves out, such as RNG state), so
        the task never holds two. Nothing happens while another preparation is under way."""
        if self._prepared is not None:
            return
        self._prepared, self._following = Future(), threading.Event()
        threading.Thread(
            target=self._keep_mapped,
            args=(size_now, self._following, self._prepared),
            name="checkpoint-staging",
            daemon=True,
        ).start()

    def close(self) -> None:
        """Stop following the state's size and drop a buffer mapped ahead that no
        ``stage`` took (the task ends)."""
        if self._following is not None:
            self._following.set()
        self._following, self._prepared, self.mapped_ahead = None, None, 0

    def _keep_mapped(self, size_now: Callable[[], int], stop: threading.Event, future: Future) -> None:
        mapped: Tuple[int, Optional[tuple]] = (0, None)
        delay = FOLLOW_EVERY[0]
        try:
            while not stop.wait(delay):
                try:
                    nbytes = size_now()
                except Exception:
                    nbytes = 0
                if nbytes > mapped[0] and self.fits(nbytes):
                    nbytes = min(self.budget, nbytes + _headroom(nbytes))
                    mapped, self.mapped_ahead = (0, None), 0  # the smaller buffer goes first
                    mapped = (nbytes, self._map(nbytes))
                    self.mapped_ahead = nbytes
                    delay = FOLLOW_EVERY[0]
                else:
                    delay = min(2 * delay, FOLLOW_EVERY[1])
            future.set_result(mapped)
        except BaseException as ex:  # handed to _reserve, which maps anew
            future.set_exception(ex)

    def _map_into_future(self, size: Callable[[], int], future: Future) -> None:
        try:
            nbytes = size()
            wanted = nbytes > self.capacity and self.fits(nbytes)
            future.set_result((nbytes, self._map(nbytes) if wanted else None))
        except BaseException as ex:  # handed to _reserve, which maps anew
            future.set_exception(ex)

    def _map(self, nbytes: int) -> tuple:
        """(numpy uint8 view, pinned tensor or None, mapping or None) of a new buffer."""
        import numpy as np

        ordering = self._device_ordering()
        if ordering is not None:
            host_tensor = ordering.host_buffer(nbytes)
            return host_tensor.numpy(), host_tensor, None
        mapping = populated_buffer(nbytes)
        return np.frombuffer(mapping, dtype=np.uint8)[:nbytes], None, mapping

    def _reserve(self, nbytes: int) -> None:
        if self._following is not None:
            self._following.set()
            self._following = None
            self.mapped_ahead = 0
        if self._prepared is not None:
            prepared, self._prepared = self._prepared, None
            if prepared.exception() is None:
                size, buffer = prepared.result()
                if buffer is not None and size > self.capacity:
                    self._array, self._host_tensor, self._mapping = buffer
                    self.capacity = size
        if nbytes <= self.capacity:
            return
        # Drop the old buffer first; it is unmapped once the last view of it is gone.
        self._array = self._host_tensor = self._mapping = None
        self._array, self._host_tensor, self._mapping = self._map(nbytes)
        self.capacity = nbytes

    def stage(self, objects: List[Any], sizes: List[int]) -> List[Optional[memoryview]]:
        """Copy each tensor/array's bytes (or read each file's: a ``FileEntry``) into the
        buffer; return a view per object (for a file, of what was read: None if it is
        gone)."""
        self._reserve(sum(sizes))
        ordering = self._device_ordering()
        views, pieces, files, device_copies, offset = [], [], [], [], 0
        for obj, size in zip(objects, sizes):
            if isinstance(obj, FileEntry):
                files.append((len(views), obj, offset, size))
            elif size:
                if on_device(obj, ordering):
                    device_copies.append((self._host_tensor[offset : offset + size], _flat_bytes(obj)))
                else:
                    source = _host_bytes(obj)
                    for start in range(0, size, _PIECE):
                        end = min(size, start + _PIECE)
                        pieces.append((offset + start, source[start:end]))
            views.append(memoryview(self._array[offset : offset + size]))
            offset += size
        # Enqueued first: the device copies run while the host copies and file reads do.
        copied = ordered_copies(ordering, device_copies) if device_copies else []
        self._copy_pieces(pieces)
        read = self._pool.map(
            lambda file: file[1].capture(memoryview(self._array[file[2] : file[2] + file[3]])), files
        )
        for (position, _, _, _), view in zip(files, read):
            views[position] = view
        wait_all(copied)
        return views

    def _device_ordering(self) -> Optional[DeviceOrdering]:
        return self._ordering if self._ordering is not None else process_ordering()

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


def copy_device_storages(flats: List[Any], ordering: Optional[DeviceOrdering] = None) -> List[Any]:
    """Host copies (flat uint8 torch tensors, pinned on CUDA) of the device storages
    ``flats``, made on the side stream in the order ``stage`` makes its copies; for a
    save that stages nothing (a synchronous one). The pinned memory comes from torch's
    caching host allocator, so the next save of the same sizes reuses it."""
    ordering = ordering if ordering is not None else process_ordering()
    if ordering is None:
        raise ValueError("no device ordering: these tensors are in host memory")
    copies = [(ordering.host_buffer(flat.numel()), flat) for flat in flats]
    wait_all(ordered_copies(ordering, copies))
    return [host for host, _ in copies]


def stream_to_host(
    sources: List[Any], slot_bytes: int, ordering: Optional[DeviceOrdering] = None
) -> Iterator[Tuple[List[int], List[memoryview]]]:
    """Copies of the device buffers ``sources`` (flat uint8 tensors, each at most
    ``slot_bytes``), a slot at a time, through two pinned slots: yields the indices of a
    group of sources and host views of their bytes. The next group's copy is enqueued
    before a group is yielded, so it runs while the caller hashes and writes this one; a
    group's views are valid until the caller asks for the next but one.

    A synchronous save of a 10 GB model thus holds two slots of host memory, not 10 GB.
    """
    ordering = ordering if ordering is not None else process_ordering()
    if ordering is None:
        raise ValueError("no device ordering: these tensors are in host memory")
    groups = group_into_slots([source.numel() for source in sources], slot_bytes)
    group_bytes = [sum(sources[i].numel() for i in group) for group in groups]
    # Slot 0 holds the even groups, slot 1 the odd ones: each as large as its largest.
    slots = [ordering.host_buffer(max(group_bytes[which::2])) for which in range(min(2, len(groups)))]

    def enqueue(number: int) -> Tuple[List[memoryview], List[Any]]:
        slot, views, copies, at = slots[number % 2], [], [], 0
        host = slot.numpy()
        for index in groups[number]:
            size = sources[index].numel()
            copies.append((slot[at : at + size], sources[index]))
            views.append(memoryview(host[at : at + size]))
            at += size
        return views, ordered_copies(ordering, copies)

    pending = enqueue(0) if groups else None
    for number, group in enumerate(groups):
        views, copied = pending
        wait_all(copied)
        # The other slot held the group before this one, which the caller is done with.
        pending = enqueue(number + 1) if number + 1 < len(groups) else None
        yield group, views


def _flat_bytes(obj: Any) -> Any:
    """A flat uint8 tensor over ``obj``'s bytes, on its device (a copy only if strided)."""
    torch = sys.modules["torch"]
    source = obj.detach().resolve_conj().resolve_neg()
    if not source.is_contiguous():
        source = source.contiguous()
    return source.reshape(-1).view(torch.uint8)


def _host_bytes(obj: Any):
    """A flat uint8 numpy view of a CPU tensor's or array's bytes (a copy only if strided)."""
    import numpy as np

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        t = obj.detach().resolve_conj().resolve_neg()
        if t.device.type != "cpu":
            t = t.to("cpu")  # a device without a DeviceOrdering (e.g. mps): a plain copy
        if not t.is_contiguous():
            t = t.contiguous()
        return t.reshape(-1).view(torch.uint8).numpy()
    return np.ascontiguousarray(obj).reshape(-1).view(np.uint8)
