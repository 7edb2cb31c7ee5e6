"""current.checkpoint.due() on the engine alone: the Young/Daly interval from the measured
save cost, fixed intervals, bad arguments, and stop notices (SIGTERM, the spot-termination
notice file) ending the attempt at its next save with the checkpoint committed.

A save "costs 0.2 s" on a clock the test owns: the state's stateful object moves that
clock on by 0.2 s each time a save captures it, so costs and intervals are exact."""

import math
import os
import signal
import threading

import numpy as np
import pytest

from engine_helpers import State, local_store, make_session
from metaflow_extensions.implicit_checkpoint.engine.errors import CheckpointException, TaskPreempted
from metaflow_extensions.implicit_checkpoint.engine.save_schedule import (
    NOT_MEASURED,
    YOUNG_DALY,
    SaveRecord,
    young_daly_interval,
)
from metaflow_extensions.implicit_checkpoint.engine.session import SessionOptions

SAVE_COST = 0.2
MTBF = 3600.0


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SlowToCapture:
    """A stateful object whose capture takes ``cost`` seconds of the test's clock."""

    def __init__(self, clock: Clock, cost: float = SAVE_COST):
        self.clock, self.cost = clock, cost
        self.weights = np.arange(1000, dtype=np.float64)

    def state_dict(self):
        self.clock.advance(self.cost)
        return {"weights": self.weights}

    def load_state_dict(self, state):
        self.weights[...] = state["weights"]


def schedule_session(root, clock, attempt=0, mtbf=MTBF, **options):
    state = State()
    state.model = SlowToCapture(clock)
    state.step = 0
    session = make_session(
        local_store(root), state, attempt=attempt, clock=clock,
        options=SessionOptions(mtbf=mtbf, **options),
    )
    return session, state


def test_with_no_interval_due_picks_the_young_daly_interval_from_the_measured_save_cost(tmp_path):
    clock = Clock()
    session, state = schedule_session(tmp_path, clock)
    assert session.due()  # nothing measured yet: the first call is due
    assert session.save_interval.chosen_by == NOT_MEASURED
    session.save()

    expected = math.sqrt(2 * SAVE_COST * MTBF)  # 37.95 s
    assert session.due() is False
    interval = session.save_interval
    assert interval.chosen_by == YOUNG_DALY
    assert interval.save_cost == pytest.approx(SAVE_COST)
    assert interval.mtbf == MTBF
    assert interval.seconds == pytest.approx(expected)
    assert interval.seconds == pytest.approx(young_daly_interval(SAVE_COST, MTBF))

    clock.advance(expected - 0.5)
    assert session.due() is False
    clock.advance(0.6)
    assert session.due() is True

    # The manifest records the save's cost and the interval it was due under.
    session.save()
    record = SaveRecord.from_wire(session.inspect()["save_record"])
    assert record.blocked == pytest.approx(SAVE_COST) and record.background is False
    assert record.interval.chosen_by == YOUNG_DALY
    assert record.interval.seconds == pytest.approx(expected)
    assert record.stop_notice is None


def test_the_cost_is_the_median_of_the_newest_saves_and_a_retry_starts_from_its_resume_point(tmp_path):
    clock = Clock()
    session, state = schedule_session(tmp_path, clock)
    for cost in (0.2, 0.2, 5.0):  # one slow save does not swing the interval
        state.model.cost = cost
        session.save()
    assert session.save_interval.save_cost == pytest.approx(0.2)

    retry, _ = schedule_session(tmp_path, clock, attempt=1)
    retry.load()
    assert retry.due() is False  # the resume point's cost (5.0 s, the last save) is known
    assert retry.save_interval.chosen_by == YOUNG_DALY
    assert retry.save_interval.save_cost == pytest.approx(5.0)
    assert retry.save_interval.seconds == pytest.approx(young_daly_interval(5.0, MTBF))


def test_fixed_intervals_count_calls_and_seconds_since_the_last_save(tmp_path):
    clock = Clock()
    session, state = schedule_session(tmp_path, clock)
    session.save()
    assert [session.due(every_steps=3) for _ in range(3)] == [False, False, True]
    session.save()
    clock.advance(9)
    assert session.due(every_seconds=10) is False
    clock.advance(1)
    assert session.due(every_seconds=10) is True
    assert session.save_interval.chosen_by == "every_seconds"
    session.save()
    # Both: whichever comes first.
    assert session.due(every_seconds=100, every_steps=2) is False
    assert session.due(every_seconds=100, every_steps=2) is True


