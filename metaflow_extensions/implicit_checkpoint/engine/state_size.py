"""How many bytes of tensors and arrays a step's state holds now: an estimate, read
without changing anything, that sizes a staging buffer before the first background save.

The walk follows what a save captures: containers, and the attributes (``__dict__``) of
plain objects, modules and optimizers among them, each object once; every distinct
storage counts once, at its full size (what staging copies). It stops after
``MAX_OBJECTS`` objects, so a step holding a large Python structure (a list of a million
samples) costs a bounded moment; what it did not reach is not counted.
"""

import types
from collections import deque
from typing import Any, Iterable, Set, Tuple

from .tensors import is_tensor_like, is_torch_tensor, numpy_base_array

#: Objects visited at most per estimate (about 10 ms of one core).
MAX_OBJECTS = 20_000

_ATOMS = (str, bytes, bytearray, int, float, complex, bool, type(None))
#: Objects whose attributes are code, not state (a module's would be its whole namespace).
_NOT_WALKED = (type, types.ModuleType, types.FunctionType, types.MethodType, types.BuiltinFunctionType)


def tensor_bytes(values: Iterable[Any]) -> int:
    """The bytes of the distinct storages of every tensor and array reachable from
    ``values``. Objects another thread changes during the walk may be missed or counted
    as they were; the caller takes the figure as an estimate."""
    seen_objects: Set[int] = set()
    seen_memory: Set[Tuple[int, int]] = set()
    pending = deque(values)  # breadth first: the fields' own tensors before deep structures
    total = 0
    while pending and len(seen_objects) < MAX_OBJECTS:
        obj = pending.popleft()
        if isinstance(obj, _ATOMS) or id(obj) in seen_objects:
            continue
        seen_objects.add(id(obj))
        if is_tensor_like(obj):
            memory = _memory(obj)
            if memory not in seen_memory:
                seen_memory.add(memory)
                total += memory[1]
        elif isinstance(obj, dict):
            pending.extend(list(obj.values()))
            pending.extend(key for key in list(obj) if not isinstance(key, _ATOMS))
        elif isinstance(obj, (list, tuple, set, frozenset)):
            pending.extend(list(obj))
        elif not isinstance(obj, _NOT_WALKED) and not is_torch_tensor(obj):
            attributes = getattr(obj, "__dict__", None)
            if isinstance(attributes, dict):
                pending.extend(list(attributes.values()))
    return total


def _memory(obj: Any) -> Tuple[int, int]:
    """(address, bytes) of the storage ``obj`` views: the whole of it, as staged."""
    if is_torch_tensor(obj):
        storage = obj.untyped_storage()
        return storage.data_ptr(), storage.nbytes()
    root = numpy_base_array(obj)
    return root.__array_interface__["data"][0], root.nbytes
