"""The object graph on the wire: one small typed record per node kind, one pack and one
unpack for each.

A save's graph document is msgpack::

    {"classes": [[module, qualname, by-value bytes or None], ...],
     "nodes":   [packed node, ...],      # each node packed on its own
     "fields":  {field name: value},
     "rng":     value or None}

A *value* (an item, a key, a field's root) is an inline scalar (None, bool, int,
float, str, bytes) or a reference to a node (msgpack extension type 1, the node's
index as 4 little-endian bytes). A node is a list whose first item is its kind:

==============  ======================================================================
kind            record
==============  ======================================================================
``tensor``      ``TensorNode``: a view of a torch storage
``ndarray``     ``ArrayNode``: a view of a numpy storage
``list`` ...    ``SequenceNode``: a list, tuple, set or frozenset of values
``dict``        ``DictNode``: key/value pairs (``odict``: an OrderedDict, with torch's
                ``_metadata``)
``bytearray``   ``BytearrayNode``
``int``         ``BigIntNode``: an int beyond 64 bits, as decimal text
``complex``     ``ComplexNode``
``npscalar``    ``NumpyScalarNode``: dtype string and the scalar's bytes
``stateful``    ``StatefulNode``: class, state dict (a value), pickled skeleton or None
``dataclass``   ``DataclassNode``: class and every instance attribute
``pickled``     ``PickledNode``: class and the cloudpickle payload
==============  ======================================================================

``unpack_node`` is the trust boundary of the graph: every item of a node is checked
(types, counts, reference and class indices in range, dtypes against allow-lists,
views inside their storage) before any code uses it, and a violation raises
``validation.InvalidRecord``.
"""

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Union

import msgpack

from .validation import (
    InvalidRecord,
    MAX_SIZE,
    check_dims,
    check_numpy_scalar_text,
    check_view_bounds,
    describe,
    expect_dict,
    expect_int,
    expect_list,
    expect_str,
    expect_type,
    fail,
    numpy_itemsize,
    torch_itemsize,
)

REF_CODE = 1
#: torch dtypes whose tensors can require gradients (floating point and complex).
GRADIENT_DTYPES = frozenset(
    {"float16", "bfloat16", "float32", "float64", "complex32", "complex64", "complex128"}
)
_INLINE_TYPES = (type(None), bool, int, float, str, bytes)


@dataclass(frozen=True)
class Ref:
    """A reference to node ``index`` of the graph."""

    index: int


Value = Any  # an inline scalar or a Ref


def ref_wire(index: int) -> msgpack.ExtType:
    return msgpack.ExtType(REF_CODE, index.to_bytes(4, "little"))


def value_wire(value: Value) -> Any:
    """A value as stored: a Ref becomes its extension type."""
    return ref_wire(value.index) if isinstance(value, Ref) else value


@dataclass(frozen=True)
class View:
    """Where a tensor or array sits in its storage.

    For a torch tensor ``strides`` and ``offset`` count elements (``tensor.stride()``,
    ``storage_offset()``); for a numpy array they count bytes (``array.strides``, the
    distance from the storage's start).
    """

    dtype: str
    shape: Tuple[int, ...]
    strides: Tuple[int, ...]
    offset: int

    def to_wire(self) -> list:
        return [self.dtype, list(self.shape), list(self.strides), self.offset]


@dataclass(frozen=True)
class TensorNode:
    storage: int
    view: View
    parameter: bool  # a torch.nn.Parameter
    requires_grad: bool
    conj: bool = False  # a conjugate view (x.conj()): the storage holds x's values
    neg: bool = False  # a negative view (torch's lazy negation)

    def to_wire(self) -> list:
        wire = ["tensor", self.storage, self.view.to_wire(), self.parameter, self.requires_grad]
        bits = [name for name, on in (("conj", self.conj), ("neg", self.neg)) if on]
        if bits:  # written only when set, so other tensors' bytes are as before
            wire.append(bits)
        return wire


@dataclass(frozen=True)
class ArrayNode:
    storage: int
    view: View
    writeable: bool

    def to_wire(self) -> list:
        return ["ndarray", self.storage, self.view.to_wire(), self.writeable]


SEQUENCE_KINDS = ("list", "tuple", "set", "frozenset")


@dataclass(frozen=True)
class SequenceNode:
    kind: str  # one of SEQUENCE_KINDS
    items: Tuple[Value, ...]

    def to_wire(self) -> list:
        return [self.kind, [value_wire(v) for v in self.items]]


@dataclass(frozen=True)
class DictNode:
    items: Tuple[Tuple[Value, Value], ...]
    ordered: bool = False  # an OrderedDict
    metadata: Value = None  # an OrderedDict's _metadata (torch state dicts)

    def to_wire(self) -> list:
        items = [[value_wire(k), value_wire(v)] for k, v in self.items]
        if self.ordered:
            return ["odict", items, value_wire(self.metadata)]
        return ["dict", items]


