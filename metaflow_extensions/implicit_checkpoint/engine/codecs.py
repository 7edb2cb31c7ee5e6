"""One save as one object graph: how every value is encoded, and how it is built back.

All fields of a save (and the RNG state) are encoded together, so an object reachable
from two fields, or twice inside one, is one node and comes back as one object. A node
is one of:

- plain containers and scalars: ``list``, ``tuple``, ``dict``, ``OrderedDict`` (with
  torch's ``_metadata``), ``set``, ``frozenset``, ``bytearray``, big ints, complex,
  numpy scalars. None, bool, int, float, str and bytes are stored inline;
- ``tensor`` / ``ndarray``: a view of a storage (tensors.py); the bytes are stored raw;
- ``dataclass``: its class and every instance attribute (also ones set outside the
  declared fields), without pickling;
- ``stateful``: anything with ``state_dict()`` and ``load_state_dict()`` (modules,
  optimizers, schedulers, scalers, user classes): its state dict, which loads into a
  live object without pickling, plus a pickled skeleton to rebuild it when there is no
  live object;
- ``pickled``: anything else, with cloudpickle (pickling.py).

The document is msgpack: a class table, each node packed on its own (so a partial load
unpacks only the nodes it needs), the fields, and the RNG state.
"""

import dataclasses
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Set, Tuple

import msgpack

from . import notices
from .errors import CheckpointException, CheckpointSerializationError
from .pickling import (
    class_name,
    class_wire,
    pickle_with_references,
    resolve_class,
    unpickle_with_references,
)
from .tensors import StorageBuffer, StorageTable, is_tensor_like, is_torch_tensor

MSGPACK = "msgpack"  # plain data only
TENSORS = "tensors"  # plain data and tensors/arrays
STATE_DICT = "state_dict"  # stateful objects (loadable into live objects without pickle)
PICKLE = "cloudpickle"  # needs unpickling to load

_REF = 1
_INT64 = (-(2**63), 2**64)


@dataclass(frozen=True)
class Ref:
    """A reference to node ``index`` of the graph."""

    index: int


def type_name(value: Any) -> str:
    cls = type(value)
    return "%s.%s" % (cls.__module__, cls.__qualname__)


def is_stateful(obj: Any) -> bool:
    """Has ``state_dict()`` and ``load_state_dict()`` (and is an object, not a class)."""
    return (
        not isinstance(obj, type)
        and callable(getattr(obj, "state_dict", None))
        and callable(getattr(obj, "load_state_dict", None))
    )


def instance_attributes(obj: Any) -> List[Tuple[str, Any]]:
    """Every attribute an instance holds: its ``__dict__`` and its slots."""
    found = dict(getattr(obj, "__dict__", {}))
    for cls in type(obj).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            if slot not in ("__dict__", "__weakref__") and hasattr(obj, slot):
                found.setdefault(slot, getattr(obj, slot))
    return list(found.items())


class _ImmutableCycle(Exception):
    pass


@dataclass(frozen=True)
class FieldInfo:
    """What one field holds: its root, the storages and nodes it reaches, how to load it."""

    type: str
    root: Any  # inline value or Ref
    storages: Tuple[int, ...]
    codec: str
    size: int


@dataclass
class EncodedGraph:
    document: bytes
    table: StorageTable
    fields: Dict[str, FieldInfo]
    rng_storages: Tuple[int, ...]


