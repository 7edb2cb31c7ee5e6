"""What @checkpoint adds to a task that saves nothing, and how fast tiny states save."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from measure import median_of

HERE = Path(__file__).resolve().parent
FLOW = HERE / "flows" / "overhead_flow.py"
TASKS_PER_RUN = 2


def _flow_env(root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAFLOW_")}
    env.update(
        USERNAME=env.get("USERNAME", "bench"),
        METAFLOW_HOME=str(root),
        METAFLOW_DEFAULT_DATASTORE="local",
        METAFLOW_DEFAULT_METADATA="local",
        METAFLOW_DATASTORE_SYSROOT_LOCAL=str(root),
    )
    return env


def _run_seconds(root: Path, extra: list) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(FLOW), "--no-pylint", "run", *extra],
        cwd=root,
        env=_flow_env(root),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def decorator_overhead(workdir: Path, pairs: int) -> dict:
    """Median seconds per task added by @checkpoint (runs interleaved to share noise)."""
    root = workdir / "overhead"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    plain, decorated = [], []
    _run_seconds(root, [])  # warm-up: creates the datastore, warms the page cache
    for _ in range(pairs):
        plain.append(_run_seconds(root, []))
        decorated.append(_run_seconds(root, ["--with", "checkpoint"]))
    shutil.rmtree(root, ignore_errors=True)
    return {
        "plain_run": median_of(plain),
        "checkpoint_run": median_of(decorated),
        "per_task": (median_of(decorated) - median_of(plain)) / TASKS_PER_RUN,
    }


def tiny_saves_per_second(workdir: Path, saves: int) -> float:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from engine_helpers import State, local_store, make_session

    root = workdir / "tiny"
    shutil.rmtree(root, ignore_errors=True)
    state = State()
    state.epoch, state.loss, state.history = 0, 1.0, [0.5, 0.25]
    session = make_session(local_store(root), state, rng=False)
    start = time.perf_counter()
    for i in range(saves):
        state.epoch = i
        session.save(metadata={"step": i})
    rate = saves / (time.perf_counter() - start)
    shutil.rmtree(root, ignore_errors=True)
    return rate
