"""The engine without a flow: codecs, storage format, integrity, dedup, restore."""

import dataclasses
import random
from collections import OrderedDict

import numpy as np
import pytest
import torch

from s3_server import any_store, s3_server  # noqa: F401  (fixtures)
from engine_helpers import (
    CountingBackend,
    State,
    blob_bytes_on_disk,
    blob_files,
    local_store,
    make_session,
)
from metaflow_extensions.implicit_checkpoint.plugins.metaflow_storage import MetaflowStorageBackend
from metaflow_extensions.implicit_checkpoint.engine.errors import (
    CheckpointCorrupted,
    CheckpointException,
    CheckpointNotFound,
    CheckpointSerializationError,
)
from metaflow_extensions.implicit_checkpoint.engine.keys import CheckpointKey
from metaflow_extensions.implicit_checkpoint.engine.store import CheckpointStore


@dataclasses.dataclass
class Config:
    lr: float
    layers: tuple


class Custom:
    def __init__(self):
        self.weights = np.arange(6.0)
        self.note = "custom"


def roundtrip(tmp_path, **fields):
    saved = State()
    for name, value in fields.items():
        setattr(saved, name, value)
    store = local_store(tmp_path)
    artifact = make_session(store, saved).save()
    loaded = State()
    make_session(store, loaded, attempt=1).load(artifact)
    return artifact, loaded


def test_plain_values_roundtrip_exactly(tmp_path):
    values = dict(
        none=None,
        flag=True,
        number=7,
        huge=2**80,  # beyond 64 bits: stored as its digits, still exact
        real=0.1,
        text="héllo",
        raw=b"\x00\x01",
        nested={"a": [1, (2, 3)], 4: {"b": None}},
        ordered=OrderedDict([("z", 1), ("a", 2)]),
        config=Config(0.1, (64, 32)),
        members={1, 2, 3},
    )
    artifact, loaded = roundtrip(tmp_path, **values)
    for name, value in values.items():
        got = getattr(loaded, name)
        assert got == value and type(got) is type(value), name
    assert type(loaded.nested["a"][1]) is tuple
    assert list(loaded.ordered) == ["z", "a"]
    fields = artifact.implicit_manifest["fields"]
    assert fields["number"]["codec"] == "msgpack" and fields["number"]["value"] == 7
    assert fields["config"]["codec"] == "msgpack"
    assert fields["huge"]["codec"] == "msgpack"
    assert fields["members"]["codec"] == "msgpack"


@pytest.mark.parametrize(
    "dtype",
    [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int64,
     torch.bool, torch.complex64, torch.uint8],
)
def test_torch_tensors_roundtrip_bit_exact(tmp_path, dtype):
    t = (torch.randn(33, 7) * 100).to(dtype)
    _, loaded = roundtrip(tmp_path, t=t, empty=torch.empty(0, 3, dtype=dtype), scalar=t[0, 0].clone())
    assert loaded.t.dtype == dtype and torch.equal(loaded.t, t)
    assert loaded.empty.shape == (0, 3)
    assert loaded.scalar.shape == () and torch.equal(loaded.scalar, t[0, 0])


def test_numpy_and_layout_edge_cases(tmp_path):
    fortran = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    view = torch.arange(20.0).reshape(4, 5).t()  # non-contiguous
    values = dict(
        ints=np.arange(10, dtype=np.int16),
        dates=np.array(["2024-01-01"], dtype="datetime64[D]"),
        text=np.array(["a", "bcd"]),
        fortran=fortran,
        view=view,
        param=torch.nn.Parameter(torch.ones(3)),
        frozen=torch.nn.Parameter(torch.ones(2), requires_grad=False),
        objects=np.array([{"a": 1}, None], dtype=object),  # pickled, not raw
    )
    artifact, loaded = roundtrip(tmp_path, **values)
    for name in ("ints", "dates", "text", "fortran"):
        assert np.array_equal(getattr(loaded, name), values[name])
        assert getattr(loaded, name).dtype == values[name].dtype
    assert torch.equal(loaded.view, view)
    assert type(loaded.param) is torch.nn.Parameter and loaded.param.requires_grad
    assert type(loaded.frozen) is torch.nn.Parameter and not loaded.frozen.requires_grad
    assert list(loaded.objects) == [{"a": 1}, None]
    assert artifact.implicit_manifest["fields"]["ints"]["shape"] == [10]


