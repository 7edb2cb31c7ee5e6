"""Codecs: one field value ⇄ a small payload plus the tensors it holds.

Three codecs, tried in this order on save:

- ``msgpack``: plain data (None, bool, int, float, str, bytes, lists, tuples, dicts,
  OrderedDicts, dataclasses of these). Safe to load, readable in ``inspect()``.
- ``tensors``: the same containers with torch tensors or numpy arrays inside (state
  dicts, nested dicts of arrays, ...). Each tensor becomes a reference into the save's
  ``TensorTable``; its bytes are stored raw, never pickled.
- ``cloudpickle``: anything else (modules, optimizers, custom objects), with every tensor
  and array pulled out into the same table, so a pickled model still stores (and
  dedups) each tensor on its own.

Tensors are shared through the table: one tensor object referenced from two fields (a
model's parameters inside the optimizer, say) is stored once and decoded once.
"""

import dataclasses
import importlib
import io
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Tuple

import cloudpickle
import msgpack

from .errors import CheckpointSerializationError
from .tensors import TensorSpec, describe, is_tensor_like

MSGPACK = "msgpack"
TENSORS = "tensors"
PICKLE = "cloudpickle"

_EXT_TUPLE = 1
_EXT_TENSOR = 2
_EXT_ORDERED_DICT = 3
_EXT_DATACLASS = 4

PICKLE_PROTOCOL = 5


class _NotPlain(Exception):
    """The value holds something the msgpack codecs cannot represent."""


def type_name(value: Any) -> str:
    cls = type(value)
    return "%s.%s" % (cls.__module__, cls.__qualname__)


class TensorTable:
    """The distinct tensors and arrays of one save, each stored once, by identity."""

    def __init__(self):
        self.specs: List[TensorSpec] = []
        # Holding the objects also keeps their id() from being reused mid-save.
        self.objects: List[Any] = []
        self._index_by_id: Dict[int, int] = {}

    def add(self, obj: Any) -> int:
        index = self._index_by_id.get(id(obj))
        if index is None:
            index = len(self.specs)
            self.specs.append(describe(obj))
            self.objects.append(obj)
            self._index_by_id[id(obj)] = index
        return index


@dataclass(frozen=True)
class EncodedField:
    codec: str
    type: str
    payload: bytes
    tensors: FrozenSet[int]  # indices into the save's TensorTable


def _packer_default(register_tensor: Callable[[Any], int]):
    def default(obj: Any):
        if type(obj) is tuple:
            return msgpack.ExtType(_EXT_TUPLE, _pack(list(obj), default))
        if type(obj) is OrderedDict:
            extra = getattr(obj, "_metadata", None)  # torch state_dict version info
            return msgpack.ExtType(
                _EXT_ORDERED_DICT, _pack([list(obj.items()), extra], default)
            )
        if is_tensor_like(obj):
            return msgpack.ExtType(_EXT_TENSOR, _pack(register_tensor(obj), default))
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            cls = type(obj)
            values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
            return msgpack.ExtType(
                _EXT_DATACLASS, _pack([cls.__module__, cls.__qualname__, values], default)
            )
        raise _NotPlain(type_name(obj))

    return default


def _pack(value: Any, default) -> bytes:
    return msgpack.packb(value, default=default, strict_types=True, use_bin_type=True)


def _ext_hook(tensors: Mapping[int, Any]):
    def hook(code: int, data: bytes):
        if code == _EXT_TUPLE:
            return tuple(_unpack(data, hook))
        if code == _EXT_TENSOR:
            return tensors[_unpack(data, hook)]
        if code == _EXT_ORDERED_DICT:
            items, extra = _unpack(data, hook)
            result = OrderedDict(items)
            if extra is not None:
                result._metadata = extra
            return result
        if code == _EXT_DATACLASS:
            module, qualname, values = _unpack(data, hook)
            cls = _import_qualified(module, qualname)
            obj = cls.__new__(cls)
            for key, val in values.items():
                object.__setattr__(obj, key, val)
            return obj
        return msgpack.ExtType(code, data)

    return hook


def _unpack(data: bytes, hook) -> Any:
    return msgpack.unpackb(data, ext_hook=hook, raw=False, strict_map_key=False)


def _import_qualified(module: str, qualname: str) -> type:
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class _TensorExtractingPickler(cloudpickle.Pickler):
    def __init__(self, file, register_tensor: Callable[[Any], int]):
        super().__init__(file, protocol=PICKLE_PROTOCOL)
        self._register_tensor = register_tensor

    def persistent_id(self, obj):
        if is_tensor_like(obj):
            return self._register_tensor(obj)
        return None


class _TensorRestoringUnpickler(pickle.Unpickler):
    def __init__(self, file, tensors: Mapping[int, Any]):
        super().__init__(file)
        self._tensors = tensors

    def persistent_load(self, pid):
        return self._tensors[pid]


def encode_field(name: str, value: Any, table: TensorTable, step: str = None) -> EncodedField:
    """Encode one field with the first codec that can represent it."""
    used = set()

    def register(obj: Any) -> int:
        index = table.add(obj)
        used.add(index)
        return index

    try:
        payload = _pack(value, _packer_default(register))
        return EncodedField(TENSORS if used else MSGPACK, type_name(value), payload, frozenset(used))
    except (_NotPlain, TypeError, ValueError, OverflowError):
        used.clear()
    buffer = io.BytesIO()
    try:
        _TensorExtractingPickler(buffer, register).dump(value)
    except Exception as ex:
        where = " of step *%s*" % step if step else ""
        raise CheckpointSerializationError(
            "Cannot checkpoint self.%s%s (type %s): %s: %s.\n"
            "Leave it out of the checkpoint with @checkpoint(exclude=[%r]), or delete "
            "it (del self.%s) before calling save()."
            % (name, where, type_name(value), type(ex).__name__, ex, name, name),
            field=name,
        ) from ex
    return EncodedField(PICKLE, type_name(value), buffer.getvalue(), frozenset(used))


def decode_field(codec: str, payload: bytes, tensors: Mapping[int, Any]) -> Any:
    """Rebuild a value from its payload; ``tensors`` maps table indices to decoded tensors."""
    if codec in (MSGPACK, TENSORS):
        return _unpack(payload, _ext_hook(tensors))
    if codec == PICKLE:
        return _TensorRestoringUnpickler(io.BytesIO(payload), tensors).load()
    raise ValueError("unknown codec %r" % (codec,))


def plain_preview(value: Any) -> Tuple[bool, Any]:
    """``(True, value)`` when ``value`` is a short JSON-safe scalar worth showing inline."""
    if value is None or type(value) in (bool, float):
        return True, value
    if type(value) is int and -(2**63) <= value < 2**63:
        return True, value
    if type(value) is str and len(value) <= 200:
        return True, value
    return False, None
