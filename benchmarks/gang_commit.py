"""What a gang's global commit adds: 2 node processes, each with its own per-rank state.

    python benchmarks/gang_commit.py [MB_PER_NODE] [ROUNDS]

Two processes stand for the nodes of a @parallel gang on this machine, sharing one local
store. Each round, both nodes start together (a barrier) and save their state (every
tensor changed, fsync on): once as the gang's node (their parts, then node 0's global
commit) and once each as a task of its own (no gang), in alternating order; sync saves,
then background saves (blocked part and until committed). The gang figure is the
slower node's time; the overhead is that minus the slower node's solo save of the same
round. Prints medians with ranges (and per-round samples) as JSON.
"""

import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

NODES = 2
CASES = ("sync", "background blocked", "background until committed")


def _node(index: int, root: str, mb: int, rounds: int, barrier, results) -> None:
    import torch

    from engine_session import State
    from metaflow_extensions.implicit_checkpoint.engine.backends import LocalDirBackend
    from metaflow_extensions.implicit_checkpoint.engine.gang import Gang
    from metaflow_extensions.implicit_checkpoint.engine.session import (
        AttributeSource,
        CheckpointSession,
        TaskIdentity,
    )
    from metaflow_extensions.implicit_checkpoint.engine.store import CheckpointStore

    torch.set_num_threads(1)
    state = State()
    tensor_bytes = mb * 2**20 // 8
    state.shards = [torch.randn(tensor_bytes // 4) for _ in range(8)]

    def session(gang: bool) -> CheckpointSession:
        task_id = "1" if index == 0 else "1_node_%d" % index
        task = TaskIdentity(
            "GangBench", "1", "train", task_id if gang else "solo%d" % index, 0,
            gang=Gang(index, NODES, "1") if gang else None,
        )
        s = CheckpointSession(
            CheckpointStore(LocalDirBackend(root)),
            task,
            AttributeSource(lambda: dict(vars(state))),
            target=state,
            rng=False,
        )
        s.start()
        return s

    sessions = {True: session(True), False: session(False)}
    samples = {(gang, case): [] for gang in (True, False) for case in CASES}
    for r in range(rounds + 1):
        for gang in ((True, False) if r % 2 == 0 else (False, True)):
            for blocking in (True, False):
                for shard in state.shards:
                    shard.add_(1.0)  # everything changed: every byte is written
                barrier.wait()
                os.sync()
                barrier.wait()
                start = time.perf_counter()
                sessions[gang].save(blocking=blocking)
                blocked = time.perf_counter() - start
                sessions[gang].wait()
                total = time.perf_counter() - start
                if r == 0:
                    continue  # warm-up
                if blocking:
                    samples[(gang, "sync")].append(total)
                else:
                    samples[(gang, "background blocked")].append(blocked)
                    samples[(gang, "background until committed")].append(total)
    for s in sessions.values():
        s.finish()
    results[index] = {"%s|%s" % ("gang" if g else "solo", c): v for (g, c), v in samples.items()}


def _figure(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "samples": values}


def main(mb: int = 500, rounds: int = 5) -> dict:
    root = tempfile.mkdtemp(prefix="gang-bench-")
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        results = manager.dict()
        barrier = context.Barrier(NODES)
        nodes = [
            context.Process(target=_node, args=(i, root, mb, rounds, barrier, results)) for i in range(NODES)
        ]
        for p in nodes:
            p.start()
        for p in nodes:
            p.join()
        if any(p.exitcode for p in nodes):
            raise SystemExit("a node process failed")
        per_node = dict(results)
    shutil.rmtree(root, ignore_errors=True)
    report = {"mb_per_node": mb, "nodes": NODES, "rounds": rounds, "cases": {}}
    for case in CASES:
        gang = [max(per_node[n]["gang|" + case][r] for n in range(NODES)) for r in range(rounds)]
        solo = [max(per_node[n]["solo|" + case][r] for n in range(NODES)) for r in range(rounds)]
        report["cases"][case] = {
            "gang (slower node)": _figure(gang),
            "solo saves (slower node)": _figure(solo),
            "gang - solo": _figure([g - s for g, s in zip(gang, solo)]),
            "gang / solo": _figure([g / s for g, s in zip(gang, solo)]),
        }
    return report


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    print(json.dumps(main(*args), indent=1))
