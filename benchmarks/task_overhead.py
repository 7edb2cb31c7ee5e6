"""What @checkpoint adds to a task that saves nothing, and how fast tiny states save."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

from measure import isolated_metaflow_env, median_of

HERE = Path(__file__).resolve().parent
FLOW = HERE / "flows" / "overhead_flow.py"
TASKS_PER_RUN = 2


def _run_seconds(root: Path, extra: list) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(FLOW), "--no-pylint", "run", *extra],
        cwd=root,
        env=isolated_metaflow_env(root),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def decorator_overhead(workdir: Path, rounds: int) -> dict:
    """Median seconds per task added by @checkpoint, without and with its card.

    The three variants run interleaved, so machine noise hits them alike.
    """
    root = workdir / "overhead"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    variants = {
        "plain": [],
        "checkpoint, card off": ["--with", "checkpoint:card=False"],
        "checkpoint": ["--with", "checkpoint"],
    }
    samples = {name: [] for name in variants}
    _run_seconds(root, [])  # warm-up: creates the datastore, warms the page cache
    for _ in range(rounds):
        for name, extra in variants.items():
            samples[name].append(_run_seconds(root, extra))
    shutil.rmtree(root, ignore_errors=True)
    runs = {name: median_of(values) for name, values in samples.items()}
    return {
        "runs": runs,
        "per_task": {
            name: (runs[name] - runs["plain"]) / TASKS_PER_RUN for name in variants if name != "plain"
        },
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
