"""Small tensors deduplicate across runs: their packs hold no RNG state (layout.RNG_GROUP),
so a save whose tensors equal another run's writes only what differs. Engine tier."""

import pytest

from metaflow_extensions.implicit_checkpoint.engine.layout import RNG_GROUP, plan_blobs
from metaflow_extensions.implicit_checkpoint.engine.session import AttributeSource, CheckpointSession, TaskIdentity

from engine_helpers import State, local_store

torch = pytest.importorskip("torch")


def trained_model():
    """A small model (every tensor packed) and Adam after one step, the same every call."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 64)).sum().backward()
    optimizer.step()
    return model, optimizer


def first_save_of_a_run(root, run_id: str, rng_seed: int) -> dict:
    model, optimizer = trained_model()
    torch.manual_seed(rng_seed)  # the run's RNG state: what the save captures with rng=True
    state = State()
    state.model, state.optimizer, state.epoch = model, optimizer, 1
    session = CheckpointSession(
        local_store(root), TaskIdentity("UnitFlow", run_id, "train", "1", 0),
        AttributeSource(lambda: dict(vars(state))), target=state,
    )
    session.start()
    manifest = session.save().implicit_manifest
    session.finish()
    return manifest


def test_another_runs_save_of_the_same_tensors_writes_only_its_rng_state(tmp_path):
    first = first_save_of_a_run(tmp_path, "1", rng_seed=1)
    other_rng = first_save_of_a_run(tmp_path, "2", rng_seed=2)
    same_rng = first_save_of_a_run(tmp_path, "3", rng_seed=1)
    rng_bytes = torch.get_rng_state().numel()
    tensor_bytes = sum(p.numel() * p.element_size() for p in trained_model()[0].parameters())
    assert first["bytes_written"] > tensor_bytes
    # The torch and numpy generators' states (and the graph, if it differs), not the tensors.
    assert rng_bytes <= other_rng["bytes_written"] < first["bytes_written"] // 4
    assert same_rng["bytes_written"] == 0


def test_buffers_of_the_rng_group_are_never_packed_with_others():
    buffers = [memoryview(bytes([i]) * 100) for i in range(5)]
    groups = [None, None, RNG_GROUP, RNG_GROUP, None]
    blobs, extents = plan_blobs(buffers, [None] * 5, groups)
    blob_of = [extent[0][0] for extent in extents]
    assert blob_of[0] == blob_of[1] and blob_of[2] == blob_of[3]
    assert len({blob_of[0], blob_of[2], blob_of[4]}) == 3
