"""What @checkpoint adds to a task that saves nothing, and how fast tiny states save.

Both run their variants interleaved within each round (round 0 is the warm-up), so machine
noise hits the variants alike, and each per-round difference or rate is one sample.
"""

import shutil
import subprocess
import sys
import time
from pathlib import Path

from measure import Rounds, isolated_metaflow_env

HERE = Path(__file__).resolve().parent
FLOW = HERE / "flows" / "overhead_flow.py"
TASKS_PER_RUN = 2

#: Flow runs compared: no decorator, @checkpoint with defaults (card on), card off.
VARIANTS = {
    "plain": [],
    "checkpoint (defaults: card on)": ["--with", "checkpoint"],
    "checkpoint, card=False": ["--with", "checkpoint:card=False"],
}


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


def decorator_overhead(workdir: Path, rounds: int) -> Rounds:
    """Per round: wall seconds of a two-step flow run per variant, and seconds per task
    each @checkpoint variant adds over the plain run of the same round
    (cases ``added per task: <variant>``)."""
    root = workdir / "overhead"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    samples = Rounds()
    for _ in range(rounds + 1):
        wall = {name: _run_seconds(root, extra) for name, extra in VARIANTS.items()}
        for name, seconds in wall.items():
            samples.add("flow run: %s" % name, seconds)
            if name != "plain":
                samples.add("added per task: %s" % name, (seconds - wall["plain"]) / TASKS_PER_RUN)
        samples.next_round()
    shutil.rmtree(root, ignore_errors=True)
    return samples


def tiny_saves_per_second(workdir: Path, saves: int, rounds: int) -> Rounds:
    """Saves per second of a three-field state, defaults (rng=True) and rng=False, fsync on."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from engine_helpers import State, local_store, make_session

    samples = Rounds()
    for _ in range(rounds + 1):
        for case, kwargs in (("tiny saves per second (defaults: rng=True)", {}),
                             ("tiny saves per second, rng=False", {"rng": False})):
            root = workdir / "tiny"
            shutil.rmtree(root, ignore_errors=True)
            state = State()
            state.epoch, state.loss, state.history = 0, 1.0, [0.5, 0.25]
            session = make_session(local_store(root), state, **kwargs)
            start = time.perf_counter()
            for i in range(saves):
                state.epoch = i
                session.save(metadata={"step": i})
            samples.add(case, saves / (time.perf_counter() - start))
            shutil.rmtree(root, ignore_errors=True)
        samples.next_round()
    return samples