def test_tensors_and_objects_shared_between_fields_stay_shared(tmp_path):
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    arrays = [np.zeros(3)]
    _, loaded = roundtrip(tmp_path, model=model, optimizer=optimizer, arrays=arrays, same=arrays)
    assert loaded.same is loaded.arrays
    # The optimizer decoded in the same load works on the decoded model's parameters.
    assert loaded.optimizer.param_groups[0]["params"][0] is loaded.model.weight
    assert torch.equal(loaded.model.weight, model.weight)
    assert torch.equal(
        loaded.optimizer.state_dict()["state"][0]["exp_avg"],
        optimizer.state_dict()["state"][0]["exp_avg"],
    )


def test_modules_and_optimizers_are_restored_in_place(tmp_path):
    torch.manual_seed(0)
    saved = State()
    saved.model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1))
    saved.optimizer = torch.optim.SGD(saved.model.parameters(), lr=0.1, momentum=0.9)
    saved.model(torch.randn(5, 4)).sum().backward()
    saved.optimizer.step()
    store = local_store(tmp_path)
    artifact = make_session(store, saved).save()

    fresh = State()
    fresh.model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1))
    fresh.optimizer = torch.optim.SGD(fresh.model.parameters(), lr=0.1, momentum=0.9)
    model_object, weight_object = fresh.model, fresh.model[0].weight
    make_session(store, fresh, attempt=1).load(artifact)
    assert fresh.model is model_object and fresh.model[0].weight is weight_object
    assert torch.equal(fresh.model[0].weight, saved.model[0].weight)
    assert fresh.optimizer.param_groups[0]["params"][0] is weight_object
    assert torch.equal(
        fresh.optimizer.state[weight_object]["momentum_buffer"],
        saved.optimizer.state[saved.model[0].weight]["momentum_buffer"],
    )


def test_rng_state_is_captured_and_restored(tmp_path):
    state = State()
    state.x = 1
    store = local_store(tmp_path)
    artifact = make_session(store, state).save()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    make_session(store, State(), attempt=1).load(artifact)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert artifact.implicit_manifest["rng"] == ["numpy", "python", "torch"]

    make_session(store, State(), attempt=1, rng=False).load(artifact)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) != expected


def test_inspect_reads_no_field_data(tmp_path):
    backend = CountingBackend(str(tmp_path))
    store = CheckpointStore(backend)
    state = State()
    state.model_state = {"w%d" % i: torch.randn(256, 256) for i in range(8)}
    state.big_text = "x" * 100_000
    artifact = make_session(store, state).save()

    reader = make_session(CheckpointStore(backend), State(), attempt=1)
    backend.blob_reads = 0
    manifest = reader.inspect(artifact.key)
    assert backend.blob_reads == 0
    assert manifest == artifact.implicit_manifest
    tensor_bytes = 8 * 256 * 256 * 4
    assert tensor_bytes <= manifest["fields"]["model_state"]["size"] < tensor_bytes + 1000
    assert "value" not in manifest["fields"]["big_text"]  # large values are never inline
    assert "storage" not in manifest
    reader.list()
    assert backend.blob_reads == 0
    reader.load(artifact)
    assert backend.blob_reads > 0


def test_altered_blob_is_detected_and_names_the_field(tmp_path):
    store = local_store(tmp_path)
    state = State()
    state.weights = torch.randn(1024, 1024)  # its own 4 MB blob
    state.epoch = 3
    artifact = make_session(store, state).save()
    (target,) = [p for p in blob_files(tmp_path) if p.stat().st_size == 4 * 1024 * 1024]
    data = bytearray(target.read_bytes())
    data[1234] ^= 0xFF
    target.write_bytes(bytes(data))

    with pytest.raises(CheckpointCorrupted) as info:
        make_session(local_store(tmp_path), State(), attempt=1).load(artifact)
    assert "'weights'" in str(info.value) and artifact.key in str(info.value)
    assert info.value.key == artifact.key


