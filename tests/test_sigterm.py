"""SIGTERM during save(blocking=False), then SIGKILL after a grace, as schedulers do: the
pending save commits when the grace allows it, and no partial checkpoint is ever listed."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from engine_helpers import State, local_store, make_session
from sigterm_saver import arrays_for

HERE = Path(__file__).parent


def terminate_during_background_save(root, grace: float) -> subprocess.Popen:
    """Start the saver, SIGTERM it once its background save is staged, SIGKILL it if it
    is still alive ``grace`` seconds later."""
    process = subprocess.Popen(
        [sys.executable, str(HERE / "sigterm_saver.py"), str(root), "1.0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=HERE,
        env=dict(os.environ, METAFLOW_CHECKPOINT_SIGTERM_WAIT="60"),
    )
    assert process.stdout.readline().strip() == "staged"
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    process.stderr_text = process.stderr.read()
    return process


def versions_listed(root) -> list:
    return [a.metadata["version"] for a in make_session(local_store(root), State(), attempt=1).list()]


def test_a_pending_save_is_committed_within_the_grace(tmp_path):
    process = terminate_during_background_save(tmp_path, grace=120)
    assert process.returncode == -signal.SIGTERM, process.stderr_text  # it ended itself
    assert "the pending save is committed" in process.stderr_text
    assert versions_listed(tmp_path) == [1, 2]
    loaded = State()
    make_session(local_store(tmp_path), loaded, attempt=1).load()
    assert all(np.array_equal(a, b) for a, b in zip(loaded.arrays, arrays_for(2)))


def test_a_save_the_grace_cuts_short_is_never_listed_and_its_temp_files_go(tmp_path):
    process = terminate_during_background_save(tmp_path, grace=0.5)
    assert process.returncode == -signal.SIGKILL
    assert versions_listed(tmp_path) == [1]  # never a partial checkpoint 2
    root = tmp_path / "UnitFlow" / "_implicit_checkpoints"
    (killed,) = os.listdir(root / "locks" / "saves")  # the killed save's lease
    assert [f for f in os.listdir(root / "tmp") if f.startswith(".tmp-%s." % killed)]  # its temp files

    # The task's next attempt resumes from checkpoint 1 and, at its first save, removes
    # what the killed save left behind.
    state = State()
    retry = make_session(local_store(tmp_path), state, attempt=1)
    retry.load()
    assert all(np.array_equal(a, b) for a, b in zip(state.arrays, arrays_for(1)))
    retry.save(metadata={"version": 3})
    assert os.listdir(root / "locks" / "saves") == []
    assert os.listdir(root / "tmp") == []
    assert versions_listed(tmp_path) == [1, 3]
