"""A step whose code saves in the background keeps its staging buffer as large as the
state it builds, from the task's start, so even its first background save ever only
copies; what tells it so is the step's own source. Engine tier, plus the decorator's
reading of a step's source; no timing is asserted (benchmarks/headline.py measures)."""

import threading
import time

import numpy as np
import pytest

from metaflow_extensions.implicit_checkpoint.engine import staging as staging_module
from metaflow_extensions.implicit_checkpoint.engine.fields import FieldSelector
from metaflow_extensions.implicit_checkpoint.engine.staging import StagingArea
from metaflow_extensions.implicit_checkpoint.engine.state_size import MAX_OBJECTS, tensor_bytes
from metaflow_extensions.implicit_checkpoint.plugins.step_source import saves_in_background

from engine_helpers import State, local_store, make_session

torch = pytest.importorskip("torch")

MB = 1024 * 1024


@pytest.fixture(autouse=True)
def quick_following(monkeypatch):
    monkeypatch.setattr(staging_module, "FOLLOW_EVERY", (0.01, 0.05))


def mapped_ahead_at_least(area: StagingArea, nbytes: int, deadline: float = 60.0) -> int:
    """Wait (not a timing assertion: up to a minute) until ``area`` mapped ``nbytes`` ahead."""
    end = time.monotonic() + deadline
    while area.mapped_ahead < nbytes:
        assert time.monotonic() < end, "the buffer was never mapped ahead (%d bytes)" % area.mapped_ahead
        time.sleep(0.01)
    return area.mapped_ahead


# -- the staging area following a size --------------------------------------------------


def test_a_followed_size_is_mapped_as_it_grows_and_the_first_stage_copies_into_it():
    area = StagingArea(budget=256 * MB)
    size = [0]
    area.follow(lambda: size[0])
    time.sleep(0.1)
    assert area.mapped_ahead == 0  # nothing to stage yet: nothing mapped
    size[0] = 2 * MB
    mapped_ahead_at_least(area, 2 * MB)
    size[0] = 24 * MB  # the state grew (an optimizer's moments appeared)
    followed = mapped_ahead_at_least(area, 24 * MB)
    source = np.arange(24 * MB, dtype=np.uint8)
    (view,) = area.stage([source], [source.nbytes])
    assert area.capacity == followed > 24 * MB  # the followed buffer, with its headroom
    assert bytes(view) == source.tobytes()
    assert area.mapped_ahead == 0 and area._following is None  # the stage ended the following


def test_a_size_over_the_budget_or_a_failing_estimate_maps_nothing_and_stage_maps_its_own():
    area = StagingArea(budget=8 * MB)
    calls = []

    def size_now():
        calls.append(1)
        if len(calls) % 2:
            raise RuntimeError("dictionary changed size during iteration")
        return 16 * MB

    area.follow(size_now)
    while len(calls) < 4:
        time.sleep(0.01)
    assert area.mapped_ahead == 0
    source = np.ones(3 * MB, dtype=np.uint8)
    (view,) = area.stage([source], [source.nbytes])
    assert area.capacity == 3 * MB and bytes(view) == source.tobytes()


def test_close_stops_the_following_and_drops_what_it_mapped():
    area = StagingArea(budget=64 * MB)
    area.follow(lambda: 4 * MB)
    mapped_ahead_at_least(area, 4 * MB)
    (thread,) = [t for t in threading.enumerate() if t.name == "checkpoint-staging"]
    area.close()
    thread.join(timeout=60)
    assert not thread.is_alive() and area.mapped_ahead == 0 and area.capacity == 0


# -- the estimate of a state's bytes -------------------------------------------------


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(1000, 64)
        self.body = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64))
        self.head = torch.nn.Linear(64, 1000, bias=False)
        self.head.weight = self.embed.weight  # tied: one storage
        self.register_buffer("steps", torch.zeros(1, dtype=torch.int64))

    def forward(self, tokens):
        return self.head(self.body(self.embed(tokens)))


def test_the_estimate_counts_each_storage_of_a_model_and_its_optimizer_once():
    model = Net()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)
    model(torch.randint(0, 1000, (8,))).sum().backward()
    optimizer.step()
    scheduler.step()
    parameters = sum(p.untyped_storage().nbytes() for p in model.parameters())  # tied counted once
    moments = sum(
        t.untyped_storage().nbytes() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)
    )
    buffers = model.steps.untyped_storage().nbytes()
    array = np.zeros((100, 100))
    expected = parameters + moments + buffers + array.nbytes
    state = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "table": array,
             "rows": array[10:20], "epoch": 3, "np": np, "log": ["a"] * 50}
    assert tensor_bytes(state.values()) == expected
    assert tensor_bytes([]) == 0


def test_the_estimate_ends_after_its_object_budget_on_a_huge_python_structure():
    big = [[i] for i in range(MAX_OBJECTS * 3)]
    tail = torch.zeros(MB)  # beyond the budget: not reached
    assert tensor_bytes([big + [tail]]) < tail.nbytes


