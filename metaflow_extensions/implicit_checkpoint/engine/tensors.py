"""Tensors and arrays as raw storages plus views, and back: bit-exact, pickle-free.

A save stores each distinct *storage* once (the memory a torch tensor or a numpy array
lives in) and each tensor or array as a view of it (offset, shape, strides, dtype), so
two views of one buffer — across fields or inside one — come back as views of one
buffer, the way ``torch.save`` keeps them.

torch and numpy are optional and slow to import, so neither is ever imported here
unless the user already did (on save) or a checkpoint holds such data (on load).
"""

import re
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .device_streams import on_device, process_ordering
from .errors import CheckpointException
from .graph_format import TensorNode, View
from .validation import TORCH_DTYPES, describe, expect_int, expect_list, fail

TORCH = "torch"
NUMPY = "numpy"
_DEVICE = re.compile(r"[a-z][a-z0-9_]{0,15}(:\d{1,4})?\Z")


@dataclass(frozen=True)
class StorageSpec:
    """One stored buffer: whose kind of memory, how many bytes, on which device."""

    kind: str  # TORCH or NUMPY
    nbytes: int
    device: str = "cpu"

    def to_wire(self) -> list:
        return [self.kind, self.nbytes, self.device]

    @classmethod
    def from_wire(cls, wire: list, where: str = "a storage") -> "StorageSpec":
        """A stored spec, checked (raises validation.InvalidRecord)."""
        wire = expect_list(wire, where, max_length=16)
        if len(wire) < 3:
            fail(where, "has %d items, expected at least 3" % len(wire))
        kind, nbytes, device = wire[:3]
        if kind not in (TORCH, NUMPY):
            fail(where, "is of kind %s, not %r or %r" % (describe(kind), TORCH, NUMPY))
        if not isinstance(device, str) or _DEVICE.match(device) is None:
            fail(where, "is on the device %s, which is no device name" % describe(device))
        return cls(kind, expect_int(nbytes, where + " size"), device)

    def describe(self) -> str:
        return "%s storage of %d bytes on %s" % (self.kind, self.nbytes, self.device)


_CANDIDATE_TYPE_NAMES = frozenset({"Tensor", "Parameter", "ndarray"})
_DTYPE_NAMES: Dict[Any, str] = {}


def is_tensor_like(obj: Any) -> bool:
    """True for the dense torch tensors and numpy arrays that are stored as raw buffers."""
    if type(obj).__name__ not in _CANDIDATE_TYPE_NAMES:
        return False  # the common case inside pickled objects: answered cheaply
    torch = sys.modules.get("torch")
    if torch is not None and type(obj) in (torch.Tensor, torch.nn.Parameter):
        return (
            obj.layout == torch.strided
            and not obj.is_quantized
            and obj.device.type != "meta"
        )
    np = sys.modules.get("numpy")
    if np is not None and type(obj) is np.ndarray:
        return not obj.dtype.hasobject and obj.dtype.fields is None
    return False


