"""Putting a checkpoint's values back: into the objects the user built, or new ones.

Loading follows the shape of what the step built, not the saved one. Before any byte
is read, ``plan_restore`` walks each saved field beside its live value:

- a saved stateful object (module, optimizer, scheduler, scaler, ...) whose live
  counterpart has the same class is restored in place through ``load_state_dict``;
  a live object of another class, a module with other parameters or shapes, or an
  optimizer with other parameter groups is an error naming field, parameter and shapes;
- a saved tensor or array whose live counterpart has the same dtype and shape keeps
  the live object: its bytes are read straight into the live memory when it is a whole
  contiguous buffer (no second copy of a model; on CUDA through a bounded bounce buffer,
  on whatever device the live tensor is), copied in otherwise; a module on the meta
  device is an error (it has no memory to load into);
- lists, tuples, dicts and dataclasses are walked, so models inside a list are
  restored in place too. Everything else is built new.

``apply_restore`` then runs the ``load_state_dict`` calls and copies and sets the
fields, once every value was read, verified and built.
"""

import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .codecs import GraphBuilder, GraphReader
from .errors import CheckpointCorrupted, CheckpointException
from .graph_format import ArrayNode, DataclassNode, DictNode, Ref, SequenceNode, StatefulNode, TensorNode, View
from .tensors import StorageSpec, can_receive_in_place, dtype_name, is_torch_tensor

MISSING = object()


def live_value(target: Any, name: str) -> Any:
    """What ``target`` holds under ``name`` itself (MISSING if nothing).

    On a flow, getattr() of a missing name would fetch a parent artifact from the
    datastore just to be replaced, so only the object's own ``__dict__`` counts.
    """
    holder = getattr(target, "__dict__", None)
    if holder is not None:
        return holder.get(name, MISSING)
    return getattr(target, name, MISSING)


@dataclass
class RestorePlan:
    """Which saved nodes restore into which live objects."""

    live: Dict[int, Any] = field(default_factory=dict)  # node -> live object it becomes
    direct: Dict[int, Any] = field(default_factory=dict)  # storage -> live memory it is read into
    copies: List[Tuple[int, Any, str]] = field(default_factory=list)  # (tensor node, live, what)
    stateful: List[Tuple[int, Any, str]] = field(default_factory=list)  # (node, live, what)


def plan_restore(
    reader: GraphReader,
    storage_specs: List[StorageSpec],
    live_fields: Mapping[str, Any],
    key: str,
) -> RestorePlan:
    """Match the saved fields to the live values (``MISSING`` where there is none)."""
    planner = _Planner(reader, storage_specs, key)
    for name, live in live_fields.items():
        planner.match(reader.fields[name], live, "self.%s" % name)
    planner.bind_live_parameters()
    return planner.plan


