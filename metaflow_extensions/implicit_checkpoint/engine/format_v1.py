"""Reading checkpoints of format 1 (metaflow-implicit-checkpoint 0.1.0), so none is lost.

Format 1 encoded each field on its own: msgpack (with extension types for tuples,
tensors, OrderedDicts and dataclasses) or cloudpickle with tensors pulled out by
persistent id; tensors were whole buffers described by a 7-item spec. Read-only here:
every save writes format 2. Values come back as format 1 decoded them; loading onto a
target restores stateful objects in place when the live one has the same type.
"""

import io
import pickle
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

import msgpack

from .errors import CheckpointException
from .graph_format import ClassRef, TensorNode, View
from .manifest import Manifest
from .pickling import new_instance, resolve_class, set_attribute
from .restore import live_value
from .tensors import StorageBuffer, StorageSpec
from .validation import numpy_itemsize

_EXT_TUPLE, _EXT_TENSOR, _EXT_ORDERED_DICT, _EXT_DATACLASS = 1, 2, 3, 4
RNG_FIELD = "<rng state>"


def load_v1(
    read_extents, manifest: Manifest, wanted: List[str], allow_pickle: bool, with_rng: bool
) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    """Values of ``wanted`` (and the RNG state); ``read_extents`` reads blob extents."""
    storage = manifest.storage
    stored = storage.fields
    entries = {}
    for name in wanted:
        owner = stored[name].get("alias_of", name)
        entries[owner] = stored[owner]
    if with_rng and storage.rng:
        entries[RNG_FIELD] = storage.rng
    tensors, requests = {}, []
    for entry in entries.values():
        for index in entry["tensors"]:
            if index not in tensors:
                kind, dtype, shape, nbytes, device, parameter, requires_grad, extents = (
                    storage.tensors[index]
                )
                buffer = StorageBuffer(StorageSpec(kind, nbytes, device))
                view = View(dtype, tuple(shape), _contiguous_strides(kind, dtype, shape), 0)
                tensors[index] = (buffer, view, parameter, requires_grad)
                requests.append((extents, buffer.buffer, "tensor %d" % index))
    payloads = {}
    for name, entry in entries.items():
        payload = entry["payload"]
        if isinstance(payload, list):
            target = bytearray(sum(length for _, _, length in payload))
            requests.append((payload, memoryview(target), "field %r" % name))
            payloads[name] = target
        else:
            payloads[name] = payload
    read_extents(requests)
    built = {}
    for index, (buffer, view, parameter, requires_grad) in tensors.items():
        if buffer.spec.kind == "torch":
            built[index] = buffer.torch_view(TensorNode(index, view, parameter, requires_grad))
        else:
            built[index] = buffer.numpy_view(view, True)
    values = {}
    for name, entry in entries.items():
        if entry["codec"] == "cloudpickle" and not allow_pickle:
            raise CheckpointException(
                "Checkpoint %s (format 1): field %r was pickled, and load() was called with "
                "allow_pickle=False." % (manifest.key, name)
            )
        try:
            values[name] = _decode(entry["codec"], bytes(payloads[name]), built, allow_pickle)
        except CheckpointException:
            raise
        except Exception as ex:
            raise CheckpointException(
                "Checkpoint %s (format 1): field %r could not be decoded (%s: %s)."
                % (manifest.key, name, type(ex).__name__, ex)
            ) from ex
    rng_state = values.pop(RNG_FIELD, None)
    return {name: values[stored[name].get("alias_of", name)] for name in wanted}, rng_state


def apply_v1(target: Any, values: Dict[str, Any]) -> None:
    """Format 1's rule: a live object of the same type with ``load_state_dict`` is
    restored in place, anything else is replaced."""
    for name, value in values.items():
        live = live_value(target, name)
        if type(live) is type(value) and live is not value and callable(
            getattr(live, "load_state_dict", None)
        ):
            live.load_state_dict(value.state_dict())
        else:
            setattr(target, name, value)


def _contiguous_strides(kind: str, dtype: str, shape: list) -> Tuple[int, ...]:
    # The dtype was checked against the allow-lists when the manifest was read.
    itemsize = 1 if kind == "torch" else numpy_itemsize(dtype, "dtype")  # torch strides count elements
    strides, step = [], itemsize
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def _decode(codec: str, payload: bytes, tensors: Dict[int, Any], allow_pickle: bool) -> Any:
    if codec in ("msgpack", "tensors"):
        return _unpack(payload, tensors, allow_pickle)
    if codec == "cloudpickle":
        return _Unpickler(io.BytesIO(payload), tensors).load()
    raise ValueError("unknown codec %r" % (codec,))


def _unpack(data: bytes, tensors: Dict[int, Any], allow_pickle: bool) -> Any:
    def hook(code: int, raw: bytes):
        if code == _EXT_TUPLE:
            return tuple(_unpack(raw, tensors, allow_pickle))
        if code == _EXT_TENSOR:
            return tensors[_unpack(raw, tensors, allow_pickle)]
        if code == _EXT_ORDERED_DICT:
            items, extra = _unpack(raw, tensors, allow_pickle)
            result = OrderedDict(items)
            if extra is not None:
                result._metadata = extra
            return result
        if code == _EXT_DATACLASS:
            module, qualname, attributes = _unpack(raw, tensors, allow_pickle)
            ref = ClassRef(module, qualname)
            what = "a format-1 value"
            cls = resolve_class(ref, allow_pickle, what)
            obj = new_instance(cls, ref.name, allow_pickle, what)
            for key, value in attributes.items():
                set_attribute(obj, cls, key, value, allow_pickle, what)
            return obj
        return msgpack.ExtType(code, raw)

    return msgpack.unpackb(data, ext_hook=hook, raw=False, strict_map_key=False)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, tensors: Dict[int, Any]):
        super().__init__(file)
        self._tensors = tensors

    def persistent_load(self, pid):
        return self._tensors[pid]