class GraphEncoder:
    """Encodes the fields of one save (see the module docstring)."""

    def __init__(self, step: Optional[str] = None, warn: Callable[[str], None] = None):
        self.table = StorageTable()
        self._step = step
        self._warn = warn or notices.warn
        self._nodes: List[Optional[bytes]] = []
        self._children: List[Set[int]] = []
        self._storage_of: Dict[int, int] = {}
        self._pickled: Set[int] = set()
        self._stateful: Set[int] = set()
        self._classes: List[list] = []
        self._class_index: Dict[type, int] = {}
        self._memo: Dict[int, int] = {}
        self._keep: List[Any] = []  # keeps memoized objects (and their id()s) alive
        self._stack: List[int] = []
        self._immutable_in_progress: Set[int] = set()
        self._pickle_root: Any = None

    def encode(self, fields: Mapping[str, Any], rng_state: Optional[dict] = None) -> EncodedGraph:
        # Every field's root is a node before any is encoded, so a pickled object that
        # refers to another field's object refers to that node; plain and stateful
        # fields go first, so objects they reach are nodes before pickles look for them.
        roots: Dict[str, Any] = {}
        for name, value in fields.items():
            if _inline(value):
                roots[name] = value
            else:
                index = self._memo.get(id(value))
                roots[name] = Ref(self._reserve(value) if index is None else index)
        order = sorted(fields, key=lambda n: (self._will_pickle(fields[n]), n))
        for name in order:
            ref = roots[name]
            if isinstance(ref, Ref) and self._nodes[ref.index] is None:
                self._guarded(name, fields[name], lambda: self._fill(ref.index, fields[name]))
        rng_wire = None
        if rng_state:
            rng_wire = self._guarded("<rng state>", rng_state, lambda: Ref(self._index(rng_state)))
        infos = {name: self._field_info(fields[name], roots[name]) for name in fields}
        rng_storages = self._storages_from(rng_wire)
        document = msgpack.packb(
            {
                "classes": self._classes,
                "nodes": self._nodes,
                "fields": {name: _to_msgpack(root) for name, root in roots.items()},
                "rng": _to_msgpack(rng_wire),
            },
            use_bin_type=True,
        )
        return EncodedGraph(document, self.table, infos, tuple(sorted(rng_storages)))

    # -- nodes -----------------------------------------------------------------------

    def _guarded(self, name: str, value: Any, action: Callable[[], Any]) -> Any:
        where = " of step *%s*" % self._step if self._step else ""
        try:
            return action()
        except _Unpicklable as ex:
            raise CheckpointSerializationError(
                unpicklable_message(name, self._step, ex), field=name
            ) from ex.cause
        except CheckpointSerializationError:
            raise
        except _ImmutableCycle:
            raise CheckpointSerializationError(
                "Cannot checkpoint self.%s%s (type %s): it holds a tuple or frozenset that "
                "contains itself. Use a list instead." % (name, where, type_name(value)),
                field=name,
            )
        except RecursionError:
            raise CheckpointSerializationError(
                "Cannot checkpoint self.%s%s (type %s): it is nested too deeply."
                % (name, where, type_name(value)),
                field=name,
            )

    def _reserve(self, obj: Any) -> int:
        index = len(self._nodes)
        self._nodes.append(None)
        self._children.append(set())
        self._memo[id(obj)] = index
        self._keep.append(obj)
        return index

    def _value(self, obj: Any) -> Any:
        """The wire form of ``obj``: inline, or a reference to its node."""
        if _inline(obj):
            return obj
        return _ref_wire(self._index(obj))

    def _index(self, obj: Any) -> int:
        """The node of ``obj`` (encoded on first sight), noted as a child of the node
        being encoded."""
        index = self._memo.get(id(obj))
        if index is None:
            index = self._reserve(obj)
            self._fill(index, obj)
        elif index in self._immutable_in_progress:
            raise _ImmutableCycle()
        if self._stack:
            self._children[self._stack[-1]].add(index)
        return index

    def _fill(self, index: int, obj: Any) -> None:
        self._stack.append(index)
        try:
            node = self._node(index, obj)
        finally:
            self._stack.pop()
        self._nodes[index] = msgpack.packb(node, use_bin_type=True)

    def _node(self, index: int, obj: Any) -> list:
        t = type(obj)
        if is_tensor_like(obj):
            storage, view = self.table.add(obj)
            self._storage_of[index] = storage
            if is_torch_tensor(obj):
                parameter = t is sys.modules["torch"].nn.Parameter
                return ["tensor", storage, view, parameter, bool(obj.requires_grad)]
            return ["ndarray", storage, view, bool(obj.flags.writeable)]
        if t in (tuple, frozenset):
            self._immutable_in_progress.add(index)
            try:
                return [t.__name__, [self._value(item) for item in obj]]
            finally:
                self._immutable_in_progress.discard(index)
        if t in (list, set):
            return [t.__name__, [self._value(item) for item in obj]]
        if t is dict:
            return ["dict", [[self._value(k), self._value(v)] for k, v in obj.items()]]
        if t is OrderedDict:
            items = [[self._value(k), self._value(v)] for k, v in obj.items()]
            return ["odict", items, self._value(getattr(obj, "_metadata", None))]
        if t is bytearray:
            return ["bytearray", bytes(obj)]
        if t is int:
            return ["int", str(obj)]
        if t is complex:
            return ["complex", obj.real, obj.imag]
        if _is_numpy_scalar(obj):
            return ["npscalar", obj.dtype.str, obj.tobytes()]
        if is_stateful(obj):
            state = self._state_dict(obj)
            if state is not None:
                self._stateful.add(index)
                return ["stateful", self._class(t), self._value(state), self._skeleton(obj)]
        if dataclasses.is_dataclass(obj):
            attributes = [[k, self._value(v)] for k, v in instance_attributes(obj)]
            return ["dataclass", self._class(t), attributes]
        self._pickled.add(index)
        return ["pickled", self._class(t), self._pickle(obj, required=True)]

    def _state_dict(self, obj: Any) -> Optional[Any]:
        try:
            return obj.state_dict()
        except TypeError:
            return None  # a state_dict() that wants arguments: not the protocol; pickle it

    def _skeleton(self, obj: Any) -> Optional[bytes]:
        """The object pickled (tensors and shared objects by reference), to rebuild it
        where no live object exists; None if it cannot be pickled."""
        try:
            return self._pickle(obj, required=False)
        except Exception as ex:
            if type(obj) in _WARNED_STATE_DICT_ONLY:
                return None
            _WARNED_STATE_DICT_ONLY.add(type(obj))
            self._warn(
                "@checkpoint: a %s is saved through its state dict only (it cannot be "
                "pickled: %s: %s); load() restores it into a live %s you build first."
                % (type_name(obj), type(ex).__name__, ex, type(obj).__name__)
            )
            return None

    def _pickle(self, obj: Any, required: bool) -> bytes:
        outer_root, self._pickle_root = self._pickle_root, obj
        try:
            return pickle_with_references(obj, self._reference_in_pickle)
        except Exception as ex:
            if not required or isinstance(ex, (_ImmutableCycle, RecursionError)):
                raise
            raise _Unpicklable(obj, ex) from ex
        finally:
            self._pickle_root = outer_root

    def _reference_in_pickle(self, obj: Any) -> Optional[int]:
        if obj is self._pickle_root:
            return None
        if id(obj) in self._memo or is_tensor_like(obj):
            return self._index(obj)
        return None

    def _class(self, cls: type) -> int:
        index = self._class_index.get(cls)
        if index is None:
            index = self._class_index[cls] = len(self._classes)
            self._classes.append(class_wire(cls))
        return index

    # -- what each field reaches -------------------------------------------------------

    def _will_pickle(self, value: Any) -> bool:
        return not (
            _inline(value)
            or is_tensor_like(value)
            or type(value) in _CONTAINERS
            or is_stateful(value)
            or dataclasses.is_dataclass(value)
        )

    def _reachable(self, root: Any) -> Set[int]:
        seen: Set[int] = set()
        todo = [root.index] if isinstance(root, Ref) else []
        while todo:
            index = todo.pop()
            if index not in seen:
                seen.add(index)
                todo.extend(self._children[index])
        return seen

    def _storages_from(self, root: Any) -> Set[int]:
        return {self._storage_of[i] for i in self._reachable(root) if i in self._storage_of}

    def _field_info(self, value: Any, root: Any) -> FieldInfo:
        nodes = self._reachable(root)
        storages = tuple(sorted({self._storage_of[i] for i in nodes if i in self._storage_of}))
        if nodes & self._pickled:
            codec = PICKLE
        elif nodes & self._stateful:
            codec = STATE_DICT
        else:
            codec = TENSORS if storages else MSGPACK
        size = sum(self.table.specs[s].nbytes for s in storages) + sum(
            len(self._nodes[i]) for i in nodes
        )
        if not nodes:
            size = len(msgpack.packb(value, use_bin_type=True))
        return FieldInfo(type_name(value), root, storages, codec, size)