@dataclass(frozen=True)
class BytearrayNode:
    data: bytes

    def to_wire(self) -> list:
        return ["bytearray", self.data]


@dataclass(frozen=True)
class BigIntNode:
    text: str  # decimal

    def to_wire(self) -> list:
        return ["int", self.text]


@dataclass(frozen=True)
class ComplexNode:
    real: float
    imag: float

    def to_wire(self) -> list:
        return ["complex", self.real, self.imag]


@dataclass(frozen=True)
class NumpyScalarNode:
    dtype: str
    data: bytes

    def to_wire(self) -> list:
        return ["npscalar", self.dtype, self.data]


@dataclass(frozen=True)
class StatefulNode:
    class_index: int
    state: Value
    skeleton: Optional[bytes]  # the object pickled, to rebuild it with no live one

    def to_wire(self) -> list:
        return ["stateful", self.class_index, value_wire(self.state), self.skeleton]


@dataclass(frozen=True)
class DataclassNode:
    class_index: int
    attributes: Tuple[Tuple[str, Value], ...]

    def to_wire(self) -> list:
        return ["dataclass", self.class_index, [[k, value_wire(v)] for k, v in self.attributes]]


@dataclass(frozen=True)
class PickledNode:
    class_index: int
    payload: bytes

    def to_wire(self) -> list:
        return ["pickled", self.class_index, self.payload]


Node = Union[
    TensorNode, ArrayNode, SequenceNode, DictNode, BytearrayNode, BigIntNode, ComplexNode,
    NumpyScalarNode, StatefulNode, DataclassNode, PickledNode,
]


@dataclass(frozen=True)
class ClassRef:
    """A class in the graph's class table: by reference, and by value for classes of the
    flow file or defined inside a function."""

    module: str
    qualname: str
    by_value: Optional[bytes] = None

    def to_wire(self) -> list:
        return [self.module, self.qualname, self.by_value]

    @property
    def name(self) -> str:
        return "%s.%s" % (self.module, self.qualname)


def pack_node(node: Node) -> bytes:
    return msgpack.packb(node.to_wire(), use_bin_type=True)


# -- unpacking: the checks ------------------------------------------------------------


@dataclass(frozen=True)
class GraphBounds:
    """What the rest of the checkpoint says a graph may refer to."""

    node_count: int
    class_count: int
    storages: Sequence[Tuple[str, int]]  # per storage: (kind, bytes)


def _ext_hook(code: int, data: bytes) -> Any:
    if code != REF_CODE or len(data) != 4:
        raise InvalidRecord("holds an extension value (code %d, %d bytes) that is not a node reference" % (code, len(data)))
    return Ref(int.from_bytes(data, "little"))


