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
from types import GetSetDescriptorType, MemberDescriptorType, ModuleType
from typing import Any, Callable, Mapping, Optional

import cloudpickle

from .errors import CheckpointException
from .graph_format import ClassRef

PICKLE_PROTOCOL = 5
MAIN = "__main__"


def class_ref(cls: type) -> ClassRef:
    """How the graph's class table names ``cls``."""
    by_value = None
    if cls.__module__ == MAIN or "<locals>" in cls.__qualname__:
        by_value = cloudpickle.dumps(cls, protocol=PICKLE_PROTOCOL)
    return ClassRef(cls.__module__, cls.__qualname__, by_value)


def find_class(module: str, qualname: str, may_import: bool) -> Optional[type]:
    """The class ``module.qualname`` of this process, or None.

    Looked up in the namespaces themselves (a module's and each class's ``__dict__``),
    never with ``getattr``: a module's lazy ``__getattr__`` would import submodules, and
    a metaclass's would run code. Only with ``may_import`` is the module imported, and
    then ``getattr`` is the fallback (classes re-exported lazily, as transformers does).
    """
    if "<locals>" in qualname:
        return None
    found = sys.modules.get(module)
    if found is None and may_import:
        try:
            found = importlib.import_module(module)
        except Exception:
            return None
    for part in qualname.split("."):
        namespace = _own_namespace(found)
        step = namespace.get(part) if namespace is not None else None
        if step is None and may_import:
            step = getattr(found, part, None)
        found = step
        if found is None:
            return None
    return found if isinstance(found, type) else None


_CLASS_DICT = type.__dict__["__dict__"]
_CLASS_MRO = type.__dict__["__mro__"]
_MODULE_DICT = ModuleType.__dict__["__dict__"]
_OBJECT_NEW = object.__dict__["__new__"]
_NOTHING = object()


def _own_namespace(obj: Any) -> Optional[Mapping[str, Any]]:
    """A module's or class's own attribute dict, read through the built-in descriptors
    (a metaclass or module subclass could override ``__dict__`` itself)."""
    if isinstance(obj, ModuleType):
        return _MODULE_DICT.__get__(obj)
    if isinstance(obj, type):
        return _CLASS_DICT.__get__(obj)
    return None


def static_lookup(cls: type, name: str) -> Any:
    """What ``name`` is on ``cls`` or its bases, as stored (no descriptor runs)."""
    for klass in _CLASS_MRO.__get__(cls):
        namespace = _CLASS_DICT.__get__(klass)
        if name in namespace:
            return namespace[name]
    return _NOTHING


def resolve_class(ref: ClassRef, allow_pickle: bool, what: str) -> type:
    """The class a stored reference names, per the order in the module docstring."""
    module, qualname, by_value = ref.module, ref.qualname, ref.by_value
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


def new_instance(cls: type, saved_as: str, allow_pickle: bool, what: str) -> Any:
    """An empty instance of dataclass ``cls``, made without its ``__init__``; with
    ``allow_pickle=False`` also without the class's own ``__new__`` (pickle would call
    it), so no code of the class runs."""
    if not isinstance(static_lookup(cls, "__dataclass_fields__"), dict):
        raise CheckpointException(
            "%s was saved as a dataclass %s, but %s here is not a dataclass." % (what, saved_as, cls)
        )
    if allow_pickle:
        return cls.__new__(cls)
    if static_lookup(cls, "__new__") is not _OBJECT_NEW:
        raise CheckpointException(
            "%s is a %s, whose class defines its own __new__; with allow_pickle=False no "
            "code of a class runs. Load with allow_pickle=True if you trust this checkpoint."
            % (what, saved_as)
        )
    try:
        return object.__new__(cls)
    except TypeError as ex:
        raise CheckpointException(
            "%s is a %s, which cannot be made without running its code (%s); load with "
            "allow_pickle=True if you trust this checkpoint." % (what, saved_as, ex)
        ) from ex


def set_attribute(obj: Any, cls: type, name: str, value: Any, allow_pickle: bool, what: str) -> None:
    """Set a stored attribute on a dataclass instance without running code of its
    class: into a slot through its member descriptor (C code), else straight into the
    instance ``__dict__`` — never through ``setattr``, a property setter or
    ``__setattr__``. Attributes set outside the declared fields come back too, but with
    ``allow_pickle=False`` only under names the class itself does not use (no method,
    property or class attribute is shadowed) and never dunder names."""
    undeclared = name not in static_lookup(cls, "__dataclass_fields__")
    if not allow_pickle and undeclared and (
        not name.isidentifier() or name.startswith("__") or static_lookup(cls, name) is not _NOTHING
    ):
        raise CheckpointException(
            "%s (a %s.%s) holds the attribute %r, which is not one of its class's declared "
            "fields and is a name its class uses; with allow_pickle=False such an attribute "
            "is never set. Load with allow_pickle=True if you trust this checkpoint."
            % (what, cls.__module__, cls.__qualname__, name)
        )
    static = static_lookup(cls, name)
    if isinstance(static, MemberDescriptorType):
        static.__set__(obj, value)
        return
    instance_dict = static_lookup(cls, "__dict__")
    is_data_descriptor = static is not _NOTHING and static_lookup(type(static), "__set__") is not _NOTHING
    if isinstance(instance_dict, GetSetDescriptorType) and not is_data_descriptor:
        instance_dict.__get__(obj)[name] = value
        return
    raise CheckpointException(
        "%s (a %s.%s) holds the attribute %r, but its class defines %r as a property or "
        "descriptor now, or has no place for it; it was saved as plain data. Load it with "
        "the class as it was when saved." % (what, cls.__module__, cls.__qualname__, name, name)
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
