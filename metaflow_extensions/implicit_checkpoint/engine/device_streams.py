"""Ordering copies between device memory and host memory: streams and events.

A GPU runs the work it is given in queues (streams); the host only enqueues it. A copy of
a tensor's bytes to the host is right only if it runs after the work that produced them,
and a host buffer may be refilled only after the copy out of it ran. Both are said with
events: one recorded on a stream completes once everything enqueued there before it ran.

``DeviceOrdering`` is the little the checkpoint engine needs of a device (which tensors
are its, its current stream, a side stream for copies, host buffers it copies fast), so
the ordering logic in staging.py (save) and device_load.py (load) is one piece of code,
run with ``CudaOrdering`` on a GPU and with ``StandInOrdering`` (streams as worker
threads over CPU tensors) in CI, where no GPU is.
"""

import queue
import sys
import threading
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple


class Event(Protocol):
    """A point in a stream's queue."""

    def synchronize(self) -> None:
        """Block the host until everything enqueued before the event ran."""

    def query(self) -> bool:
        """Whether everything enqueued before the event ran (never blocks)."""


class Stream(Protocol):
    """A queue of device work, run in order."""

    def record_event(self) -> Event:
        """An event that completes once the work enqueued so far ran."""

    def wait_event(self, event: Event) -> None:
        """Work enqueued from now on runs only after ``event`` completed."""

    def copy(self, destination: Any, source: Any) -> None:
        """Enqueue a copy of ``source``'s bytes into ``destination`` (same number of
        bytes, flat uint8 tensors); returns at once."""


class DeviceOrdering(Protocol):
    """The streams and host memory of one kind of device."""

    def owns(self, tensor: Any) -> bool:
        """Whether ``tensor``'s memory is this device's."""

    def current_stream(self, tensor: Any) -> Stream:
        """The stream the user's work on ``tensor``'s device is enqueued on now."""

    def copy_stream(self, tensor: Any) -> Stream:
        """A stream of ``tensor``'s device kept for checkpoint copies (one per device)."""

    def host_buffer(self, nbytes: int) -> Any:
        """A flat uint8 CPU tensor of ``nbytes`` the device copies to and from at full
        speed (pinned, on CUDA)."""


def ordered_copies(ordering: DeviceOrdering, copies: List[Tuple[Any, Any]]) -> List[Event]:
    """Enqueue ``(destination, source)`` copies between host and device memory, each
    after the work already enqueued on its device tensor's current stream; return the
    events that complete once they ran (one per copy stream used).

    The copies run on a side stream: the user's stream may go on with the next step
    while they run, and waiting for them (``Event.synchronize``) waits for nothing else.
    A device-to-host copy thus reads the bytes the work before it produced; a
    host-to-device copy overwrites memory that work before it no longer reads.
    """
    streams: Dict[int, Stream] = {}
    for destination, source in copies:
        on_the_device = source if ordering.owns(source) else destination
        side = ordering.copy_stream(on_the_device)
        if id(side) not in streams:
            side.wait_event(ordering.current_stream(on_the_device).record_event())
            streams[id(side)] = side
        side.copy(destination, source)
    return [side.record_event() for side in streams.values()]


def wait_all(events: List[Event]) -> None:
    for event in events:
        event.synchronize()


def group_into_slots(sizes: List[int], slot_bytes: int) -> List[List[int]]:
    """Indices of ``sizes``, in order, grouped so that each group fits in a slot of
    ``slot_bytes`` (an item larger than a slot is a group of its own)."""
    groups: List[List[int]] = []
    filled = 0
    for index, size in enumerate(sizes):
        if not groups or filled + size > slot_bytes:
            groups.append([])
            filled = 0
        groups[-1].append(index)
        filled += size
    return groups


# -- CUDA -------------------------------------------------------------------------------


class _CudaStream:
    def __init__(self, stream: Any):
        self.stream = stream

    def record_event(self) -> Event:
        return self.stream.record_event()

    def wait_event(self, event: Event) -> None:
        self.stream.wait_event(event)

    def copy(self, destination: Any, source: Any) -> None:
        torch = sys.modules["torch"]
        with torch.cuda.stream(self.stream):
            destination.copy_(source, non_blocking=True)
        # The caching allocator may hand memory used on a stream to other work once it
        # is freed; a tensor copied here is in use on this stream until the copy ran.
        if destination.is_cuda:
            destination.record_stream(self.stream)
        if source.is_cuda:
            source.record_stream(self.stream)