@pytest.mark.parametrize(
    "arguments, named",
    [
        ({"every_seconds": 0}, "every_seconds"),
        ({"every_seconds": -5}, "every_seconds"),
        ({"every_seconds": "600"}, "every_seconds"),
        ({"every_seconds": float("nan")}, "every_seconds"),
        ({"every_steps": 2.5}, "every_steps"),
        ({"every_steps": True}, "every_steps"),
        ({"every_steps": 0}, "every_steps"),
    ],
)
def test_a_bad_interval_is_an_error_naming_the_argument_and_the_step(tmp_path, arguments, named):
    session, _ = schedule_session(tmp_path, Clock())
    with pytest.raises(CheckpointException) as raised:
        session.due(**arguments)
    assert "due(%s=" % named in str(raised.value)
    assert "step *train*" in str(raised.value) and "positive" in str(raised.value)


def test_the_spot_termination_notice_file_makes_the_next_save_end_the_attempt(tmp_path):
    clock = Clock()
    notice = tmp_path / "spot_termination_notice"
    session, state = schedule_session(tmp_path / "store", clock, stop_notice_file=str(notice))
    session.save()
    assert session.due(every_steps=1000) is False
    notice.write_text("2026-12-03T07:00:00Z")
    clock.advance(1.0)  # the file is looked for at most once a second
    assert session.due(every_steps=1000) is True
    assert session.stop_notice.source == "spot termination notice"
    assert "2026-12-03T07:00:00Z" in session.stop_notice.detail

    state.step = 7
    with pytest.raises(TaskPreempted) as raised:
        session.save()
    session.finish()
    committed = session.list()
    assert raised.value.key == committed[-1].key
    assert "committed checkpoint %s" % committed[-1].key in str(raised.value)
    record = SaveRecord.from_wire(session.inspect()["save_record"])
    assert record.stop_notice.source == "spot termination notice"

    resumed = State()
    resumed.model, resumed.step = SlowToCapture(clock), 0
    make_session(local_store(tmp_path / "store"), resumed, attempt=1).load()
    assert resumed.step == 7


def test_sigterm_is_held_until_the_next_save_which_commits_and_ends_the_attempt(tmp_path):
    """In this process: SIGTERM's previous handler is a recorder, so a re-delivery would
    be seen (and would not end pytest)."""
    delivered = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: delivered.append(signum))
    try:
        session, state = schedule_session(tmp_path, Clock(), preemption_grace=600)
        session.save()
        assert session.due(every_steps=1000) is False  # due() holds SIGTERM from here
        os.kill(os.getpid(), signal.SIGTERM)
        assert session.stop_notice.source == "SIGTERM"
        assert session.due(every_steps=1000) is True
        state.step = 3
        with pytest.raises(TaskPreempted):
            session.save(blocking=False)  # a background save: committed before it raises
        session.finish()
        assert [a.version for a in session.list()] == [1, 2]
        assert SaveRecord.from_wire(session.inspect()["save_record"]).stop_notice.source == "SIGTERM"
        for timer in [t for t in threading.enumerate() if t.name == "checkpoint-preemption-grace"]:
            timer.join(10)  # cancelled: it ends without firing
            assert not timer.is_alive()
        assert delivered == []  # the task ended through TaskPreempted, not the signal
        os.kill(os.getpid(), signal.SIGTERM)  # the previous handler is back
        assert delivered == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_preempted_attempt_says_what_resumes_it():
    from metaflow_extensions.implicit_checkpoint.plugins.retry_policy import after_preemption

    assert after_preemption(0, 2) == "@retry starts attempt 1, which resumes from it."
    last = after_preemption(2, 2)
    assert "no @retry attempt is left" in last and "resume` reruns the step" in last
    assert after_preemption(0, 0).startswith("no @retry attempt is left")


@pytest.mark.parametrize("claimed", [-5.0, float("nan"), float("inf"), 1e300, "0.2", None])
def test_a_resume_points_save_record_is_input_a_bad_cost_never_steers_due(tmp_path, claimed):
    """The cost a retry starts from is read back from the store: a negative, infinite,
    absurd or mistyped one is no measurement, and due() falls back to its first call
    being due (no raw error, no interval that never comes)."""
    from hostile import frame, manifest_path, unframe

    clock = Clock()
    session, state = schedule_session(tmp_path, clock)
    artifact = session.save()
    session.finish()
    path = tmp_path / manifest_path(artifact.key)
    wire = unframe(path.read_bytes())
    wire["save_record"]["blocked"] = claimed
    path.write_bytes(frame(wire))

    retry, resumed = schedule_session(tmp_path, clock, attempt=1)
    retry.load()
    assert retry.due() is True
    assert retry.save_interval.chosen_by == NOT_MEASURED
