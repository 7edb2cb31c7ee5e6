"""Damaged data is never trusted: resume points, listing, dedup and verify check blobs."""

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from s3_server import s3_server  # noqa: F401  (fixture)
from engine_helpers import State, local_store, make_session
from metaflow_extensions.implicit_checkpoint.engine.keys import CheckpointKey
from metaflow_extensions.implicit_checkpoint.engine.manifest import StorageLayout
from metaflow_extensions.implicit_checkpoint.engine.session import SessionOptions
from metaflow_extensions.implicit_checkpoint.engine.store import CheckpointStore
from metaflow_extensions.implicit_checkpoint.engine.verify import verify_checkpoints


def blob_file(root, store, artifact, only_in=None):
    """The path of a blob of ``artifact`` (one no checkpoint in ``only_in`` references)."""
    blobs = set(store.read_manifest(CheckpointKey.parse(artifact.key)).storage.blobs)
    for other in only_in or ():
        blobs -= set(store.read_manifest(CheckpointKey.parse(other.key)).storage.blobs)
    digest = sorted(blobs)[0]
    return digest, os.path.join(root, store.blob_path("UnitFlow", digest))


def two_checkpoints(tmp_path):
    store = local_store(tmp_path)
    state = State()
    state.weights = np.arange(400_000.0)
    session = make_session(store, state)
    first = session.save(metadata={"n": 1})
    state.weights = state.weights + 1
    second = session.save(metadata={"n": 2})
    return store, first, second


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_damaged_newest_checkpoint_is_passed_over_and_listed_as_damaged(tmp_path, caplog, damage):
    store, first, second = two_checkpoints(tmp_path)
    digest, path = blob_file(tmp_path, store, second, only_in=[first])
    if damage == "delete":
        os.remove(path)
    else:
        open(path, "wb").close()

    retry = make_session(local_store(tmp_path), State(), attempt=1)
    assert retry.loaded.key == first.key
    warning = caplog.text
    assert second.key in warning and digest in warning and "'weights'" in warning
    loaded = State()
    make_session(local_store(tmp_path), loaded, attempt=1).load()
    assert np.array_equal(loaded.weights, np.arange(400_000.0))

    listed = {a.key: a for a in retry.list()}
    assert listed[first.key].intact and listed[first.key].damage is None
    assert not listed[second.key].intact
    assert digest in listed[second.key].damage and "'weights'" in listed[second.key].damage


def test_a_truncated_blob_is_rewritten_by_the_next_save_of_its_content(tmp_path):
    store, first, second = two_checkpoints(tmp_path)
    digest, path = blob_file(tmp_path, store, second, only_in=[first])
    open(path, "wb").close()  # what a machine crash with fsync off can leave

    state = State()
    state.weights = np.arange(400_000.0) + 1  # the same content, in a new process
    again = make_session(local_store(tmp_path), state, task_id="2").save()
    assert again.implicit_manifest["bytes_written"] > 0
    assert os.path.getsize(path) == 400_000 * 8
    loaded = State()
    make_session(local_store(tmp_path), loaded, attempt=1, task_id="2").load(again)
    assert np.array_equal(loaded.weights, state.weights)


@pytest.mark.s3
def test_dedup_on_s3_rewrites_an_emptied_blob(s3_server):
    root = s3_server.new_root()
    state = State()
    state.weights = np.arange(400_000.0)
    store = CheckpointStore(s3_server.backend(root))
    saved = make_session(store, state).save()
    blobs = store.read_manifest(CheckpointKey.parse(saved.key)).storage.blobs
    (digest,) = [d for d, size in blobs.items() if size == 400_000 * 8]
    store.backend.write(store.blob_path("UnitFlow", digest), [b""], durable=True)

    again = make_session(CheckpointStore(s3_server.backend(root)), state, task_id="2").save()
    assert again.implicit_manifest["bytes_written"] == 400_000 * 8
    loaded = State()
    make_session(CheckpointStore(s3_server.backend(root)), loaded, attempt=1, task_id="2").load(again)
    assert np.array_equal(loaded.weights, state.weights)