def test_missing_blob_and_damaged_manifest_are_reported(tmp_path):
    store = local_store(tmp_path)
    state = State()
    state.weights = np.ones(300_000)
    artifact = make_session(store, state).save()
    manifest_path = tmp_path / CheckpointStore.manifest_path(CheckpointKey.parse(artifact.key))
    for blob in blob_files(tmp_path):
        blob.unlink()
    with pytest.raises(CheckpointCorrupted, match="missing"):
        make_session(local_store(tmp_path), State(), attempt=1).load(artifact)

    raw = bytearray(manifest_path.read_bytes())
    raw[-5] ^= 0x01
    manifest_path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointCorrupted, match="manifest"):
        local_store(tmp_path).read_manifest(CheckpointKey.parse(artifact.key))
    # A damaged manifest is never listed as a committed checkpoint.
    assert make_session(local_store(tmp_path), State(), attempt=1).list() == []


def test_unchanged_state_adds_no_blob_bytes_and_one_change_adds_its_share(tmp_path):
    state = State()
    state.tensors = {"t%d" % i: torch.randn(512, 1024) for i in range(10)}  # 10 x 2 MB
    state.step = 0
    store = local_store(tmp_path)
    session = make_session(store, state)
    first = session.save()
    after_first = blob_bytes_on_disk(tmp_path)
    assert after_first >= 10 * 2 * 1024 * 1024

    state.step = 1  # only the save's object graph (a few KB) is new
    second = session.save()
    written = second.implicit_manifest["bytes_written"]
    assert blob_bytes_on_disk(tmp_path) == after_first + written
    assert written < 0.001 * after_first
    # What each checkpoint uses vs what it wrote: the difference is dedup's saving.
    assert first.implicit_manifest["bytes_written"] == first.implicit_manifest["bytes_referenced"]
    assert second.implicit_manifest["bytes_referenced"] == first.implicit_manifest["bytes_referenced"]
    after_second = blob_bytes_on_disk(tmp_path)

    original_t3 = state.tensors["t3"]
    state.tensors["t3"] = torch.randn(512, 1024)
    third = session.save()
    added = blob_bytes_on_disk(tmp_path) - after_second
    assert 0.09 * after_first < added < 0.12 * after_first
    assert third.implicit_manifest["bytes_written"] == added
    # Each version still loads its own values.
    old, new = State(), State()
    make_session(local_store(tmp_path), old, attempt=1).load(first)
    make_session(local_store(tmp_path), new, attempt=1).load(third)
    assert torch.equal(old.tensors["t3"], original_t3)
    assert torch.equal(new.tensors["t3"], state.tensors["t3"])


def test_fields_argument_reads_only_those_fields(tmp_path):
    backend = CountingBackend(str(tmp_path))
    state = State()
    state.big = torch.randn(1024, 1024)
    state.small = torch.randn(1024, 1024)
    artifact = make_session(CheckpointStore(backend), state).save()
    from metaflow_extensions.implicit_checkpoint.engine.snapshot import load_snapshot

    store = CheckpointStore(backend)
    manifest = store.read_manifest(CheckpointKey.parse(artifact.key))
    backend.blob_reads = 0
    values, _ = load_snapshot(store, manifest, ["small"])
    assert list(values) == ["small"] and torch.equal(values["small"], state.small)
    assert backend.blob_reads == 1  # the field's one blob (the object graph is inline)
    with pytest.raises(CheckpointException, match="no field.*'nope'"):
        load_snapshot(store, manifest, ["nope"])


def test_metadata_validation(tmp_path):
    state = State()
    state.x = 1
    session = make_session(local_store(tmp_path), state)
    ok = session.save(metadata={"loss": np.float32(0.25), "step": np.int64(3), "ok": True})
    assert ok.metadata == {"loss": 0.25, "step": 3, "ok": True}
    assert type(ok.metadata["step"]) is int
    with pytest.raises(CheckpointSerializationError, match=r"metadata\['loss'\].*item\(\)"):
        session.save(metadata={"loss": torch.tensor([0.5, 0.1])})
    with pytest.raises(CheckpointSerializationError, match="keys must be strings"):
        session.save(metadata={1: "a"})
    with pytest.raises(CheckpointSerializationError, match="must be a dict"):
        session.save(metadata=[1])
    assert [a.version for a in session.list()] == [1]


