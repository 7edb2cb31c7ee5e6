"""Tensors and arrays as raw bytes, and back, bit-exact and pickle-free.

torch and numpy are optional and slow to import, so neither is ever imported here
unless the user already did (on save) or a checkpoint holds such data (on load).
"""

import sys
from dataclasses import dataclass
from typing import Any, Optional, Tuple

TORCH = "torch"
NUMPY = "numpy"


@dataclass(frozen=True)
class TensorSpec:
    """Everything needed to rebuild one tensor or array from its raw bytes."""

    kind: str  # TORCH or NUMPY
    dtype: str  # torch: "bfloat16", ...; numpy: the dtype string, e.g. "<f4"
    shape: Tuple[int, ...]
    nbytes: int
    device: str = "cpu"
    parameter: bool = False  # a torch.nn.Parameter
    requires_grad: bool = False

    def to_wire(self) -> list:
        return [
            self.kind,
            self.dtype,
            list(self.shape),
            self.nbytes,
            self.device,
            self.parameter,
            self.requires_grad,
        ]

    @classmethod
    def from_wire(cls, wire: list) -> "TensorSpec":
        kind, dtype, shape, nbytes, device, parameter, requires_grad = wire
        return cls(kind, dtype, tuple(shape), nbytes, device, parameter, requires_grad)

    def describe(self) -> str:
        return "%s %s%s" % (self.kind, self.dtype, list(self.shape))


def is_tensor_like(obj: Any) -> bool:
    """True for the dense torch tensors and numpy arrays that are stored as raw buffers."""
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


def describe(obj: Any) -> TensorSpec:
    """The spec of a tensor or array (no data is touched)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        return TensorSpec(
            TORCH,
            str(obj.dtype).rsplit(".", 1)[-1],
            tuple(obj.shape),
            obj.numel() * obj.element_size(),
            str(obj.device),
            type(obj) is torch.nn.Parameter,
            bool(obj.requires_grad),
        )
    return TensorSpec(NUMPY, obj.dtype.str, tuple(obj.shape), obj.nbytes)


def to_raw(obj: Any) -> Tuple[memoryview, Any]:
    """A flat byte view of ``obj``'s data, and the object that keeps the view valid.

    No copy for a dense CPU tensor or C-contiguous array; a copy otherwise (GPU,
    non-contiguous, conjugate/negative views).
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.device.type != "cpu":
            t = t.to("cpu")
        t = t.resolve_conj().resolve_neg().contiguous()
        if t.numel() == 0:
            return memoryview(b""), None
        flat = t.reshape(-1).view(torch.uint8)
        return memoryview(flat.numpy()), flat
    np = sys.modules["numpy"]
    a = np.ascontiguousarray(obj)
    if a.nbytes == 0:
        return memoryview(b""), None
    flat = a.reshape(-1).view(np.uint8)
    return memoryview(flat), flat


class RawTensor:
    """A destination buffer for one tensor's bytes; ``finish()`` turns it into the value."""

    def __init__(self, spec: TensorSpec):
        self.spec = spec
        if spec.kind == TORCH:
            import torch

            self._raw = torch.empty(spec.nbytes, dtype=torch.uint8)
            self.buffer = memoryview(self._raw.numpy()) if spec.nbytes else memoryview(bytearray())
        elif spec.kind == NUMPY:
            import numpy as np

            self._raw = np.empty(spec.nbytes, dtype=np.uint8)
            self.buffer = memoryview(self._raw)
        else:
            raise ValueError("unknown tensor kind %r" % (spec.kind,))

    def finish(self, device_map: Optional[str] = None) -> Any:
        spec = self.spec
        if spec.kind == NUMPY:
            import numpy as np

            return self._raw.view(np.dtype(spec.dtype)).reshape(spec.shape)
        import torch

        dtype = getattr(torch, spec.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError("unknown torch dtype %r" % (spec.dtype,))
        t = self._raw.view(dtype).reshape(spec.shape)
        device = device_map or spec.device
        if device != "cpu" and _device_available(torch, device):
            t = t.to(device)
        if spec.parameter:
            return torch.nn.Parameter(t, requires_grad=spec.requires_grad)
        if spec.requires_grad:
            t.requires_grad_(True)
        return t


def _device_available(torch, device: str) -> bool:
    kind = device.split(":", 1)[0]
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return torch.backends.mps.is_available()
    return False
