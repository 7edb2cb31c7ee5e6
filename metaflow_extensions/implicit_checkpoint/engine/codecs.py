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
unpacks only the nodes it needs), the fields, and the RNG state. graph_format.py holds
the records of each node kind, their wire form, and the checks a stored graph passes.
"""

import dataclasses
import sys
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union

import msgpack

from . import notices
from .errors import CheckpointCorrupted, CheckpointException, CheckpointSerializationError
from .graph_format import (
    ArrayNode,
    BigIntNode,
    BytearrayNode,
    ClassRef,
    ComplexNode,
    DataclassNode,
    DictNode,
    Node,
    NumpyScalarNode,
    PickledNode,
    Ref,
    SequenceNode,
    StatefulNode,
    TensorNode,
    Value,
    pack_node,
    unpack_document,
    unpack_node,
    value_wire,
)
from .pickling import (
    class_ref,
    new_instance,
    pickle_with_references,
    resolve_class,
    set_attribute,
    unpickle_with_references,
)
from .tensors import StorageBuffer, StorageSpec, StorageTable, is_tensor_like, is_torch_tensor
from .validation import MAX_DEPTH, InvalidRecord

MSGPACK = "msgpack"  # plain data only
TENSORS = "tensors"  # plain data and tensors/arrays
STATE_DICT = "state_dict"  # stateful objects (loadable into live objects without pickle)
PICKLE = "cloudpickle"  # needs unpickling to load

_INT64 = (-(2**63), 2**64)
#: Python frames one level of nesting takes while encoding or building a graph.
_FRAMES_PER_LEVEL = 6
_recursion_lock = threading.Lock()
_recursion_users = [0, 0]  # how many encodes/builds are running, the limit before them


@contextmanager
def deep_recursion() -> Iterator[None]:
    """Room for values nested ``MAX_DEPTH`` levels deep: Python's default limit (1000
    frames) stops at about 170 levels of encoding. Only Python frames recurse here (no
    C code in between), so a higher limit costs no C stack."""
    with _recursion_lock:
        if _recursion_users[0] == 0:
            _recursion_users[1] = sys.getrecursionlimit()
            sys.setrecursionlimit(max(_recursion_users[1], MAX_DEPTH * _FRAMES_PER_LEVEL + 1000))
        _recursion_users[0] += 1
    try:
        yield
    finally:
        with _recursion_lock:
            _recursion_users[0] -= 1
            if _recursion_users[0] == 0:
                sys.setrecursionlimit(_recursion_users[1])


@contextmanager
def ordinary_recursion() -> Iterator[None]:
    """Inside ``deep_recursion``, the room Python normally gives, for pickle: it
    recurses in C, where a raised limit would let a deep object overflow the C stack
    instead of raising RecursionError."""
    raised = sys.getrecursionlimit()
    depth, frame = 0, sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    sys.setrecursionlimit(min(raised, depth + (_recursion_users[1] or raised)))
    try:
        yield
    finally:
        sys.setrecursionlimit(raised)


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


class _TooDeep(Exception):
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
        with deep_recursion():
            return self._encode(fields, rng_state)

    def _encode(self, fields: Mapping[str, Any], rng_state: Optional[dict]) -> EncodedGraph:
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
                "fields": {name: value_wire(root) for name, root in roots.items()},
                "rng": value_wire(rng_wire),
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
        except (RecursionError, _TooDeep):
            raise CheckpointSerializationError(
                "Cannot checkpoint self.%s%s (type %s): it is nested more than %d levels "
                "deep." % (name, where, type_name(value), MAX_DEPTH),
                field=name,
            )

    def _reserve(self, obj: Any) -> int:
        index = len(self._nodes)
        self._nodes.append(None)
        self._children.append(set())
        self._memo[id(obj)] = index
        self._keep.append(obj)
        return index

    def _value(self, obj: Any) -> Value:
        """``obj`` as a value of the graph: inline, or a reference to its node."""
        if _inline(obj):
            return obj
        return Ref(self._index(obj))

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
        if len(self._stack) >= MAX_DEPTH:
            raise _TooDeep()
        self._stack.append(index)
        try:
            node = self._node(index, obj)
        finally:
            self._stack.pop()
        self._nodes[index] = pack_node(node)

    def _node(self, index: int, obj: Any) -> Node:
        t = type(obj)
        if is_tensor_like(obj):
            storage, view = self.table.add(obj)
            self._storage_of[index] = storage
            if is_torch_tensor(obj):
                return TensorNode(
                    storage, view, t is sys.modules["torch"].nn.Parameter, bool(obj.requires_grad),
                    conj=bool(obj.is_conj()), neg=bool(obj.is_neg()),
                )
            return ArrayNode(storage, view, bool(obj.flags.writeable))
        if t in (tuple, frozenset):
            self._immutable_in_progress.add(index)
            try:
                return SequenceNode(t.__name__, tuple([self._value(item) for item in obj]))
            finally:
                self._immutable_in_progress.discard(index)
        if t in (list, set):
            return SequenceNode(t.__name__, tuple([self._value(item) for item in obj]))
        if t is dict:
            return DictNode(tuple([(self._value(k), self._value(v)) for k, v in obj.items()]))
        if t is OrderedDict:
            items = tuple([(self._value(k), self._value(v)) for k, v in obj.items()])
            return DictNode(items, True, self._value(getattr(obj, "_metadata", None)))
        if t is bytearray:
            return BytearrayNode(bytes(obj))
        if t is int:
            return BigIntNode(str(obj))
        if t is complex:
            return ComplexNode(obj.real, obj.imag)
        if _is_numpy_scalar(obj):
            return NumpyScalarNode(obj.dtype.str, obj.tobytes())
        if is_stateful(obj):
            state = self._state_dict(obj)
            if state is not None:
                self._stateful.add(index)
                return StatefulNode(self._class(t), self._value(state), self._skeleton(obj))
        if dataclasses.is_dataclass(obj):
            attributes = tuple([(k, self._value(v)) for k, v in instance_attributes(obj)])
            return DataclassNode(self._class(t), attributes)
        self._pickled.add(index)
        return PickledNode(self._class(t), self._pickle(obj, required=True))

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
            with ordinary_recursion():
                return pickle_with_references(obj, self._reference_in_pickle)
        except Exception as ex:
            if not required or isinstance(ex, (_ImmutableCycle, RecursionError, _TooDeep)):
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
            self._classes.append(class_ref(cls).to_wire())
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


# -- reading a graph back -----------------------------------------------------------------


class GraphReader:
    """A stored graph document, checked: its top level at once, each node on first use
    (graph_format.py). A malformed or out-of-bounds record is CheckpointCorrupted naming
    the checkpoint and the record.

    ``storages`` are the checkpoint's storage specs: a view is checked against its
    storage's kind and size before any tensor or array is made of it.
    """

    def __init__(self, document: bytes, storages: Sequence[StorageSpec], key: str):
        self.key = key
        with self._checked():
            parsed, self._bounds = unpack_document(document, [(s.kind, s.nbytes) for s in storages])
        self.classes: List[ClassRef] = parsed.classes
        self._packed: List[bytes] = parsed.packed_nodes
        self._nodes: Dict[int, Node] = {}
        self.fields: Dict[str, Value] = parsed.fields
        self.rng: Value = parsed.rng

    @contextmanager
    def _checked(self, what: Optional[str] = None) -> Iterator[None]:
        try:
            yield
        except InvalidRecord as ex:
            raise CheckpointCorrupted(
                "Checkpoint %s: %sits object graph is invalid: %s. The checkpoint was altered "
                "or damaged; load an earlier one." % (self.key, "%s: " % what if what else "", ex),
                key=self.key,
                field=what,
            ) from None

    @property
    def node_count(self) -> int:
        return len(self._packed)

    def node(self, index: int, what: Optional[str] = None) -> Node:
        """Node ``index``, checked on first use; ``what`` (the field it belongs to, say)
        names it in the error if it is invalid."""
        node = self._nodes.get(index)
        if node is None:
            with self._checked(what):
                node = unpack_node(self._packed[index], index, self._bounds)
            self._nodes[index] = node
        return node

    def class_name(self, index: int) -> str:
        return self.classes[index].name


_BUILDING = object()


class GraphBuilder:
    """Builds values from a graph, with the bytes of its storages already read.

    ``live`` maps nodes to the live objects they restore into (restore.py decides);
    everything else is built new. With ``allow_pickle=False`` nothing is unpickled, no
    module is imported and no code of a class runs: dataclasses are made without their
    constructor and their declared fields set straight into the instance; a stateful
    object without a live one comes back as its state dict; a value that needs
    unpickling raises, naming the field.
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
        self._depth = 0

    def build(self, wire: Value, what: str) -> Any:
        """The value of ``wire`` (a field's root, say); ``what`` names it in errors."""
        self._what = what
        if not isinstance(wire, Ref):
            return wire
        with deep_recursion():
            return self._node(wire.index)

    def build_new(self, index: int, what: str) -> Any:
        """Node ``index`` built new even if it restores into a live object."""
        self._what = what
        with deep_recursion():
            return self._make(index, self._reader.node(index, self._what))

    def _corrupted(self, problem: str) -> CheckpointCorrupted:
        return CheckpointCorrupted(
            "Checkpoint %s: %s %s. The checkpoint was altered or damaged; load an earlier "
            "one." % (self._key, self._what, problem),
            key=self._key,
            field=self._what,
        )

    def _value(self, wire: Value) -> Any:
        return self._node(wire.index) if isinstance(wire, Ref) else wire

    def _node(self, index: int) -> Any:
        if index in self._live:
            return self._live[index]
        built = self._built.get(index, None)
        if built is _BUILDING:
            node = self._reader.node(index, self._what)
            if isinstance(node, (StatefulNode, PickledNode)):
                raise CheckpointException(
                    "Checkpoint %s: %s holds objects that refer to each other through "
                    "pickled state and can only be restored into live objects. Build them "
                    "before load() so they are restored in place." % (self._key, self._what)
                )
            raise self._corrupted("holds a tuple or frozenset that contains itself (node %d), which no save writes" % index)
        if index in self._built:
            return built
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise self._corrupted("is nested more than %d levels deep" % MAX_DEPTH)
            return self._make(index, self._reader.node(index, self._what))
        finally:
            self._depth -= 1

    def _make(self, index: int, node: Node) -> Any:
        try:
            return self._make_unchecked(index, node)
        except TypeError as ex:  # an unhashable set item or dict key: no save writes one
            if isinstance(node, (SequenceNode, DictNode)):
                raise self._corrupted("holds a set item or dict key that cannot be hashed (node %d: %s)" % (index, ex))
            raise

    def _make_unchecked(self, index: int, node: Node) -> Any:
        if isinstance(node, SequenceNode):
            if node.kind == "list":
                shell = self._built[index] = []
                for item in node.items:
                    shell.append(self._value(item))
                return shell
            if node.kind == "set":
                shell = self._built[index] = set()
                for item in node.items:
                    shell.add(self._value(item))
                return shell
            self._built[index] = _BUILDING
            items = [self._value(item) for item in node.items]
            value = self._built[index] = tuple(items) if node.kind == "tuple" else frozenset(items)
            return value
        if isinstance(node, DictNode):
            shell = self._built[index] = OrderedDict() if node.ordered else {}
            for k, v in node.items:
                shell[self._value(k)] = self._value(v)
            if node.ordered and node.metadata is not None:
                shell._metadata = self._value(node.metadata)
            return shell
        if isinstance(node, DataclassNode):
            return self._dataclass(index, node)
        if isinstance(node, StatefulNode):
            if self._allow_pickle:
                return self._unpickled(index, node, node.skeleton)
            # Without pickling, a stateful object with no live one to restore into
            # comes back as its state dict, as torch.load(weights_only=True) would.
            value = self._built[index] = self._value(node.state)
            return value
        if isinstance(node, PickledNode):
            return self._unpickled(index, node, node.payload)
        value = self._built[index] = self._leaf(node)
        return value

    def _leaf(self, node: Node) -> Any:
        try:
            return self._leaf_unchecked(node)
        except (RuntimeError, ValueError, TypeError) as ex:  # torch or numpy refused the view
            raise self._corrupted("holds a %s that cannot be made (%s: %s)" % (
                type(node).__name__, type(ex).__name__, ex))

    def _leaf_unchecked(self, node: Node) -> Any:
        if isinstance(node, TensorNode):
            return self._storages_of(node).torch_view(node)
        if isinstance(node, ArrayNode):
            return self._storages_of(node).numpy_view(node.view, node.writeable)
        if isinstance(node, BytearrayNode):
            return bytearray(node.data)
        if isinstance(node, BigIntNode):
            return int(node.text)
        if isinstance(node, ComplexNode):
            return complex(node.real, node.imag)
        if isinstance(node, NumpyScalarNode):
            import numpy as np

            return np.frombuffer(node.data, dtype=np.dtype(node.dtype))[0]
        raise AssertionError("unhandled node %r" % (node,))

    def _storages_of(self, node: Union[TensorNode, ArrayNode]) -> StorageBuffer:
        buffer = self._storages.get(node.storage)
        if buffer is None:
            raise self._corrupted(
                "refers to storage %d, which the checkpoint's layout does not list for it" % node.storage
            )
        return buffer

    def _class(self, index: int) -> type:
        cls = self._classes.get(index)
        if cls is None:
            what = "Checkpoint %s: %s" % (self._key, self._what)
            cls = self._classes[index] = resolve_class(
                self._reader.classes[index], self._allow_pickle, what
            )
        return cls

    def _dataclass(self, index: int, node: DataclassNode) -> Any:
        cls = self._class(node.class_index)
        what = "Checkpoint %s: %s" % (self._key, self._what)
        obj = self._built[index] = new_instance(cls, self._reader.class_name(node.class_index), self._allow_pickle, what)
        for name, wire in node.attributes:
            set_attribute(obj, cls, name, self._value(wire), self._allow_pickle, what)
        return obj

    def _unpickled(self, index: int, node: Union[StatefulNode, PickledNode], payload: Optional[bytes]) -> Any:
        saved_type = self._reader.class_name(node.class_index)
        if isinstance(node, StatefulNode) and payload is None:
            raise CheckpointException(
                "Checkpoint %s: %s (a %s) was saved through its state dict only; build a "
                "%s on self before load() and it is restored in place."
                % (self._key, self._what, saved_type, saved_type.rsplit(".", 1)[-1])
            )
        if not self._allow_pickle:
            raise CheckpointException(
                "Checkpoint %s: %s holds a %s that can only be rebuilt by unpickling, and "
                "load() was called with allow_pickle=False. To load it, load with "
                "allow_pickle=True if you trust this checkpoint." % (self._key, self._what, saved_type)
            )
        self._built[index] = _BUILDING
        try:
            with ordinary_recursion():
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