_WARNED_STATE_DICT_ONLY: Set[type] = set()  # warned once per process and type
_CONTAINERS = (list, tuple, dict, OrderedDict, set, frozenset, bytearray, complex)


class _Unpicklable(CheckpointSerializationError):
    def __init__(self, obj: Any, cause: Exception):
        super().__init__("%s: %s: %s" % (type_name(obj), type(cause).__name__, cause))
        self.obj = obj
        self.cause = cause


def unpicklable_message(name: str, step: Optional[str], error: _Unpicklable) -> str:
    where = " of step *%s*" % step if step else ""
    return (
        "Cannot checkpoint self.%s%s: it holds a %s, which cannot be pickled (%s: %s).\n"
        "Metaflow also stores every public attribute at the end of the step, so leaving "
        "it out of the checkpoint (exclude=) is not enough: delete it before save() and "
        "before the step ends (del self.%s), or keep it in a private attribute "
        "(self._%s), which neither Metaflow nor @checkpoint stores."
        % (name, where, type_name(error.obj), type(error.cause).__name__, error.cause, name, name)
    )


def _inline(value: Any) -> bool:
    t = type(value)
    return value is None or t in (bool, float, str, bytes) or (
        t is int and _INT64[0] <= value < _INT64[1]
    )


def _is_numpy_scalar(obj: Any) -> bool:
    np = sys.modules.get("numpy")
    return (
        np is not None
        and isinstance(obj, np.generic)
        and type(obj).__module__ == "numpy"
        and not obj.dtype.hasobject
    )


