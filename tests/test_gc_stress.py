"""Randomized stress: several processes saving (change tracking, frozen tensors, recurring
values, background saves, keep_last=2) while another runs gc with a 2 s grace in a loop.
The savers load their newest checkpoint now and then while it runs; afterwards every
committed checkpoint loads bit-exact, and again after a last gc with no grace.

METAFLOW_CHECKPOINT_STRESS_SECONDS sets how long the processes run (default 10 s per
backend); run longer by hand, e.g. 120.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from s3_server import s3_server  # noqa: F401  (fixture)
from engine_helpers import State, make_session
from metaflow_extensions.implicit_checkpoint.engine.gc import collect_garbage
from stress_process import check_loaded, store_for

pytestmark = [pytest.mark.flow, pytest.mark.slow]

SECONDS = float(os.environ.get("METAFLOW_CHECKPOINT_STRESS_SECONDS", "10"))
SAVERS = 3
HERE = Path(__file__).parent


def run_stress(root: str, endpoint: str = None) -> None:
    extra = [endpoint] if endpoint else []
    script = str(HERE / "stress_process.py")
    processes = [
        subprocess.Popen(
            [sys.executable, script, "save", root, str(SECONDS), str(index)] + extra,
            stdout=subprocess.PIPE,
            text=True,
            cwd=HERE,
        )
        for index in range(SAVERS)
    ]
    processes.append(
        subprocess.Popen(
            [sys.executable, script, "gc", root, str(SECONDS), "0"] + extra,
            stdout=subprocess.PIPE,
            text=True,
            cwd=HERE,
        )
    )
    results = []
    for process in processes:
        out, _ = process.communicate(timeout=SECONDS + 300)
        assert process.returncode == 0, out
        results.append(json.loads(out.strip().splitlines()[-1]))
    gc_result = results[-1]
    assert gc_result["deleted"] > 0, "gc deleted nothing: the race was not exercised"
    assert all(saver["read_back"] > 0 for saver in results[:-1])  # checked while running too

    assert check_every_checkpoint(root, endpoint) == 2 * SAVERS  # keep_last=2
    # A last gc with no grace at all, now that nothing saves, leaves them loadable too.
    final = collect_garbage(store_for(root, endpoint), "UnitFlow", grace=0)
    assert final.busy == [] and final.damaged_manifests == []
    assert check_every_checkpoint(root, endpoint) == 2 * SAVERS
    print("stress:", results)


def check_every_checkpoint(root: str, endpoint: str) -> int:
    """Load every committed checkpoint in a fresh store; return how many there are."""
    checked = 0
    for index in range(SAVERS):
        reader = make_session(store_for(root, endpoint), State(), attempt=1, task_id=str(index))
        for artifact in reader.list():
            loaded = State()
            make_session(store_for(root, endpoint), loaded, attempt=1, task_id=str(index)).load(artifact)
            assert check_loaded(loaded, index, artifact.metadata["i"]), artifact.key
            checked += 1
    return checked


def test_stress_local(tmp_path):
    run_stress(str(tmp_path))


@pytest.mark.s3
def test_stress_s3(s3_server):
    run_stress(s3_server.new_root(), s3_server.endpoint)