def test_verify_finds_altered_bytes_and_repair_lets_the_next_save_rewrite_them(tmp_path):
    store, first, second = two_checkpoints(tmp_path)
    digest, path = blob_file(tmp_path, store, second, only_in=[first])
    with open(path, "r+b") as f:  # same size, other bytes: only reading finds it
        f.seek(1000)
        f.write(b"\xff" * 8)
    keys = [CheckpointKey.parse(a.key) for a in (first, second)]

    report = verify_checkpoints(local_store(tmp_path), "UnitFlow", keys)
    assert [v.intact for v in report.checkpoints] == [True, False]
    (damage,) = report.checkpoints[1].damages
    assert damage.blob == digest and damage.fields == ("weights",) and "altered" in damage.problem
    assert os.path.exists(path)  # nothing deleted without repair

    repaired = verify_checkpoints(local_store(tmp_path), "UnitFlow", keys, repair=True)
    assert repaired.repaired_blobs == [digest] and not os.path.exists(path)

    state = State()
    state.weights = np.arange(400_000.0) + 1
    make_session(local_store(tmp_path), state, task_id="2").save()
    after = verify_checkpoints(local_store(tmp_path), "UnitFlow", keys)
    assert [v.intact for v in after.checkpoints] == [True, True]
    loaded = State()
    make_session(local_store(tmp_path), loaded, attempt=1).load(second)
    assert np.array_equal(loaded.weights, state.weights)


def test_a_frozen_tensor_whose_blob_was_repaired_away_is_stored_again(tmp_path):
    """Change tracking reuses an unchanged tensor's blob without writing it; once that
    blob was deleted (verify --repair), the next blocking save stores it again."""
    torch.manual_seed(0)
    state = State()
    state.frozen = torch.randn(512, 1024)
    state.step = 0
    store = local_store(tmp_path)
    session = make_session(store, state, options=SessionOptions(track_changes=True))
    first = session.save()
    storage = store.read_manifest(CheckpointKey.parse(first.key)).storage
    (index,) = storage.fields["frozen"]["tensors"]
    digest = storage.tensors[index][-1][0][0]  # the frozen tensor's first blob
    path = os.path.join(tmp_path, store.blob_path("UnitFlow", digest))
    with open(path, "r+b") as f:
        f.write(b"\x00" * 16)
    verify_checkpoints(local_store(tmp_path), "UnitFlow", [CheckpointKey.parse(first.key)], repair=True)
    assert not os.path.exists(path)

    state.step = 1
    second = session.save()  # the frozen tensor is unchanged: its blob is gone
    assert os.path.exists(path)
    loaded = State()
    make_session(local_store(tmp_path), loaded, attempt=1).load(second)
    assert torch.equal(loaded.frozen, state.frozen)


def test_blobs_are_traced_to_fields_in_the_object_graph_format_too():
    """Manifests whose fields are an object graph (tensors per field, the graph in a
    blob of its own when large) trace blobs to fields as well."""
    from metaflow_extensions.implicit_checkpoint.engine.integrity import fields_by_blob

    storage = StorageLayout(
        blobs={"g": 2000, "t0": 100, "t1": 100, "r": 10},
        tensors=[["spec", [["t0", 0, 100]]], ["spec", [["t1", 0, 100]]], ["spec", [["r", 0, 10]]]],
        graph=[["g", 0, 2000]],
        fields={"model": {"tensors": [0, 1]}, "step": {"tensors": []}},
        rng={"tensors": [2]},
    )
    manifest = SimpleNamespace(storage=storage)
    assert fields_by_blob(manifest) == {
        "g": ["model", "step"], "t0": ["model"], "t1": ["model"], "r": ["<rng state>"],
    }