def _ref_wire(index: int) -> msgpack.ExtType:
    return msgpack.ExtType(_REF, index.to_bytes(4, "little"))


def _to_msgpack(value: Any) -> Any:
    """A field root (or the RNG state's) as stored: a Ref becomes its extension value."""
    return _ref_wire(value.index) if isinstance(value, Ref) else value


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _REF:
        return Ref(int.from_bytes(data, "little"))
    return msgpack.ExtType(code, data)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)


# -- reading a graph back -----------------------------------------------------------------


class GraphReader:
    """A stored graph document: nodes are unpacked on first use."""

    def __init__(self, document: bytes):
        parsed = msgpack.unpackb(document, raw=False, strict_map_key=False)
        self.classes: List[list] = parsed["classes"]
        self._packed: List[bytes] = parsed["nodes"]
        self._nodes: Dict[int, list] = {}
        self.fields: Dict[str, Any] = {
            name: _ext_hook(v.code, v.data) if isinstance(v, msgpack.ExtType) else v
            for name, v in parsed["fields"].items()
        }
        rng = parsed.get("rng")
        self.rng = _ext_hook(rng.code, rng.data) if isinstance(rng, msgpack.ExtType) else rng

    @property
    def node_count(self) -> int:
        return len(self._packed)

    def node(self, index: int) -> list:
        node = self._nodes.get(index)
        if node is None:
            node = self._nodes[index] = _unpack(self._packed[index])
        return node

    def class_name(self, index: int) -> str:
        return class_name(self.classes[index])


_BUILDING = object()


