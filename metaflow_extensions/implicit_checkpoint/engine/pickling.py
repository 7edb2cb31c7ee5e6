"""Classes and pickled objects inside a save's object graph.

Classes are stored by reference (module and qualified name). A class defined in the flow
file (``__main__``) or inside a function also carries a by-value copy (cloudpickle), and
is resolved in this order when loaded:

1. the class of that name in the running process — inside a task, the flow file's own
   class, so ``isinstance`` holds and Metaflow can persist the object at task end;
2. the by-value copy, where unpickling is allowed — a notebook without the flow file.

Objects that are neither plain data nor stateful are pickled with cloudpickle; every
tensor, stateful object and shared object inside them is a reference into the graph
(``persistent_id``), so it is stored once and comes back shared.
"""

import importlib
import io
import pickle
import sys
from typing import Any, Callable, Optional

import cloudpickle

from .errors import CheckpointException

PICKLE_PROTOCOL = 5
MAIN = "__main__"


def class_wire(cls: type) -> list:
    """``[module, qualname, by-value bytes or None]`` for the graph's class table."""
    by_value = None
    if cls.__module__ == MAIN or "<locals>" in cls.__qualname__:
        by_value = cloudpickle.dumps(cls, protocol=PICKLE_PROTOCOL)
    return [cls.__module__, cls.__qualname__, by_value]


def class_name(wire: list) -> str:
    return "%s.%s" % (wire[0], wire[1])


def find_class(module: str, qualname: str, may_import: bool) -> Optional[type]:
    """The class ``module.qualname`` of this process, or None."""
    if "<locals>" in qualname:
        return None
    found = sys.modules.get(module)
    if found is None and may_import:
        try:
            found = importlib.import_module(module)
        except ImportError:
            return None
    for part in qualname.split("."):
        found = getattr(found, part, None)
        if found is None:
            return None
    return found if isinstance(found, type) else None


def resolve_class(wire: list, allow_pickle: bool, what: str) -> type:
    """The class a stored reference names, per the order in the module docstring."""
    module, qualname, by_value = wire
    cls = find_class(module, qualname, may_import=allow_pickle)
    if cls is not None:
        return cls
    if by_value is not None and allow_pickle:
        return cloudpickle.loads(by_value)
    if by_value is not None:
        raise CheckpointException(
            "%s is an instance of %s.%s, which this process does not define; rebuilding "
            "it from the checkpoint's copy of the class needs unpickling. Define or import "
            "the class first, or load with allow_pickle=True." % (what, module, qualname)
        )
    if not allow_pickle and module not in sys.modules:
        raise CheckpointException(
            "%s is an instance of %s.%s; with allow_pickle=False no module is imported. "
            "Import %s first, or load with allow_pickle=True." % (what, module, qualname, module)
        )
    raise CheckpointException(
        "%s is an instance of %s.%s, which cannot be found here. Make the module %r "
        "importable (install the package or put its folder on sys.path)."
        % (what, module, qualname, module)
    )


def _main_class(qualname: str, by_value: bytes) -> type:
    """Unpickling hook of a flow-file class: this process's class if it has one."""
    cls = find_class(MAIN, qualname, may_import=False)
    return cls if cls is not None else cloudpickle.loads(by_value)


class GraphPickler(cloudpickle.Pickler):
    """cloudpickle, with graph references for what ``reference`` claims, and classes of
    the flow file by reference (with a by-value fallback)."""

    def __init__(self, file, reference: Callable[[Any], Optional[int]]):
        super().__init__(file, protocol=PICKLE_PROTOCOL)
        self._reference = reference

    def persistent_id(self, obj):
        return self._reference(obj)

    def reducer_override(self, obj):
        if isinstance(obj, type) and obj.__module__ == MAIN and "<locals>" not in obj.__qualname__:
            return _main_class, (obj.__qualname__, cloudpickle.dumps(obj, protocol=PICKLE_PROTOCOL))
        return super().reducer_override(obj)


def pickle_with_references(obj: Any, reference: Callable[[Any], Optional[int]]) -> bytes:
    buffer = io.BytesIO()
    GraphPickler(buffer, reference).dump(obj)
    return buffer.getvalue()


class GraphUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, resolve: Callable[[int], Any]):
        super().__init__(io.BytesIO(data))
        self._resolve = resolve

    def persistent_load(self, pid):
        return self._resolve(pid)


def unpickle_with_references(data: bytes, resolve: Callable[[int], Any]) -> Any:
    return GraphUnpickler(data, resolve).load()
