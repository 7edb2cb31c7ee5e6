"""A process killed at any instant of a save never leaves a partial checkpoint listed."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_FLOWS
from engine_helpers import State, local_store, make_session
from saver_process import state_for

pytestmark = pytest.mark.flow

HERE = Path(__file__).resolve().parent
MEGABYTES = 48


def kill_saver_after(root: Path, delay: float) -> int:
    """Start a saver, wait for its first commit, SIGKILL it ``delay`` s later."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "saver_process.py"), str(root), str(MEGABYTES)],
        cwd=HERE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(HERE)),
    )
    first = proc.stdout.readline()
    assert first.startswith("saved 1"), first
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reported = [int(line.split()[1]) for line in [first] + proc.stdout.read().splitlines()]
    return reported[-1]


@pytest.mark.slow
def test_killed_at_many_instants_leaves_only_whole_checkpoints(tmp_path):
    rng = random.Random(7)
    delays = [0.0, 0.01, 0.03] + [rng.uniform(0.0, 1.0) for _ in range(9)]
    for n, delay in enumerate(delays):
        root = tmp_path / ("run%d" % n)
        last_reported = kill_saver_after(root, delay)
        retry = make_session(local_store(root), State(), attempt=1)
        listed = retry.list()
        versions = [a.metadata["i"] for a in listed]
        # Whole checkpoints only, in order, none missing: every reported save is listed;
        # at most one more (committed just before the kill, not yet reported).
        assert versions == list(range(1, len(versions) + 1))
        assert last_reported <= len(versions) <= last_reported + 1
        # The retry resumes from the newest one and it is intact, bit for bit.
        assert retry.loaded.key == listed[-1].key
        restored = State()
        make_session(local_store(root), restored, attempt=1).load()
        expected = state_for(restored.i, MEGABYTES)
        assert restored.i == versions[-1]
        for name, array in expected.items():
            assert np.array_equal(restored.arrays[name], array), (delay, name)
        # Besides temp files (which readers never look at) only whole files remain:
        # manifests, blobs, the per-run notes used by eager resume, and the killed
        # save's lease (removed by the task's next save, or by gc once stale).
        leftovers = [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".tmp-")]
        assert all(
            p.suffix == ".manifest" or "/blobs/" in str(p) or "/latest/" in str(p)
            or "/locks/saves/" in str(p)
            for p in leftovers
        )


def test_flow_killed_during_a_large_save_resumes_from_newest_committed(world):
    world.run_flow(TEST_FLOWS / "kill_during_save_flow.py")
    result = world.python(
        """
        import json
        from metaflow import Flow, namespace
        namespace(None)
        task = Flow("KillDuringSaveFlow").latest_run["train"].task
        print(json.dumps(task.data.report))
        """
    )
    assert result["resumed"] is True
    assert result["resumed_attempt"] == 0
    assert result["intact"] is True
    assert result["resumed_i"] == result["newest_listed_i"] >= 1