def is_torch_tensor(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def dtype_name(obj: Any) -> str:
    """The dtype as stored: torch "bfloat16", numpy "<f4"."""
    if is_torch_tensor(obj):
        name = _DTYPE_NAMES.get(obj.dtype)
        if name is None:
            name = _DTYPE_NAMES[obj.dtype] = str(obj.dtype).rsplit(".", 1)[-1]
        return name
    return obj.dtype.str


class StorageTable:
    """The distinct storages of one save, and where each tensor or array sits in one.

    ``sources[i]`` is the first tensor or array seen on storage i (change tracking and
    staging look at it); ``flat(i)`` is a uint8 view of the whole storage.
    """

    def __init__(self):
        self.specs: List[StorageSpec] = []
        self.sources: List[Any] = []
        self._flat: List[Any] = []
        self._index_by_memory: Dict[tuple, int] = {}

    def add(self, obj: Any) -> Tuple[int, View]:
        """Register ``obj``; return its storage index and its view (graph_format.View:
        torch strides and offset in elements, numpy's in bytes)."""
        if is_torch_tensor(obj):
            storage = obj.untyped_storage()
            memory = (TORCH, storage.data_ptr(), storage.nbytes(), obj.device)
            view = View(dtype_name(obj), tuple(obj.shape), tuple(obj.stride()), obj.storage_offset())
        else:
            root = _numpy_root(obj)
            start = _address(root)
            memory = (NUMPY, start, root.nbytes, "cpu")
            view = View(obj.dtype.str, tuple(obj.shape), tuple(obj.strides), _address(obj) - start)
        index = self._index_by_memory.get(memory)
        if index is None:
            index = self._index_by_memory[memory] = len(self.specs)
            if memory[0] == TORCH:
                self.specs.append(StorageSpec(TORCH, memory[2], str(obj.device)))
                self._flat.append(_torch_flat(obj))
            else:
                self.specs.append(StorageSpec(NUMPY, root.nbytes))
                self._flat.append(root)
            self.sources.append(obj)
        elif _is_parameter(obj) and not _is_parameter(self.sources[index]):
            # A module's Parameter outlives the detached aliases its state_dict() makes:
            # change tracking recognizes it from save to save.
            self.sources[index] = obj
        return index, view

    def flat(self, index: int) -> Any:
        """A flat uint8 tensor or array over the whole of storage ``index``."""
        flat = self._flat[index]
        if is_torch_tensor(flat):
            return flat
        np = sys.modules["numpy"]
        return flat.reshape(-1, order="A").view(np.uint8) if flat.size else np.empty(0, np.uint8)


def _is_parameter(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and type(obj) is torch.nn.Parameter


def _torch_flat(obj: Any) -> Any:
    torch = sys.modules["torch"]
    return torch.empty(0, dtype=torch.uint8, device=obj.device).set_(obj.untyped_storage())


def _address(array: Any) -> int:
    return array.__array_interface__["data"][0]


def numpy_base_array(array: Any) -> Any:
    """The outermost ndarray ``array`` is a view of (itself when it views none); never copies."""
    np = sys.modules["numpy"]
    root = array
    while isinstance(root.base, np.ndarray):
        root = root.base
    return root


def _numpy_root(array: Any) -> Any:
    """The array that owns the memory ``array`` views (itself when it owns it).

    Only contiguous roots are shared; an array over strided foreign memory is its own
    storage (stored as a contiguous copy).
    """
    np = sys.modules["numpy"]
    root = numpy_base_array(array)
    if root.dtype.hasobject or not (root.flags.c_contiguous or root.flags.f_contiguous):
        return np.ascontiguousarray(array)
    return root


def to_raw(obj: Any) -> Tuple[memoryview, Any]:
    """A flat byte view of ``obj``'s data, and the object that keeps the view valid.

    No copy for a CPU storage; a copy for GPU memory.
    """
    if is_torch_tensor(obj):
        t = obj.detach()
        if t.device.type != "cpu":
            t = t.to("cpu")
        t = t.resolve_conj().resolve_neg().contiguous()
        if t.numel() == 0:
            return memoryview(b""), None
        flat = t.reshape(-1).view(sys.modules["torch"].uint8)
        return memoryview(flat.numpy()), flat
    np = sys.modules["numpy"]
    a = np.ascontiguousarray(obj)
    if a.nbytes == 0:
        return memoryview(b""), None
    flat = a.reshape(-1).view(np.uint8)
    return memoryview(flat), flat


class StorageBuffer:
    """Where one stored buffer's bytes are read to: fresh memory, or a live tensor's.

    Host memory is filled through ``buffer`` (a writable memoryview); device memory
    (``device_bytes``, a flat uint8 tensor: a live CUDA tensor's, or fresh on ``device``)
    through a bounce buffer (device_load.py). ``views`` of the buffer rebuild the saved
    tensors and arrays (sharing its memory). Without ``device``, a fresh torch buffer is
    read on the host and moved to the saved device, if this machine has it (format 1).
    """

    def __init__(self, spec: StorageSpec, live: Any = None, device: Optional[str] = None):
        self.spec = spec
        self.live = live  # a live tensor/array whose memory receives the bytes, or None
        self.buffer: Optional[memoryview] = None
        self.device_bytes: Any = None
        self._move_to: Optional[str] = None  # format 1: the device the views move to
        if live is not None:
            self._raw = live
            if on_device(live):
                self.device_bytes = _uint8_over(live)
            else:
                self.buffer = _writable_bytes(live)
        elif spec.kind == TORCH:
            import torch

            if device is not None and device != "cpu" and _streamed_to(device):
                self._raw = self.device_bytes = torch.empty(spec.nbytes, dtype=torch.uint8, device=device)
            else:
                self._raw = torch.empty(spec.nbytes, dtype=torch.uint8)
                self.buffer = memoryview(self._raw.numpy()) if spec.nbytes else memoryview(bytearray())
                if device is None and spec.device != "cpu" and _device_available(spec.device):
                    self._move_to = spec.device
                elif device is not None and device != "cpu":
                    self._move_to = device  # a device without a DeviceOrdering (mps)
        elif spec.kind == NUMPY:
            import numpy as np

            self._raw = np.empty(spec.nbytes, dtype=np.uint8)
            self.buffer = memoryview(self._raw)
        else:
            raise ValueError("unknown storage kind %r" % (spec.kind,))
        self._storage = None

    @property
    def on_host(self) -> bool:
        """Whether the bytes are read into host memory (``buffer``), else device memory."""
        return self.device_bytes is None

    def torch_view(self, node: TensorNode) -> Any:
        """The tensor ``node`` describes, over this buffer (its view was checked against
        the storage by graph_format.py)."""
        import torch

        view = node.view
        storage = self._torch_storage()
        t = torch.empty(0, dtype=torch_dtype(view.dtype), device=storage.device).set_(
            storage, view.offset, view.shape, view.strides
        )
        if node.conj:
            t = t.conj()
        if node.neg:
            t = t._neg_view()
        if node.parameter:
            return torch.nn.Parameter(t, requires_grad=node.requires_grad)
        if node.requires_grad:
            t.requires_grad_(True)
        return t

    def numpy_view(self, view: View, writeable: bool) -> Any:
        import numpy as np

        raw = self._raw if self.live is None else np.frombuffer(self.buffer, dtype=np.uint8)
        array = np.ndarray(view.shape, np.dtype(view.dtype), raw, view.offset, view.strides)
        if not writeable:
            array.flags.writeable = False
        return array

    def _torch_storage(self):
        # Views are made once the bytes are read; a format-1 storage is moved to its
        # device once, so every view of it shares the one device copy.
        if self._storage is None:
            raw = self._raw if self.live is None else self.live.detach()
            if self._move_to is not None:
                raw = raw.to(self._move_to)
            self._storage = raw.untyped_storage()
        return self._storage


class DevicePlacement:
    """Which device a load puts each torch storage on that no live tensor receives.

    ``map_location`` is None (the device it was saved on, when this machine has it,
    else the CPU), a device name or ``torch.device`` for all of them ("cpu", "cuda",
    "cuda:1"), or a dict from saved device names to device names (others stay put, as
    with None). Live tensors always keep their own device.
    """

    def __init__(self, map_location: Any = None, where: str = "load()"):
        self._where = where
        self._all: Optional[str] = None
        self._by_saved: Dict[str, str] = {}
        if map_location is None:
            return
        if isinstance(map_location, dict):
            for saved, target in map_location.items():
                self._by_saved[self._device_name(saved, "a key")] = self._checked(target)
        else:
            self._all = self._checked(map_location)

    def device_for(self, spec: StorageSpec) -> str:
        if self._all is not None:
            return self._all
        device = self._by_saved.get(spec.device, spec.device)
        return device if device == "cpu" or _device_available(device) else "cpu"

    def _device_name(self, value: Any, what: str) -> str:
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(value, torch.device):
            value = str(value)
        if not isinstance(value, str) or _DEVICE.match(value) is None or not _is_device_name(value):
            raise CheckpointException(
                "%s: map_location has %s %s, which is no device name. Pass a device such "
                "as \"cpu\", \"cuda\" or \"cuda:0\", a torch.device, or a dict from saved "
                "device names to such devices." % (self._where, what, describe(value))
            )
        return "cpu" if _is_cpu(value) else value

    def _checked(self, value: Any) -> str:
        device = self._device_name(value, "the value")
        if device != "cpu" and not _device_available(device):
            raise CheckpointException(
                "%s: map_location=%r, but this machine has no such device (%s). Pass "
                "map_location=\"cpu\" to load onto the CPU." % (self._where, device, _devices_here())
            )
        return device


def torch_dtype(name: str) -> Any:
    """The torch dtype of an allowed name, looked up without ``getattr(torch, ...)``
    (whose lazy ``__getattr__`` imports submodules)."""
    import torch

    dtype = vars(torch).get(name) if name in TORCH_DTYPES else None
    if not isinstance(dtype, torch.dtype):
        raise CheckpointException(
            "This torch (%s) has no dtype %r; load the checkpoint with the torch version "
            "that saved it" % (torch.__version__, name)
        )
    return dtype


def _uint8_over(live: Any) -> Any:
    torch = sys.modules["torch"]
    return live.detach().reshape(-1).view(torch.uint8)


def _writable_bytes(live: Any) -> memoryview:
    """The bytes of a live contiguous CPU tensor or array, writable in place."""
    if is_torch_tensor(live):
        flat = _uint8_over(live)
        return memoryview(flat.numpy()) if flat.numel() else memoryview(bytearray())
    np = sys.modules["numpy"]
    return memoryview(live.reshape(-1).view(np.uint8))


def can_receive_in_place(live: Any, nbytes: int) -> bool:
    """Whether stored bytes can be read straight into ``live``'s memory (host memory, or
    a device's that device_load.py copies to)."""
    if is_torch_tensor(live):
        return (
            (live.device.type == "cpu" or on_device(live))
            and live.is_contiguous()
            and not live.is_conj()
            and not live.is_neg()
            and live.storage_offset() == 0
            and live.untyped_storage().nbytes() == nbytes
            and live.numel() * live.element_size() == nbytes
        )
    return bool(live.flags.c_contiguous and live.flags.writeable and live.nbytes == nbytes)


def _device_available(device: str) -> bool:
    """Whether this machine has ``device`` ("cuda:1" only with two CUDA devices)."""
    import torch

    kind, _, index = device.partition(":")
    if kind == "cuda":
        return torch.cuda.is_available() and (not index or int(index) < torch.cuda.device_count())
    if kind == "mps":
        return torch.backends.mps.is_available() and index in ("", "0")
    return False


def _is_device_name(name: str) -> bool:
    """Whether torch knows a device of this name (of a kind with memory: not "meta")."""
    if _is_cpu(name):
        return True
    import torch

    try:
        return torch.device(name).type != "meta"
    except (RuntimeError, ValueError):
        return False


def _is_cpu(name: str) -> bool:
    return name == "cpu" or name.startswith("cpu:")


def _streamed_to(device: str) -> bool:
    """Whether bytes reach ``device`` through the bounce buffer of device_load.py."""
    ordering = process_ordering()
    return ordering is not None and device.startswith("cuda")


def _devices_here() -> str:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return "CUDA devices: %d" % count if count else "it has no CUDA device"
