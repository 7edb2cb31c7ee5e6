"""Resume fidelity without a flow: exact types, shared objects, in-place restore, safe loads.

Flow-level versions (classes in the flow file, SIGKILL, notebook process) are in
test_fidelity_flows.py.
"""

import array
import dataclasses
import datetime
import decimal
import enum
import fractions
import pathlib
import uuid
from collections import Counter, OrderedDict, defaultdict, deque, namedtuple

import numpy as np
import pytest
import torch

from engine_helpers import CountingBackend, State, local_store, make_session
from metaflow_extensions.implicit_checkpoint.engine.errors import (
    CheckpointException,
    CheckpointSerializationError,
)
from metaflow_extensions.implicit_checkpoint.engine.keys import CheckpointKey
from metaflow_extensions.implicit_checkpoint.engine.store import CheckpointStore


@dataclasses.dataclass
class Config:
    lr: float
    layers: tuple

    def __post_init__(self):
        self.derived = self.lr * 2  # an attribute outside the declared fields


@dataclasses.dataclass(frozen=True)
class FrozenPoint:
    x: int
    y: int


@dataclasses.dataclass
class Slotted:
    __slots__ = ("a", "b")
    a: int
    b: list


class Color(enum.Enum):
    RED = 1
    GREEN = 2


Pair = namedtuple("Pair", "left right")


