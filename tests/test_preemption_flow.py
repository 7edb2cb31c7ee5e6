"""Preemption of a real flow: SIGTERM sent from outside to the task process at a random
batch mid-epoch (tests/flows/preemption_flow.py, a StatefulDataLoader with 2 workers).

The task saves at its next due(), ends failed (TaskPreempted), and its @retry resumes at
exactly that batch: it trains on the same samples in the same order and ends with
weights bit-identical to an uninterrupted run. The same when the SIGTERM comes during a
background save; and when the loop never reaches a save point again, the grace timer
commits the pending save and ends the task, and the retry resumes from it."""

import json
import os
import random
import signal
import time

import pytest

from conftest import TEST_FLOWS

pytestmark = pytest.mark.flow

FLOW = TEST_FLOWS / "preemption_flow.py"
BATCHES_PER_EPOCH = 24
SEED = int(os.environ.get("PREEMPTION_SEED", time.time_ns() % 10_000))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The run that never crashed: its samples, weights and attempts."""
    from conftest import MetaflowWorld

    root = tmp_path_factory.mktemp("uninterrupted")
    world = MetaflowWorld(root)
    world.run_flow(FLOW, "--every-steps", "10")
    return train_task(world)


def train_task(world) -> dict:
    return world.python(
        """
        import json
        from metaflow import Flow, namespace
        from metaflow_extensions.implicit_checkpoint.engine.save_schedule import SaveRecord
        namespace(None)
        run = Flow("PreemptionFlow").latest_run
        task = run["train"].task
        saves = []
        for artifact in task["_task_ok"] and __import__("metaflow").Checkpoint().list(task=task.pathspec) or []:
            record = SaveRecord.from_wire(artifact.implicit_manifest.get("save_record"))
            saves.append({
                "attempt": artifact.attempt,
                "batch": artifact.metadata["batch"],
                "stop_notice": record.stop_notice.source if record.stop_notice else None,
                "received_at": record.stop_notice.received_at if record.stop_notice else None,
                "blocked": record.blocked,
                "to_commit": record.to_commit,
                "key": artifact.key,
            })
        print(json.dumps({
            "successful": run.successful,
            "attempt": task.current_attempt,
            "sample_ids": task["sample_ids"].data,
            "weights": task["weights"].data.hex(),
            "resumed_at": task["resumed_at"].data,
            "save_interval": task["save_interval"].data,
            "saves": saves,
        }))
        """
    )


def read_progress(path) -> list:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def wait_for(path, condition, timeout=120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in read_progress(path):
            if condition(record):
                return record
        time.sleep(0.005)
    raise AssertionError("the flow never reported the expected progress: %s" % read_progress(path)[-3:])


def run_and_terminate(world, tmp_path, when, *args):
    """Run the flow; send SIGTERM to the train task at the first progress record for which
    ``when`` is true. Returns (that record, the run's output, attempt 0's progress)."""
    progress = tmp_path / "progress.jsonl"
    process = world.start_run(FLOW, "--progress", str(progress), *args)
    try:
        at_signal = wait_for(progress, when)
        os.kill(at_signal["pid"], signal.SIGTERM)
        output, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output[-6000:]
    return at_signal, output, [r for r in read_progress(progress) if r["attempt"] == 0]


def batch_time(progress: list, batch: int) -> float:
    """When attempt 0 reported ``batch`` (trained it; its due() came after)."""
    return next(r["time"] for r in progress if r["batch"] == batch and not {"saved", "stalled"} & set(r))


def assert_saved_at_the_first_due_after(saved: dict, progress: list) -> None:
    """The preemption save is at batch k whose due() was the first after the notice:
    batch k-1 was reported before the notice, batch k+1 after it (never reported at all,
    as the attempt ended at k)."""
    k = saved["batch"]
    assert batch_time(progress, k - 1) < saved["received_at"]
    assert not any(r["batch"] > k for r in progress)


def assert_same_training(resumed: dict, uninterrupted: dict) -> None:
    assert resumed["successful"]
    assert resumed["sample_ids"] == uninterrupted["sample_ids"]  # no batch repeated or skipped
    assert resumed["weights"] == uninterrupted["weights"]  # bit-identical


def test_sigterm_mid_epoch_saves_at_the_next_batch_and_the_retry_resumes_there(
    world, tmp_path, uninterrupted
):
    rng = random.Random(SEED)
    target = rng.choice([b for b in range(6, 2 * BATCHES_PER_EPOCH - 4) if b % BATCHES_PER_EPOCH])
    at_signal, output, progress = run_and_terminate(
        world, tmp_path, lambda r: r["batch"] >= target and r["attempt"] == 0 and "saved" not in r,
        # Young/Daly: the first batch saves (the measurement), then not within this run.
    )
    resumed = train_task(world)
    assert_same_training(resumed, uninterrupted)
    assert resumed["attempt"] == 1, output[-4000:]

    preemption_saves = [s for s in resumed["saves"] if s["stop_notice"] == "SIGTERM"]
    assert len(preemption_saves) == 1, (SEED, resumed["saves"])
    (saved,) = preemption_saves
    assert saved["attempt"] == 0
    assert saved["batch"] >= at_signal["batch"], SEED
    assert_saved_at_the_first_due_after(saved, progress)
    assert resumed["resumed_at"] == saved["batch"]
    assert resumed["save_interval"] == "young_daly"
    assert "@checkpoint: SIGTERM received" in output
    assert "@checkpoint: preempted (SIGTERM): checkpoint %s is committed" % saved["key"] in output
    assert "@retry starts attempt 1, which resumes from it" in output
    assert "resumed at batch %d" % saved["batch"] in output

    # The card (rendered by attempt 1, from the store) marks the preemption save and
    # shows each save's cost and the interval in use.
    card = world.python(
        """
        import json
        from metaflow import Flow, namespace
        from metaflow.cards import get_cards
        namespace(None)
        task = Flow("PreemptionFlow").latest_run["train"].task
        print(json.dumps(get_cards(task, id="implicit_checkpoint")[0].get()))
        """
    )
    assert card.count("preemption save, after SIGTERM") == 1
    assert "Save interval in use" in card and "Young/Daly: save cost" in card
    assert "Save cost</th>" in card


def test_sigterm_during_a_background_save_commits_it_and_the_next_one(world, tmp_path, uninterrupted):
    rng = random.Random(SEED + 1)
    save_at = rng.choice([b for b in range(8, 2 * BATCHES_PER_EPOCH - 8, 8) if b % BATCHES_PER_EPOCH])
    at_signal, output, progress = run_and_terminate(
        world, tmp_path,
        lambda r: r.get("saved") and r["batch"] == save_at and r["attempt"] == 0,
        "--every-steps", "8", "--background", "True", "--ballast-mb", "64",
    )
    resumed = train_task(world)
    assert_same_training(resumed, uninterrupted)
    assert resumed["attempt"] == 1, output[-4000:]
    batches = {s["batch"]: s for s in resumed["saves"] if s["attempt"] == 0}
    in_flight = batches[save_at]  # the save in flight at the signal committed
    (preempted,) = [s for s in resumed["saves"] if s["stop_notice"] == "SIGTERM"]
    # The signal came while it was in flight: after save() returned, before its commit.
    handed_over = at_signal["time"]
    assert handed_over < preempted["received_at"] < handed_over + in_flight["to_commit"] - in_flight["blocked"]
    assert in_flight["stop_notice"] is None  # it did not end the attempt: the next save did
    assert preempted["batch"] > save_at
    assert_saved_at_the_first_due_after(preempted, progress)
    assert resumed["resumed_at"] == preempted["batch"]


def test_a_loop_that_never_reaches_a_save_point_is_ended_after_the_grace_with_its_save_committed(
    world, tmp_path, uninterrupted
):
    world.env["METAFLOW_CHECKPOINT_PREEMPTION_GRACE"] = "2"
    at_signal, output, _ = run_and_terminate(
        world, tmp_path, lambda r: r.get("stalled"),
        "--every-steps", "10", "--background", "True", "--ballast-mb", "48", "--stall-at", "30",
    )
    resumed = train_task(world)
    assert_same_training(resumed, uninterrupted)
    assert resumed["attempt"] == 1
    assert "the step reached no save point within 2 s of SIGTERM" in output
    assert "the pending save is committed" in output
    assert [s["batch"] for s in resumed["saves"] if s["attempt"] == 0] == [10, 20, 30]
    assert all(s["stop_notice"] is None for s in resumed["saves"])  # no save point came
    assert resumed["resumed_at"] == 30  # nothing committed was lost