class _Planner:
    def __init__(self, reader: GraphReader, specs: List[StorageSpec], key: str):
        self.reader = reader
        self.specs = specs
        self.key = key
        self.plan = RestorePlan()
        self._visited = set()
        self._live_parameters: Dict[int, Any] = {}  # data_ptr -> a live module's Parameter/buffer

    def match(self, wire: Any, live: Any, what: str, in_state: bool = False) -> None:
        if live is MISSING or live is None or not isinstance(wire, Ref):
            return
        index = wire.index
        if index in self._visited:
            return
        self._visited.add(index)
        node = self.reader.node(index, what)
        if isinstance(node, StatefulNode):
            self._stateful(index, node, live, what)
        elif isinstance(node, TensorNode):
            self._tensor(index, node, live, what, in_state)
        elif isinstance(node, ArrayNode):
            self._array(index, node, live, what)
        elif (
            isinstance(node, SequenceNode)
            and node.kind in ("list", "tuple")
            and type(live).__name__ == node.kind
            and len(live) == len(node.items)
        ):
            for i, (item, live_item) in enumerate(zip(node.items, live)):
                self.match(item, live_item, "%s[%d]" % (what, i), in_state)
        elif isinstance(node, DictNode) and isinstance(live, dict):
            for k, v in node.items:
                if not isinstance(k, Ref) and k in live:
                    self.match(v, live[k], "%s[%r]" % (what, k), in_state)
        elif isinstance(node, DataclassNode) and _class_of(live) == self.reader.class_name(node.class_index):
            holder = getattr(live, "__dict__", {})
            for name, v in node.attributes:
                self.match(v, holder.get(name, MISSING), "%s.%s" % (what, name), in_state)

    def _stateful(self, index: int, node: StatefulNode, live: Any, what: str) -> None:
        if not callable(getattr(live, "load_state_dict", None)):
            return  # not a stateful object: the saved one replaces it
        saved_class = self.reader.class_name(node.class_index)
        if _class_of(live) != saved_class:
            raise CheckpointException(
                "Checkpoint %s: %s is a live %s, but the checkpoint holds a %s. Build the "
                "same type as when it was saved, or delete %s before load() to get the "
                "saved object back." % (self.key, what, _class_of(live), saved_class, what)
            )
        torch = sys.modules.get("torch")
        state = node.state
        if torch is not None and isinstance(live, torch.nn.Module):
            self._check_materialized(live, what)
            self._check_module(live, state, what)
            for tensor in list(live.parameters()) + list(live.buffers()):
                if not _uninitialized(tensor):
                    self._live_parameters.setdefault(tensor.data_ptr(), tensor)
        if torch is not None and isinstance(live, torch.optim.Optimizer):
            self._check_optimizer(live, state, what)
        self.plan.live[index] = live
        self.plan.stateful.append((index, live, what))
        self.match(state, live.state_dict(), "%s.state_dict()" % what, in_state=True)

    def bind_live_parameters(self) -> None:
        """Saved parameters whose bytes go into a live module's memory become that
        module's own Parameter objects, wherever else they appear (an optimizer rebuilt
        from the checkpoint then steps the live model, not a look-alike)."""
        if not self._live_parameters:
            return
        for index in range(self.reader.node_count):
            if index in self.plan.live:
                continue
            try:
                node = self.reader.node(index)
            except CheckpointCorrupted:
                continue  # building the field that holds it fails, naming the field
            if not isinstance(node, TensorNode) or node.storage not in self.plan.direct or node.view.offset != 0:
                continue
            candidate = self._live_parameters.get(self.plan.direct[node.storage].data_ptr())
            if candidate is not None and _same_layout(node.view, candidate) and not (node.conj or node.neg):
                if node.parameter == isinstance(candidate, sys.modules["torch"].nn.Parameter):
                    self.plan.live[index] = candidate

    def _tensor(self, index: int, node: TensorNode, live: Any, what: str, in_state: bool) -> None:
        storage, view = node.storage, node.view
        if not is_torch_tensor(live) or _uninitialized(live) or not _same_layout(view, live) or node.conj != live.is_conj():
            return
        if self._receives_storage(storage, view, live):
            self.plan.direct[storage] = live
            self.plan.live[index] = live
        elif not in_state:
            # load_state_dict copies a state's tensors itself; a plain field is copied
            # into the live tensor here, so whoever holds it sees the restored values.
            self.plan.live[index] = live
            self.plan.copies.append((index, live, what))

    def _array(self, index: int, node: ArrayNode, live: Any, what: str) -> None:
        np = sys.modules.get("numpy")
        storage, view = node.storage, node.view
        if np is None or type(live) is not np.ndarray or not live.flags.writeable:
            return
        if live.dtype.str != view.dtype or list(live.shape) != list(view.shape):
            return
        self.plan.live[index] = live
        if self._receives_storage(storage, view, live):
            self.plan.direct[storage] = live
        else:
            self.plan.copies.append((index, live, what))

    def _receives_storage(self, storage: int, view: View, live: Any) -> bool:
        """The view is its whole storage, and ``live`` can take the bytes in place."""
        nbytes = self.specs[storage].nbytes
        if storage in self.plan.direct or view.offset != 0 or not _contiguous(view, live):
            return False
        return can_receive_in_place(live, nbytes)

    def _check_materialized(self, live: Any, what: str) -> None:
        """A module built on the meta device has no memory to load into: load_state_dict
        would leave it empty without a word."""
        on_meta = [name for name, t in live.state_dict().items() if is_torch_tensor(t) and t.is_meta]
        if on_meta:
            raise CheckpointException(
                "Checkpoint %s: %s is on the meta device (%s has no memory), so nothing can "
                "be loaded into it. Materialize it first, e.g. %s.to_empty(device=\"cpu\") or "
                "device=\"cuda\", then load." % (self.key, what, _names(on_meta), what)
            )

    def _check_module(self, live: Any, state: Any, what: str) -> None:
        saved = self._tensors_of_state(state, what)
        if saved is None:
            return
        current = live.state_dict()
        missing = [k for k in current if k not in saved]
        unexpected = [k for k in saved if k not in current]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append("the live %s has %s, which the checkpoint lacks" % (
                    type(live).__name__, _names(missing)))
            if unexpected:
                parts.append("the checkpoint has %s, which the live %s lacks" % (
                    _names(unexpected), type(live).__name__))
            raise CheckpointException(
                "Checkpoint %s: %s does not match the saved model: %s. Build the model "
                "as it was when saved." % (self.key, what, "; ".join(parts))
            )
        for name, tensor in current.items():
            view = saved[name]
            if view is not None and is_torch_tensor(tensor) and not _uninitialized(tensor) and not _same_layout(view, tensor):
                raise CheckpointException(
                    "Checkpoint %s: %s parameter %r is %s %s in the checkpoint but %s %s in "
                    "the live model. Build the model as it was when saved."
                    % (self.key, what, name, view.dtype, list(view.shape),
                       dtype_name(tensor), list(tensor.shape))
                )

    def _check_optimizer(self, live: Any, state: Any, what: str) -> None:
        groups = self._plain(self._entry(state, "param_groups"))
        if not isinstance(groups, list):
            return
        saved_sizes = [_count(self._plain(self._entry(g, "params"))) for g in groups]
        live_sizes = [len(g["params"]) for g in live.param_groups]
        if saved_sizes != live_sizes:
            raise CheckpointException(
                "Checkpoint %s: %s was saved with parameter groups of sizes %s, but the live "
                "%s has groups of sizes %s. Build the optimizer over the same parameters as "
                "when it was saved." % (self.key, what, saved_sizes, type(live).__name__, live_sizes)
            )

    def _tensors_of_state(self, state: Any, what: str) -> Optional[Dict[str, Optional[View]]]:
        """``{key: tensor view or None}`` of a saved module state dict."""
        node = self.reader.node(state.index, what) if isinstance(state, Ref) else None
        if not isinstance(node, DictNode):
            return None
        found = {}
        for k, v in node.items:
            tensor = self.reader.node(v.index, what) if isinstance(v, Ref) else None
            found[k] = tensor.view if isinstance(tensor, TensorNode) else None
        return found

    def _entry(self, wire: Any, name: str) -> Any:
        node = self._plain(wire)
        if isinstance(node, DictNode):
            for k, v in node.items:
                if k == name:
                    return v
        return None

    def _plain(self, wire: Any) -> Any:
        """A list or tuple node's items, or the node itself for other kinds (no values
        built)."""
        if not isinstance(wire, Ref):
            return wire
        node = self.reader.node(wire.index)
        return list(node.items) if isinstance(node, SequenceNode) and node.kind in ("list", "tuple") else node