class GraphBuilder:
    """Builds values from a graph, with the bytes of its storages already read.

    ``live`` maps nodes to the live objects they restore into (restore.py decides);
    everything else is built new. With ``allow_pickle=False`` nothing is unpickled: a
    value that needs it raises, naming the field.
    """

    def __init__(
        self,
        reader: GraphReader,
        storages: Mapping[int, StorageBuffer],
        live: Mapping[int, Any],
        allow_pickle: bool,
        key: str,
    ):
        self._reader = reader
        self._storages = storages
        self._live = live
        self._allow_pickle = allow_pickle
        self._key = key
        self._built: Dict[int, Any] = {}
        self._classes: Dict[int, type] = {}
        self._what = ""

    def build(self, wire: Any, what: str) -> Any:
        """The value of ``wire`` (a field's root, say); ``what`` names it in errors."""
        self._what = what
        if not isinstance(wire, Ref):
            return wire
        return self._node(wire.index)

    def build_new(self, index: int, what: str) -> Any:
        """Node ``index`` built new even if it restores into a live object."""
        self._what = what
        return self._make(index, self._reader.node(index))

    def _value(self, wire: Any) -> Any:
        return self._node(wire.index) if isinstance(wire, Ref) else wire

    def _node(self, index: int) -> Any:
        if index in self._live:
            return self._live[index]
        built = self._built.get(index, None)
        if built is _BUILDING:
            raise CheckpointException(
                "Checkpoint %s: %s holds objects that refer to each other through pickled "
                "state and can only be restored into live objects. Build them before "
                "load() so they are restored in place." % (self._key, self._what)
            )
        if index in self._built:
            return built
        return self._make(index, self._reader.node(index))

    def _make(self, index: int, node: list) -> Any:
        kind = node[0]
        if kind == "list":
            shell = self._built[index] = []
            shell.extend(self._value(item) for item in node[1])
            return shell
        if kind == "dict" or kind == "odict":
            shell = self._built[index] = {} if kind == "dict" else OrderedDict()
            for k, v in node[1]:
                shell[self._value(k)] = self._value(v)
            if kind == "odict" and node[2] is not None:
                shell._metadata = self._value(node[2])
            return shell
        if kind == "set":
            shell = self._built[index] = set()
            shell.update(self._value(item) for item in node[1])
            return shell
        if kind in ("tuple", "frozenset"):
            self._built[index] = _BUILDING
            items = [self._value(item) for item in node[1]]
            value = self._built[index] = tuple(items) if kind == "tuple" else frozenset(items)
            return value
        if kind == "dataclass":
            return self._dataclass(index, node)
        if kind in ("stateful", "pickled"):
            return self._unpickled(index, node)
        value = self._built[index] = self._leaf(node)
        return value

    def _leaf(self, node: list) -> Any:
        kind = node[0]
        if kind == "tensor":
            _, storage, view, parameter, requires_grad = node
            return self._storages[storage].torch_view(view, parameter, requires_grad)
        if kind == "ndarray":
            _, storage, view, writeable = node
            return self._storages[storage].numpy_view(view, writeable)
        if kind == "bytearray":
            return bytearray(node[1])
        if kind == "int":
            return int(node[1])
        if kind == "complex":
            return complex(node[1], node[2])
        if kind == "npscalar":
            import numpy as np

            return np.frombuffer(node[2], dtype=np.dtype(node[1]))[0]
        raise CheckpointException(
            "Checkpoint %s: %s holds a value of kind %r that this version of "
            "metaflow-implicit-checkpoint does not know. Upgrade the package."
            % (self._key, self._what, kind)
        )

    def _class(self, index: int) -> type:
        cls = self._classes.get(index)
        if cls is None:
            what = "Checkpoint %s: %s" % (self._key, self._what)
            cls = self._classes[index] = resolve_class(
                self._reader.classes[index], self._allow_pickle, what
            )
        return cls

    def _dataclass(self, index: int, node: list) -> Any:
        cls = self._class(node[1])
        if not dataclasses.is_dataclass(cls):
            raise CheckpointException(
                "Checkpoint %s: %s was saved as a dataclass %s, but %s here is not a "
                "dataclass." % (self._key, self._what, self._reader.class_name(node[1]), cls)
            )
        obj = self._built[index] = cls.__new__(cls)
        for name, wire in node[2]:
            object.__setattr__(obj, name, self._value(wire))
        return obj

    def _unpickled(self, index: int, node: list) -> Any:
        kind, class_index = node[0], node[1]
        payload = node[3] if kind == "stateful" else node[2]
        saved_type = self._reader.class_name(class_index)
        if kind == "stateful" and payload is None:
            raise CheckpointException(
                "Checkpoint %s: %s (a %s) was saved through its state dict only; build a "
                "%s on self before load() and it is restored in place."
                % (self._key, self._what, saved_type, saved_type.rsplit(".", 1)[-1])
            )
        if not self._allow_pickle:
            fix = (
                "build a live %s before load() to restore its state dict in place, or "
                % saved_type.rsplit(".", 1)[-1]
                if kind == "stateful"
                else ""
            )
            raise CheckpointException(
                "Checkpoint %s: %s holds a %s that can only be rebuilt by unpickling, and "
                "load() was called with allow_pickle=False. To load it, %sload with "
                "allow_pickle=True if you trust this checkpoint."
                % (self._key, self._what, saved_type, fix)
            )
        self._built[index] = _BUILDING
        try:
            value = unpickle_with_references(payload, self._node)
        except CheckpointException:
            raise
        except Exception as ex:
            raise CheckpointException(
                "Checkpoint %s: %s (a %s) could not be unpickled (%s: %s). Its class and "
                "the modules it uses must be importable where you load it."
                % (self._key, self._what, saved_type, type(ex).__name__, ex)
            ) from ex
        self._built[index] = value
        return value


def plain_preview(value: Any) -> Tuple[bool, Any]:
    """``(True, value)`` when ``value`` is a short JSON-safe scalar worth showing inline."""
    if value is None or type(value) in (bool, float):
        return True, value
    if type(value) is int and -(2**63) <= value < 2**63:
        return True, value
    if type(value) is str and len(value) <= 200:
        return True, value
    return False, None