def unpack_msgpack(data: Any, where: str) -> Any:
    """msgpack bytes of the graph, with references as Ref; any malformation (a bad
    byte, nesting beyond msgpack's limit, an unhashable map key) is InvalidRecord."""
    if not isinstance(data, (bytes, bytearray)):
        fail(where, "is %s, not packed bytes" % describe(data))
    try:
        return msgpack.unpackb(bytes(data), ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except InvalidRecord as ex:
        fail(where, str(ex))
    except Exception as ex:  # msgpack's own: ExtraData, FormatError, StackError, ValueError, TypeError
        fail(where, "is not valid msgpack (%s: %s)" % (type(ex).__name__, ex))


def check_value(value: Any, bounds: GraphBounds, where: str) -> Value:
    if isinstance(value, Ref):
        if not 0 <= value.index < bounds.node_count:
            fail(where, "refers to node %d of a graph of %d nodes" % (value.index, bounds.node_count))
        return value
    if not isinstance(value, _INLINE_TYPES):
        fail(where, "is %s, not a value (an inline scalar or a node reference)" % describe(value))
    return value


def _values(items: Any, bounds: GraphBounds, where: str) -> Tuple[Value, ...]:
    return tuple(check_value(v, bounds, "%s[%d]" % (where, i)) for i, v in enumerate(expect_list(items, where)))


def _pairs(items: Any, bounds: GraphBounds, where: str) -> Tuple[Tuple[Value, Value], ...]:
    pairs = []
    for i, pair in enumerate(expect_list(items, where)):
        k, v = expect_list(pair, "%s[%d]" % (where, i), length=2)
        pairs.append((check_value(k, bounds, "%s[%d] key" % (where, i)), check_value(v, bounds, "%s[%d] value" % (where, i))))
    return tuple(pairs)


def _class_index(value: Any, bounds: GraphBounds, where: str) -> int:
    return expect_int(value, where + " class", 0, bounds.class_count - 1)


def _storage(value: Any, kind: str, bounds: GraphBounds, where: str) -> Tuple[int, int]:
    index = expect_int(value, where + " storage", 0, len(bounds.storages) - 1) if bounds.storages else None
    if index is None:
        fail(where, "refers to storage %s, but the checkpoint has none" % describe(value))
    stored_kind, nbytes = bounds.storages[index]
    if stored_kind != kind:
        fail(where, "is a %s view of storage %d, which holds %s data" % (kind, index, stored_kind))
    return index, nbytes


def _view(wire: Any, kind: str, nbytes: int, where: str) -> View:
    dtype, shape, strides, offset = expect_list(wire, where + " view", length=4)
    if kind == "torch":
        itemsize = unit = torch_itemsize(dtype, where + " dtype")  # strides count elements
        shape, strides = check_dims(shape, strides, where)
        if any(s < 0 for s in strides):
            fail(where, "has negative strides %s, which torch tensors never have" % list(strides))
    else:
        itemsize, unit = numpy_itemsize(dtype, where + " dtype"), 1
        shape, strides = check_dims(shape, strides, where)
    offset = expect_int(offset, where + " offset", -MAX_SIZE, MAX_SIZE)
    elements = 1
    for n in shape:
        elements = min(elements * n, MAX_SIZE + 1)
    if elements > MAX_SIZE:
        fail(where, "has %s elements" % "x".join(map(str, shape)))
    check_view_bounds(shape, strides, offset, itemsize, unit, nbytes, where)
    return View(dtype, shape, strides, offset)


def _flag(value: Any, where: str) -> bool:
    return expect_type(value, (bool,), where)


def _tensor(wire: list, bounds: GraphBounds, where: str) -> TensorNode:
    expect_list(wire, where, max_length=6)
    if len(wire) not in (5, 6):
        fail(where, "has %d items, expected 5 or 6" % len(wire))
    storage, nbytes = _storage(wire[1], "torch", bounds, where)
    view = _view(wire[2], "torch", nbytes, where)
    bits = expect_list(wire[5], where + " flags", max_length=2) if len(wire) == 6 else []
    for bit in bits:
        if bit not in ("conj", "neg"):
            fail(where + " flags", "hold %s, not 'conj' or 'neg'" % describe(bit))
    requires_grad = _flag(wire[4], where + " requires_grad")
    if requires_grad and view.dtype not in GRADIENT_DTYPES:
        fail(where, "requires grad, which a %s tensor cannot" % view.dtype)
    return TensorNode(
        storage, view, _flag(wire[3], where + " parameter"), requires_grad,
        conj="conj" in bits, neg="neg" in bits,
    )


def _array(wire: list, bounds: GraphBounds, where: str) -> ArrayNode:
    _, storage, view, writeable = expect_list(wire, where, length=4)
    storage, nbytes = _storage(storage, "numpy", bounds, where)
    return ArrayNode(storage, _view(view, "numpy", nbytes, where), _flag(writeable, where + " writeable"))


def _sequence(wire: list, bounds: GraphBounds, where: str) -> SequenceNode:
    kind, items = expect_list(wire, where, length=2)
    return SequenceNode(kind, _values(items, bounds, where + " items"))


def _dict(wire: list, bounds: GraphBounds, where: str) -> DictNode:
    if wire[0] == "odict":
        _, items, metadata = expect_list(wire, where, length=3)
        return DictNode(_pairs(items, bounds, where + " items"), True, check_value(metadata, bounds, where + " metadata"))
    _, items = expect_list(wire, where, length=2)
    return DictNode(_pairs(items, bounds, where + " items"))


def _bytearray(wire: list, bounds: GraphBounds, where: str) -> BytearrayNode:
    _, data = expect_list(wire, where, length=2)
    return BytearrayNode(expect_type(data, (bytes,), where + " data"))


def _big_int(wire: list, bounds: GraphBounds, where: str) -> BigIntNode:
    _, text = expect_list(wire, where, length=2)
    text = expect_str(text, where + " digits", max_length=4300)  # Python's own int-from-text limit
    if not (text.lstrip("-").isdigit() and text.isascii()):
        fail(where, "holds %s, not an integer's digits" % describe(text))
    return BigIntNode(text)


def _complex(wire: list, bounds: GraphBounds, where: str) -> ComplexNode:
    _, real, imag = expect_list(wire, where, length=3)
    return ComplexNode(expect_type(real, (float,), where + " real"), expect_type(imag, (float,), where + " imag"))


def _numpy_scalar(wire: list, bounds: GraphBounds, where: str) -> NumpyScalarNode:
    _, dtype, data = expect_list(wire, where, length=3)
    itemsize = numpy_itemsize(dtype, where + " dtype")
    expect_type(data, (bytes,), where + " data")
    if len(data) != itemsize:
        fail(where, "holds %d bytes for a %s scalar of %d bytes" % (len(data), dtype, itemsize))
    check_numpy_scalar_text(dtype, data, where + " data")
    return NumpyScalarNode(dtype, data)


def _optional_bytes(value: Any, where: str) -> Optional[bytes]:
    return None if value is None else expect_type(value, (bytes,), where)


def _stateful(wire: list, bounds: GraphBounds, where: str) -> StatefulNode:
    _, cls, state, skeleton = expect_list(wire, where, length=4)
    return StatefulNode(
        _class_index(cls, bounds, where), check_value(state, bounds, where + " state"),
        _optional_bytes(skeleton, where + " skeleton"),
    )


def _dataclass(wire: list, bounds: GraphBounds, where: str) -> DataclassNode:
    _, cls, attributes = expect_list(wire, where, length=3)
    pairs = []
    for i, pair in enumerate(expect_list(attributes, where + " attributes")):
        name, value = expect_list(pair, "%s attribute %d" % (where, i), length=2)
        name = expect_str(name, "%s attribute %d name" % (where, i), max_length=256)
        pairs.append((name, check_value(value, bounds, "%s attribute %r" % (where, name))))
    return DataclassNode(_class_index(cls, bounds, where), tuple(pairs))


def _pickled(wire: list, bounds: GraphBounds, where: str) -> PickledNode:
    _, cls, payload = expect_list(wire, where, length=3)
    return PickledNode(_class_index(cls, bounds, where), expect_type(payload, (bytes,), where + " payload"))


_UNPACKERS = {
    "tensor": _tensor,
    "ndarray": _array,
    "dict": _dict,
    "odict": _dict,
    "bytearray": _bytearray,
    "int": _big_int,
    "complex": _complex,
    "npscalar": _numpy_scalar,
    "stateful": _stateful,
    "dataclass": _dataclass,
    "pickled": _pickled,
}
_UNPACKERS.update({kind: _sequence for kind in SEQUENCE_KINDS})


def unpack_node(data: Any, index: int, bounds: GraphBounds) -> Node:
    """Node ``index`` from its packed bytes, checked. Raises InvalidRecord."""
    where = "node %d" % index
    wire = unpack_msgpack(data, where)
    if not isinstance(wire, list) or not wire:
        fail(where, "is %s, not a node" % describe(wire))
    unpacker = _UNPACKERS.get(wire[0]) if isinstance(wire[0], str) else None
    if unpacker is None:
        raise InvalidRecord(
            "%s is of kind %s, which this version of metaflow-implicit-checkpoint does not "
            "know (a newer version wrote it, or it was altered)" % (where, describe(wire[0]))
        )
    return unpacker(wire, bounds, where)


def unpack_class(wire: Any, index: int) -> ClassRef:
    where = "class %d" % index
    module, qualname, by_value = expect_list(wire, where, length=3)
    module = expect_str(module, where + " module", max_length=512)
    qualname = expect_str(qualname, where + " name", max_length=512)
    if not all(part.isidentifier() for part in module.split(".")):
        fail(where, "names the module %s, which is not a module name" % describe(module))
    if not all(part.isidentifier() or part == "<locals>" for part in qualname.split(".")):
        fail(where, "names the class %s, which is not a class name" % describe(qualname))
    return ClassRef(module, qualname, _optional_bytes(by_value, where + " by-value copy"))


@dataclass
class GraphDocument:
    """A graph document's top level, checked; nodes stay packed until used."""

    classes: List[ClassRef]
    packed_nodes: List[bytes]
    fields: dict  # field name -> Value
    rng: Value


def unpack_document(data: bytes, storages: Sequence[Tuple[str, int]]) -> Tuple[GraphDocument, GraphBounds]:
    """The top level of a graph document, checked. Raises InvalidRecord."""
    parsed = expect_dict(unpack_msgpack(data, "the object graph"), "the object graph")
    for name in ("classes", "nodes", "fields"):
        if name not in parsed:
            fail("the object graph", "has no %r" % name)
    nodes = expect_list(parsed["nodes"], "the graph's nodes", max_length=MAX_SIZE)
    for i, packed in enumerate(nodes):
        expect_type(packed, (bytes,), "node %d" % i)
    classes = [unpack_class(wire, i) for i, wire in enumerate(expect_list(parsed["classes"], "the class table"))]
    bounds = GraphBounds(len(nodes), len(classes), tuple(storages))
    fields = {}
    for name, value in expect_dict(parsed["fields"], "the graph's fields").items():
        expect_str(name, "a field name", max_length=1024)
        fields[name] = check_value(value, bounds, "field %r" % name)
    rng = check_value(parsed.get("rng"), bounds, "the RNG state")
    return GraphDocument(classes, nodes, fields, rng), bounds