class CudaOrdering:
    """``DeviceOrdering`` of CUDA devices: torch.cuda streams, events and pinned memory."""

    def __init__(self):
        self._copy_streams: Dict[int, _CudaStream] = {}
        self._lock = threading.Lock()

    def owns(self, tensor: Any) -> bool:
        return tensor.device.type == "cuda"

    def current_stream(self, tensor: Any) -> Stream:
        return _CudaStream(sys.modules["torch"].cuda.current_stream(tensor.device))

    def copy_stream(self, tensor: Any) -> Stream:
        index = tensor.device.index
        with self._lock:
            stream = self._copy_streams.get(index)
            if stream is None:
                torch = sys.modules["torch"]
                stream = self._copy_streams[index] = _CudaStream(torch.cuda.Stream(tensor.device))
            return stream

    def host_buffer(self, nbytes: int) -> Any:
        torch = sys.modules["torch"]
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)


_UNKNOWN = object()
_process_ordering: Any = _UNKNOWN


def process_ordering() -> Optional[DeviceOrdering]:
    """This process's device ordering: CUDA's when torch is imported and sees a GPU, else
    None (every tensor is host memory). Decided once torch is imported."""
    global _process_ordering
    if _process_ordering is _UNKNOWN:
        torch = sys.modules.get("torch")
        if torch is None:
            return None  # asked again once the user imports torch
        _process_ordering = CudaOrdering() if torch.cuda.is_available() else None
    return _process_ordering


def on_device(obj: Any, ordering: Optional[DeviceOrdering] = None) -> bool:
    """Whether ``obj`` is a torch tensor in the memory of a device (``ordering``'s, or
    this process's)."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(obj, torch.Tensor):
        return False
    ordering = ordering if ordering is not None else process_ordering()
    return ordering is not None and ordering.owns(obj)


# -- CPU stand-in -----------------------------------------------------------------------


class _StandInEvent:
    def __init__(self):
        self._done = threading.Event()

    def synchronize(self) -> None:
        self._done.wait()

    def query(self) -> bool:
        return self._done.is_set()


class StandInStream:
    """A stream run by a worker thread: enqueued work runs later, in order, as on a GPU."""

    def __init__(self, name: str, delay: Optional[Callable[[], None]] = None):
        self._work: "queue.Queue[Callable[[], None]]" = queue.Queue()
        self._delay = delay  # runs before each piece of work: makes the device "slow"
        self.copies = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            work = self._work.get()
            if self._delay is not None:
                self._delay()
            work()

    def launch(self, work: Callable[[], None]) -> None:
        """Enqueue ``work`` (a stand-in for a kernel, e.g. an optimizer step)."""
        self._work.put(work)

    def record_event(self) -> Event:
        event = _StandInEvent()
        self._work.put(event._done.set)
        return event

    def wait_event(self, event: Event) -> None:
        self._work.put(event.synchronize)

    def copy(self, destination: Any, source: Any) -> None:
        def run():
            destination.copy_(source)
            self.copies += 1

        self._work.put(run)


class StandInOrdering:
    """``DeviceOrdering`` over CPU tensors, for tests: the tensors ``place``d on it are its
    "device memory", its streams are worker threads, and ``delay`` slows every piece of
    work they run, so a copy that is not ordered right reads or overwrites the wrong
    bytes."""

    def __init__(self, delay: Optional[Callable[[], None]] = None):
        self._placed: Dict[int, Any] = {}
        self.current = StandInStream("stand-in-current", delay)
        self.side = StandInStream("stand-in-copies", delay)
        self.host_buffers: List[int] = []  # sizes of the host buffers handed out

    def place(self, tensor: Any) -> Any:
        """Make ``tensor`` count as device memory; returns it."""
        self._placed[tensor.untyped_storage().data_ptr()] = tensor
        return tensor

    def owns(self, tensor: Any) -> bool:
        return tensor.untyped_storage().data_ptr() in self._placed

    def current_stream(self, tensor: Any) -> Stream:
        return self.current

    def copy_stream(self, tensor: Any) -> Stream:
        return self.side

    def host_buffer(self, nbytes: int) -> Any:
        torch = sys.modules["torch"]
        self.host_buffers.append(nbytes)
        return torch.empty(nbytes, dtype=torch.uint8)