def test_names_and_keys_cannot_escape(tmp_path):
    session = make_session(local_store(tmp_path), State())
    for bad in ("../x", "a/b", "", ".hidden", "x" * 200, "a\\b", None):
        with pytest.raises(CheckpointException, match="not allowed"):
            session.save(name=bad)
    for bad_key in ("F/1/s/2/0/../5", "F/1/s/2/0/a/b/5", "../../1/s/2/0/n/1", "F/1/s/2/x/n/1"):
        with pytest.raises(CheckpointException):
            session.load(bad_key)
    assert list(tmp_path.rglob("*.manifest")) == []


def test_include_names_must_exist(tmp_path):
    from metaflow_extensions.implicit_checkpoint.engine.fields import FieldSelector

    state = State()
    state.model = 1
    session = make_session(local_store(tmp_path), state, selector=FieldSelector(include=["model", "optimizer"]))
    with pytest.raises(CheckpointException, match="'optimizer'"):
        session.save()


def test_versions_increase_across_attempts_and_resume_finds_newest(tmp_path):
    store = local_store(tmp_path)
    state = State()
    state.n = 0
    first = make_session(store, state)
    for state.n in range(1, 4):
        first.save(name="a" if state.n % 2 else "b")
    second = make_session(local_store(tmp_path), State(), attempt=1)
    assert second.is_loaded and second.loaded.version == 3 and second.loaded.name == "a"
    assert second.save().version == 4
    third = make_session(local_store(tmp_path), State(), attempt=2)
    assert third.loaded.version == 4 and third.loaded.attempt == 1
    none_policy = make_session(local_store(tmp_path), State(), attempt=2, load_policy="none")
    assert not none_policy.is_loaded
    with pytest.raises(CheckpointNotFound, match="load_policy='none'"):
        none_policy.load()


def test_metaflow_storage_backend_roundtrip(tmp_path):
    """The remote-datastore code path, on Metaflow's own local storage implementation."""
    from metaflow.plugins.datastores.local_storage import LocalStorage

    store = CheckpointStore(MetaflowStorageBackend(LocalStorage(str(tmp_path))))
    state = State()
    state.model_state = {"w": torch.randn(600, 1024), "b": torch.randn(10)}
    state.epoch = 5
    artifact = make_session(store, state).save()
    loaded = State()
    reader = make_session(CheckpointStore(MetaflowStorageBackend(LocalStorage(str(tmp_path)))), loaded, attempt=1)
    assert reader.loaded.key == artifact.key
    reader.load()
    assert loaded.epoch == 5 and torch.equal(loaded.model_state["w"], state.model_state["w"])
    assert [a.key for a in reader.list()] == [artifact.key]


def test_eager_matches_step_and_foreach_branch_and_ignores_later_checkpoints(any_store):
    """On local disk and S3 (where the per-run notes eager lists are S3 objects)."""
    from metaflow_extensions.implicit_checkpoint.engine.session import (
        AttributeSource,
        CheckpointSession,
        TaskIdentity,
    )

    def session(run, task, branch, state, attempt=0, policy="fresh", start=True):
        s = CheckpointSession(
            any_store(),
            TaskIdentity("UnitFlow", run, "train", task, attempt, branch),
            AttributeSource(lambda: dict(vars(state))),
            target=state,
            load_policy=policy,
        )
        if start:
            s.start()
        return s

    for run, task, branch, value in (("1", "5", (0,), "r1b0"), ("1", "6", (1,), "r1b1"), ("2", "5", (0,), "r2b0")):
        state = State()
        state.value = value
        session(run, task, branch, state).save()

    state = State()
    eager = session("3", "9", (1,), state, policy="eager", start=False)  # the task starts...
    later = State()
    later.value = "r4b1"
    session("4", "2", (1,), later).save()  # ...a concurrent run commits...
    eager.start()  # ...and that newer checkpoint is not used: only earlier ones are.
    assert eager.loaded.key.startswith("UnitFlow/1/train/6/")
    eager.load()
    assert state.value == "r1b1"
    branch0 = State()
    assert session("3", "8", (0,), branch0, policy="eager").loaded.run_id == "2"
    assert not session("3", "7", (2,), State(), policy="eager").is_loaded