def _uninitialized(tensor: Any) -> bool:
    """A lazy module's parameter before its first forward: it has no memory or shape."""
    lazy = getattr(sys.modules["torch"].nn.parameter, "UninitializedTensorMixin", ())
    return isinstance(tensor, lazy)


def _count(items: Any) -> int:
    return len(items) if isinstance(items, list) else 0


def _names(keys: List[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:5])
    return shown + (" and %d more" % (len(keys) - 5) if len(keys) > 5 else "")


def _class_of(obj: Any) -> str:
    cls = type(obj)
    return "%s.%s" % (cls.__module__, cls.__qualname__)


def _same_layout(view: View, live: Any) -> bool:
    return view.dtype == dtype_name(live) and list(view.shape) == list(live.shape)


def _contiguous(view: View, live: Any) -> bool:
    shape, strides = view.shape, view.strides
    itemsize = live.element_size() if is_torch_tensor(live) else live.itemsize
    expected, step = [], 1 if is_torch_tensor(live) else itemsize
    for size in reversed(shape):
        expected.append(step)
        step *= size
    expected.reverse()
    return all(s == e for s, e, n in zip(strides, expected, shape) if n > 1)


def build_values(
    builder: GraphBuilder, reader: GraphReader, names: List[str], plan: RestorePlan
) -> Tuple[Dict[str, Any], List[Tuple[Any, Any, str]], List[Tuple[Any, Any, str]]]:
    """Every value a load needs, built (nothing live is changed yet).

    Returns the field values, the ``(live object, state, what)`` calls to make, and the
    ``(live tensor, new value, what)`` copies to make.
    """
    values = {name: builder.build(reader.fields[name], "self.%s" % name) for name in names}
    calls = []
    for index, live, what in plan.stateful:
        state_wire = reader.node(index).state
        calls.append((live, builder.build(state_wire, "%s.state_dict()" % what), what))
    copies = [(live, builder.build_new(index, what), what) for index, live, what in plan.copies]
    return values, calls, copies


def apply_restore(
    target: Any,
    values: Dict[str, Any],
    calls: List[Tuple[Any, Any, str]],
    copies: List[Tuple[Any, Any, str]],
    key: str,
) -> None:
    """Restore live objects in place, then set every field on ``target``."""
    for live, state, what in calls:
        try:
            live.load_state_dict(state)
        except Exception as ex:
            raise CheckpointException(
                "Checkpoint %s: %s.load_state_dict() failed (%s: %s); %s may be partly "
                "restored. Was it built differently than when it was saved?"
                % (key, what, type(ex).__name__, ex, what)
            ) from ex
    for live, value, _ in copies:
        _copy_into(live, value)
    if target is not None:
        for name, value in values.items():
            setattr(target, name, value)


def _copy_into(live: Any, value: Any) -> None:
    if is_torch_tensor(live):
        import torch

        with torch.no_grad():
            live.copy_(value)
    else:
        import numpy as np

        np.copyto(live, value)