class Net(torch.nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.fc1 = torch.nn.Linear(4, width)
        self.bn = torch.nn.BatchNorm1d(width)
        self.fc2 = torch.nn.Linear(width, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


class Counter2:
    """A user class following the state_dict protocol."""

    def __init__(self):
        self.count = 0

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def save_and_load(tmp_path, fields, into=None, **load_kwargs):
    saved = State()
    for name, value in fields.items():
        setattr(saved, name, value)
    store = local_store(tmp_path)
    artifact = make_session(store, saved, rng=False).save()
    loaded = into if into is not None else State()
    make_session(local_store(tmp_path), loaded, attempt=1, rng=False).load(artifact, **load_kwargs)
    return artifact, loaded


def local_dataclass():
    @dataclasses.dataclass
    class Local:
        value: int

    return Local(5)


VALUES = {
    "none": None,
    "true": True,
    "int": 7,
    "negative": -(2**63),
    "big": 2**80,
    "float": 0.1,
    "nan_free_inf": float("inf"),
    "complex": 1 + 2j,
    "text": "héllo",
    "bytes": b"\x00\x01",
    "bytearray": bytearray(b"abc"),
    "list": [1, [2, 3]],
    "tuple": (1, (2, "x")),
    "empty_tuple": (),
    "dict": {"a": 1, 4: {"b": None}, (1, 2): "tuple key"},
    "ordered": OrderedDict([("z", 1), ("a", 2)]),
    "set": {1, 2, 3},
    "frozenset": frozenset({"a", "b"}),
    "config": Config(0.1, (64, 32)),
    "frozen": FrozenPoint(1, 2),
    "slotted": Slotted(1, [2]),
    "local_dataclass": local_dataclass(),
    "np_scalar": np.float32(1.5),
    "np_int": np.int64(-3),
    "np_bool": np.bool_(True),
    "np_array": np.arange(6, dtype=np.int16).reshape(2, 3),
    "np_fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    "np_empty": np.zeros((0, 3)),
    "tensor": torch.arange(6, dtype=torch.float32).reshape(2, 3),
    "bf16": torch.randn(3, dtype=torch.bfloat16),
    "bool_tensor": torch.tensor([True, False]),
    "param": torch.nn.Parameter(torch.ones(2)),
    "frozen_param": torch.nn.Parameter(torch.ones(2), requires_grad=False),
    "transposed": torch.arange(6.0).reshape(2, 3).t(),
    "enum": Color.GREEN,
    "namedtuple": Pair(1, [2]),
    "counter": Counter("aab"),
    "defaultdict": defaultdict(list, {"k": [1]}),
    "deque": deque([1, 2], maxlen=5),
    "date": datetime.date(2026, 11, 25),
    "decimal": decimal.Decimal("1.10"),
    "fraction": fractions.Fraction(1, 3),
    "uuid": uuid.UUID(int=5),
    "path": pathlib.PurePosixPath("/a/b"),
    "array": array.array("d", [1.0, 2.0]),
    "range": range(3, 10, 2),
    "slice": slice(1, 5),
}


def _same(got, want):
    if isinstance(want, torch.Tensor):
        return (
            type(got) is type(want)
            and got.dtype == want.dtype
            and torch.equal(got, want)
            and got.requires_grad == want.requires_grad
            and got.stride() == want.stride()
        )
    if isinstance(want, np.ndarray):
        return (
            type(got) is np.ndarray
            and got.dtype == want.dtype
            and np.array_equal(got, want)
            and got.flags.writeable == want.flags.writeable
        )
    if dataclasses.is_dataclass(want):
        return type(got).__qualname__ == type(want).__qualname__ and all(
            getattr(got, a) == getattr(want, a) for a in dir(want) if not a.startswith("__")
        )
    return type(got) is type(want) and got == want


def test_every_value_type_round_trips_with_its_exact_type(tmp_path):
    _, loaded = save_and_load(tmp_path, VALUES)
    for name, want in VALUES.items():
        got = getattr(loaded, name)
        assert _same(got, want), (name, got, want)
    assert loaded.config.derived == 0.2
    assert loaded.deque.maxlen == 5 and loaded.defaultdict["new"] == []
    assert type(loaded.tuple[1]) is tuple and type(loaded.namedtuple) is Pair


def test_readonly_arrays_stay_readonly(tmp_path):
    frozen = np.arange(4.0)
    frozen.flags.writeable = False
    _, loaded = save_and_load(tmp_path, {"frozen": frozen, "from_bytes": np.frombuffer(b"abcd", np.uint8)})
    assert not loaded.frozen.flags.writeable and np.array_equal(loaded.frozen, frozen)
    assert not loaded.from_bytes.flags.writeable


def test_sharing_across_and_inside_fields_is_kept(tmp_path):
    shared = [1, 2]
    base = torch.arange(12.0)
    array = np.arange(10.0)
    fields = {
        "a": {"x": shared, "y": shared},
        "b": shared,
        "base": base,
        "view": base[2:8].view(2, 3),
        "both": (base, base[::2]),
        "array": array,
        "array_view": array[3:],
        "cycle": None,
    }
    cycle = [0]
    cycle.append(cycle)
    fields["cycle"] = cycle
    _, loaded = save_and_load(tmp_path, fields)
    assert loaded.a["x"] is loaded.a["y"] is loaded.b
    assert loaded.view.untyped_storage().data_ptr() == loaded.base.untyped_storage().data_ptr()
    loaded.base[2] = 100.0
    assert loaded.view[0, 0] == 100.0 and loaded.both[1][1] == 100.0
    assert loaded.both[0] is loaded.base
    loaded.array[3] = -1.0
    assert loaded.array_view[0] == -1.0
    assert loaded.cycle[1] is loaded.cycle


def test_modules_optimizers_schedulers_restore_in_place_and_stay_linked(tmp_path):
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for _ in range(3):
        model(torch.randn(5, 4)).sum().backward()
        optimizer.step()
        scheduler.step()
    fields = {"model": model, "optimizer": optimizer, "scheduler": scheduler,
              "scaler": scaler, "counter": Counter2()}
    fields["counter"].count = 9

    torch.manual_seed(1)
    live = State()
    live.model = Net()
    live.optimizer = torch.optim.Adam(live.model.parameters(), lr=0.1)
    live.scheduler = torch.optim.lr_scheduler.StepLR(live.optimizer, step_size=1, gamma=0.5)
    live.scaler = torch.amp.GradScaler("cpu")
    live.counter = Counter2()
    before = {name: getattr(live, name) for name in fields}
    pointers = [p.data_ptr() for p in live.model.parameters()]
    save_and_load(tmp_path, fields, into=live)

    for name in fields:
        assert getattr(live, name) is before[name], name  # the objects the step built
    assert [p.data_ptr() for p in live.model.parameters()] == pointers  # read in place
    for got, want in zip(live.model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(got, want)
    assert live.scheduler.optimizer is live.optimizer
    assert live.optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] == 0.1 * 0.5**3
    assert live.scaler.get_scale() == scaler.get_scale() and live.counter.count == 9
    # The restored pair keeps training: a step moves the live model.
    w = live.model.fc1.weight.detach().clone()
    live.model(torch.randn(5, 4)).sum().backward()
    live.optimizer.step()
    assert not torch.equal(w, live.model.fc1.weight)


def test_without_live_objects_the_graph_comes_back_linked(tmp_path):
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    _, loaded = save_and_load(tmp_path, {"model": model, "optimizer": optimizer, "scheduler": scheduler})
    assert type(loaded.model) is Net
    assert loaded.scheduler.optimizer is loaded.optimizer
    params = list(loaded.model.parameters())
    assert all(a is b for a, b in zip(loaded.optimizer.param_groups[0]["params"], params))


def test_an_optimizer_rebuilt_from_the_checkpoint_steps_the_live_model(tmp_path):
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    live = State()
    live.model = Net()  # the step builds the model only; the optimizer comes back
    save_and_load(tmp_path, {"model": model, "optimizer": optimizer}, into=live)
    params = list(live.model.parameters())
    assert all(a is b for a, b in zip(live.optimizer.param_groups[0]["params"], params))
    w = live.model.fc1.weight.detach().clone()
    live.model(torch.randn(5, 4)).sum().backward()
    live.optimizer.step()
    assert not torch.equal(w, live.model.fc1.weight)


def test_a_list_of_models_with_one_optimizer_restores_in_place(tmp_path):
    models = [Net(), Net()]
    optimizer = torch.optim.SGD([p for m in models for p in m.parameters()], lr=0.5)
    live = State()
    live.models = [Net(), Net()]
    live.optimizer = torch.optim.SGD([p for m in live.models for p in m.parameters()], lr=0.5)
    kept = list(live.models)
    save_and_load(tmp_path, {"models": models, "optimizer": optimizer}, into=live)
    assert live.models[0] is kept[0] and live.models[1] is kept[1]
    assert torch.equal(live.models[1].fc2.weight, models[1].fc2.weight)
    w = live.models[1].fc2.weight.detach().clone()
    sum(m(torch.randn(3, 4)).sum() for m in live.models).backward()
    live.optimizer.step()
    assert not torch.equal(w, live.models[1].fc2.weight)


def test_a_changed_optimizer_type_is_a_clear_error_and_nothing_changes(tmp_path):
    model = Net()
    saved = {"epoch": 3, "model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.1)}
    live = State()
    live.epoch = 0
    live.model = Net()
    live.optimizer = torch.optim.Adam(live.model.parameters())
    weights = live.model.fc1.weight.detach().clone()
    with pytest.raises(CheckpointException, match=r"self.optimizer is a live torch.optim.adam.Adam.*torch.optim.sgd.SGD"):
        save_and_load(tmp_path, saved, into=live)
    assert live.epoch == 0 and torch.equal(live.model.fc1.weight, weights)


def test_a_model_built_with_other_shapes_is_a_clear_error(tmp_path):
    live = State()
    live.model = Net(width=16)
    with pytest.raises(CheckpointException, match=r"self.model parameter 'fc1.weight' is float32 \[8, 4\].*\[16, 4\]"):
        save_and_load(tmp_path, {"model": Net(width=8)}, into=live)


def test_parametrized_and_compiled_modules(tmp_path):
    from torch.nn.utils import parametrizations

    model = parametrizations.weight_norm(torch.nn.Linear(3, 2))
    with torch.no_grad():
        model.parametrizations.weight.original1.mul_(3)
    live = State()
    live.model = parametrizations.weight_norm(torch.nn.Linear(3, 2))
    save_and_load(tmp_path, {"model": model}, into=live)
    assert torch.equal(live.model.weight, model.weight)
    # torch refuses to pickle a parametrized module: without a live one, a clear error.
    with pytest.raises(CheckpointException, match=r"state dict only; build a ParametrizedLinear"):
        save_and_load(tmp_path / "fresh", {"model": model})

    compiled = torch.compile(Net())
    live.compiled = torch.compile(Net())
    save_and_load(tmp_path / "compiled", {"compiled": compiled}, into=live)
    assert torch.equal(live.compiled.fc1.weight, compiled.fc1.weight)


def test_allow_pickle_false_loads_a_training_state_and_refuses_pickles(tmp_path):
    model = Net()
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 4)).sum().backward()
    optimizer.step()
    fields = {"model": model, "optimizer": optimizer, "epoch": 4, "config": Config(0.1, (1,)),
              "history": [0.5, 0.25], "weights": np.ones(3)}
    live = State()
    live.model = Net()
    live.optimizer = torch.optim.Adam(live.model.parameters())
    _, loaded = save_and_load(tmp_path, fields, into=live, allow_pickle=False)
    assert loaded.epoch == 4 and loaded.config.lr == 0.1 and loaded.history == [0.5, 0.25]
    assert torch.equal(loaded.optimizer.state_dict()["state"][0]["exp_avg"],
                       optimizer.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(CheckpointException, match=r"self.odd holds a collections.deque.*allow_pickle=False"):
        save_and_load(tmp_path / "b", {"odd": deque([1])}, allow_pickle=False)
    # Without a live model to restore into, a safe load returns its state dict, as
    # torch.load(weights_only=True) would.
    saved_model = Net()
    _, notebook = save_and_load(tmp_path / "c", {"model": saved_model}, allow_pickle=False)
    assert isinstance(notebook.model, dict)
    assert notebook.model.keys() == saved_model.state_dict().keys()
    assert all(torch.equal(notebook.model[k], v) for k, v in saved_model.state_dict().items())


def test_writes_behind_the_version_counter_are_saved_by_default(tmp_path):
    ema = torch.zeros(1000)
    state = State()
    state.ema = ema
    store = local_store(tmp_path)
    session = make_session(store, state, rng=False)
    saved = []
    for step in range(10):
        ema.data.add_(1.0)  # an EMA update through .data does not bump _version
        saved.append(session.save())
    for step, artifact in enumerate(saved):
        loaded = State()
        make_session(local_store(tmp_path), loaded, attempt=1, rng=False).load(artifact)
        assert float(loaded.ema[0]) == step + 1


def test_an_unpicklable_attribute_says_what_works(tmp_path):
    import threading

    state = State()
    state.lock = threading.Lock()
    with pytest.raises(CheckpointSerializationError) as info:
        make_session(local_store(tmp_path), state).save()
    message = str(info.value)
    assert "self.lock" in message and "del self.lock" in message and "self._lock" in message


def test_resume_into_a_live_model_reads_no_second_copy(tmp_path):
    backend = CountingBackend(str(tmp_path))
    model = torch.nn.Linear(1024, 1024)
    state = State()
    state.model = model
    artifact = make_session(CheckpointStore(backend), state, rng=False).save()
    live = State()
    live.model = torch.nn.Linear(1024, 1024)
    pointer = live.model.weight.data_ptr()
    torch_allocated = []
    original_empty = torch.empty

    def counting_empty(*args, **kwargs):
        result = original_empty(*args, **kwargs)
        torch_allocated.append(result.numel() * result.element_size())
        return result

    torch.empty = counting_empty
    try:
        make_session(CheckpointStore(backend), live, attempt=1, rng=False).load(artifact)
    finally:
        torch.empty = original_empty
    assert live.model.weight.data_ptr() == pointer
    assert torch.equal(live.model.weight, model.weight)
    assert sum(torch_allocated) < 0.01 * 4 * 1024 * 1024


def test_checkpoints_of_format_1_still_load(tmp_path):
    """tests/fixtures/format_v1 was written by 0.1.0 (format 1): nothing saved is lost."""
    import shutil
    from pathlib import Path

    fixture = Path(__file__).parent / "fixtures" / "format_v1"
    root = tmp_path / "store"
    shutil.copytree(fixture, root)
    expected = torch.load(root / "expected.pt")
    store = CheckpointStore(CountingBackend(str(root)))
    key = "OldFlow/1/train/1/0/checkpoint/1"
    assert store.read_manifest(CheckpointKey.parse(key)).format_version == 1
    live = State()
    live.model = torch.nn.Linear(4, 3)
    model = live.model
    session = make_session(store, live, attempt=1)
    session.load(key)
    assert live.model is model
    for name, value in expected["model"].items():
        assert torch.equal(live.model.state_dict()[name], value)
    assert live.epoch == 3 and live.history == [0.5, (1, 2)] and live.same is live.history
    assert list(live.ordered) == ["b", "a"]
    assert np.array_equal(live.weights, np.arange(12.0).reshape(3, 4))
    assert torch.equal(live.tensor, torch.arange(6, dtype=torch.bfloat16))
    assert torch.equal(
        live.optimizer.state_dict()["state"][0]["momentum_buffer"],
        expected["optimizer"]["state"][0]["momentum_buffer"],
    )
