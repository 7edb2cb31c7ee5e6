"""Memory made ready before it is needed: the staging buffer mapped ahead, so a resumed
task's first background save, or the first of a step that saved in the background in an
earlier run, only copies. Engine tier: no flow; no timing is asserted
(benchmarks/headline.py measures)."""

import numpy as np
import pytest

from metaflow_extensions.implicit_checkpoint.engine.session import AttributeSource, CheckpointSession, TaskIdentity
from metaflow_extensions.implicit_checkpoint.engine.staging import StagingArea

from engine_helpers import State, local_store, make_session

torch = pytest.importorskip("torch")

MB = 1024 * 1024


def test_a_prepared_buffer_is_the_one_the_next_stage_copies_into():
    area = StagingArea(budget=64 * MB)
    area.prepare(8 * MB)
    source = np.arange(2 * MB, dtype=np.uint8)
    (view,) = area.stage([source], [source.nbytes])
    assert area.capacity == 8 * MB  # the prepared buffer, not one of the 2 MB staged
    assert bytes(view) == source.tobytes()
    bigger = np.arange(9 * MB, dtype=np.uint8) * 3
    (view,) = area.stage([bigger], [bigger.nbytes])  # more than prepared: grown on the spot
    assert area.capacity == 9 * MB and bytes(view) == bigger.tobytes()


def test_prepare_over_the_budget_or_below_the_capacity_maps_nothing():
    area = StagingArea(budget=4 * MB)
    area.prepare(8 * MB)
    source = np.ones(MB, dtype=np.uint8)
    area.stage([source], [source.nbytes])
    assert area.capacity == MB
    area.prepare(MB // 2)  # it already holds that much
    area.stage([source], [source.nbytes])
    assert area.capacity == MB


def test_a_failed_preparation_leaves_stage_to_map_the_buffer(monkeypatch):
    area = StagingArea(budget=64 * MB)
    real_map = area._map

    def no_memory(nbytes):
        raise MemoryError("no memory for %d bytes" % nbytes)

    monkeypatch.setattr(area, "_map", no_memory)
    area.prepare(8 * MB)
    area._prepared.exception()  # the thread is done
    monkeypatch.setattr(area, "_map", real_map)
    source = np.arange(3 * MB, dtype=np.uint8)
    (view,) = area.stage([source], [source.nbytes])
    assert area.capacity == 3 * MB and bytes(view) == source.tobytes()


def test_a_task_resumed_from_a_background_save_has_its_staging_buffer_ready(tmp_path):
    state = State()
    state.weights = torch.arange(3 * MB, dtype=torch.float32)
    state.epoch = 1
    first = make_session(local_store(tmp_path), state)
    first.save(blocking=False)
    first.finish()

    resumed_state = State()
    resumed = make_session(local_store(tmp_path), resumed_state, attempt=1)
    resumed.load()
    staging = resumed._staging
    assert staging is not None, "no staging buffer prepared at resume"
    staged = 12 * MB  # the weights (the RNG state and epoch are smaller than the rest)
    resumed_state.weights.mul_(2)
    resumed.save(blocking=False)
    assert staging.capacity >= staged and staging is resumed._staging
    resumed.finish()

    check_state = State()
    check = make_session(local_store(tmp_path), check_state, attempt=2)
    check.load()
    assert torch.equal(check_state.weights, torch.arange(3 * MB, dtype=torch.float32) * 2)
    check.finish()


def test_a_task_resumed_from_a_blocking_save_maps_no_staging_buffer(tmp_path):
    state = State()
    state.weights = torch.ones(MB)
    first = make_session(local_store(tmp_path), state)
    first.save()
    first.finish()
    resumed = make_session(local_store(tmp_path), State(), attempt=1)
    resumed.load()
    assert resumed._staging is None  # a task that saves synchronously holds no second copy
    resumed.finish()


def test_a_load_into_new_tensors_reads_every_byte(tmp_path):
    state = State()
    state.big = torch.randn(4 * MB)
    state.small = torch.randn(100)
    state.array = np.arange(2 * MB, dtype=np.float64)
    saver = make_session(local_store(tmp_path), state)
    saver.save()
    saver.finish()
    loaded = State()
    reader = make_session(local_store(tmp_path), loaded, attempt=1)
    reader.load()
    assert torch.equal(loaded.big, state.big) and torch.equal(loaded.small, state.small)
    assert np.array_equal(loaded.array, state.array)
    reader.finish()


def _task_of_run(store, state, run_id: str) -> "CheckpointSession":
    session = CheckpointSession(
        store,
        TaskIdentity("UnitFlow", run_id, "train", "1", 0),
        AttributeSource(lambda: dict(vars(state))),
        target=state,
    )
    session.start()
    return session


def _run_saving(tmp_path, run_id: str, blocking: bool) -> None:
    state = State()
    state.weights = torch.arange(3 * MB, dtype=torch.float32)
    session = _task_of_run(local_store(tmp_path), state, run_id)
    session.save(blocking=blocking)
    session.finish()


def _prepared(session) -> tuple:
    """(size, buffer) the staging thread prepared: it is done when this returns."""
    return session._staging._prepared.result(timeout=60)


def test_a_step_saved_in_the_background_before_has_its_buffer_ready_in_its_next_run(tmp_path):
    _run_saving(tmp_path, "1", blocking=False)
    state = State()
    state.weights = torch.zeros(3 * MB)
    task = _task_of_run(local_store(tmp_path), state, "2")
    assert not task.is_loaded  # nothing to resume from: a new run, load_policy="fresh"
    size, (_, _, mapping) = _prepared(task)
    assert size >= 12 * MB  # sized to the earlier run's state
    task.save(blocking=False)
    assert task._staging._mapping is mapping  # the first save copied into it, mapped nothing
    task.finish()
    assert torch.equal(_weights_saved_by(tmp_path, "2"), torch.zeros(3 * MB))


def _weights_saved_by(tmp_path, run_id: str):
    state = State()
    reader = CheckpointSession(
        local_store(tmp_path),
        TaskIdentity("UnitFlow", run_id, "train", "1", 1),
        AttributeSource(lambda: dict(vars(state))),
        target=state,
    )
    reader.start()
    reader.load()
    reader.finish()
    return state.weights


def test_a_step_saved_synchronously_before_maps_nothing_ahead(tmp_path):
    _run_saving(tmp_path, "1", blocking=True)
    task = _task_of_run(local_store(tmp_path), State(), "2")
    assert _prepared(task) == (0, None)
    task.finish()


def test_a_damaged_earlier_manifest_only_means_no_buffer_ahead(tmp_path):
    _run_saving(tmp_path, "1", blocking=False)
    manifests = [p for p in tmp_path.rglob("*") if p.is_file() and "/blobs" not in str(p) and "/1/train/" in str(p)]
    assert manifests
    for path in manifests:
        path.write_bytes(b"\x00garbage" * 7)
    state = State()
    state.weights = torch.ones(3 * MB)
    task = _task_of_run(local_store(tmp_path), state, "2")
    task._staging._prepared.exception(timeout=60)  # done, whatever it found
    task.save(blocking=False)  # maps its own buffer
    task.finish()
    assert torch.equal(_weights_saved_by(tmp_path, "2"), torch.ones(3 * MB))