# -- a session that follows its state from the start ------------------------------------


def test_a_session_that_saves_in_the_background_has_its_first_save_s_buffer_mapped_ahead(tmp_path):
    state = State()
    task = make_session(local_store(tmp_path), state, saves_in_background=True)
    time.sleep(0.1)
    assert task._staging.mapped_ahead == 0  # the step built nothing yet
    state.model = torch.nn.Linear(1024, 1024)  # 4 MiB + bias
    state.moments = [torch.zeros(1024, 1024), torch.zeros(1024, 1024)]
    state.epoch = 1
    followed = mapped_ahead_at_least(task._staging, 12 * MB)
    task.save(blocking=False)
    assert task._staging.capacity == followed  # the first background save copied into it
    task.finish()

    loaded = State()
    loaded.model = torch.nn.Linear(1024, 1024)
    reader = make_session(local_store(tmp_path), loaded, attempt=1)
    reader.load()
    assert torch.equal(loaded.model.weight, state.model.weight) and loaded.epoch == 1
    reader.finish()


def test_include_naming_a_field_not_assigned_yet_still_follows_what_is_there(tmp_path):
    state = State()
    task = make_session(
        local_store(tmp_path), state, saves_in_background=True,
        selector=FieldSelector(include=["weights", "assigned_later"]),
    )
    state.weights = torch.ones(2 * MB)  # 8 MiB; "assigned_later" does not exist yet
    mapped_ahead_at_least(task._staging, 8 * MB)
    state.assigned_later = 1
    task.save(blocking=False)
    task.finish()


def test_a_session_that_saves_synchronously_follows_nothing(tmp_path):
    state = State()
    state.weights = torch.ones(MB)
    task = make_session(local_store(tmp_path), state)
    assert task._staging is None or task._staging._following is None
    task.save()
    assert task._staging is None or (task._staging._following is None and task._staging.mapped_ahead == 0)
    task.finish()


def test_a_session_that_never_saved_in_the_background_drops_its_buffer_at_the_end(tmp_path):
    state = State()
    state.weights = torch.ones(MB)
    task = make_session(local_store(tmp_path), state, saves_in_background=True)
    mapped_ahead_at_least(task._staging, 4 * MB)
    task.save()  # synchronous after all
    task.finish()
    assert task._staging.mapped_ahead == 0 and task._staging._prepared is None


# -- the step's source -----------------------------------------------------------------


def _in_the_background(self):
    from metaflow import current

    for epoch in range(3):
        current.checkpoint.save(blocking=False)


def _with_a_flag(self, last=False):
    from metaflow import current

    current.checkpoint.save(metadata={"epoch": 1}, blocking=last)


def _synchronously(self):
    from metaflow import current

    current.checkpoint.save(blocking=True)
    current.checkpoint.save()


class _Flow:
    def train(self):
        trainer = object()
        callbacks = [dict(blocking=False)]
        return trainer, callbacks


@pytest.mark.parametrize(
    "function, expected",
    [(_in_the_background, True), (_with_a_flag, True), (_synchronously, False), (_Flow.train, True),
     (len, False), (None, False)],
)
def test_a_step_saves_in_the_background_when_its_code_passes_blocking_other_than_true(function, expected):
    assert saves_in_background(function) is expected


# -- the decorator wiring it -----------------------------------------------------------

FOLLOWING_FLOW = """
import json
import time

import torch
from metaflow import FlowSpec, checkpoint, current, step

MB = 1024 * 1024


def staging_report(expected_bytes):
    staging = current.checkpoint._staging
    following = staging is not None and staging._following is not None
    if following:  # up to a minute for the thread's first estimates (not a timing check)
        end = time.monotonic() + 60
        while staging.mapped_ahead < expected_bytes and time.monotonic() < end:
            time.sleep(0.05)
    return {"following": following, "mapped_ahead": staging.mapped_ahead if staging else 0}


class FollowingFlow(FlowSpec):
    @checkpoint
    @step
    def start(self):
        self.model = torch.nn.Linear(2048, 2048)  # 16 MiB + bias
        self.report = staging_report(16 * MB)
        current.checkpoint.save(blocking=False)
        self.next(self.synchronous)

    @checkpoint
    @step
    def synchronous(self):
        self.model = torch.nn.Linear(2048, 2048)
        self.report = staging_report(16 * MB)
        current.checkpoint.save()
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    FollowingFlow()
"""


@pytest.mark.flow
def test_the_decorator_follows_the_state_only_in_a_step_that_saves_in_the_background(world, write_flow):
    world.run_flow(write_flow(FOLLOWING_FLOW))
    reports = world.python(
        """
        import json
        from metaflow import Flow, namespace
        namespace(None)
        run = Flow("FollowingFlow").latest_run
        print(json.dumps({s: run[s].task.data.report for s in ("start", "synchronous")}))
        """
    )
    assert reports["start"]["following"] and reports["start"]["mapped_ahead"] >= 16 * MB
    assert reports["synchronous"] == {"following": False, "mapped_ahead": 0}
