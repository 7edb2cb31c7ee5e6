"""One process of the gc stress test (test_gc_stress.py): a saver or a collector.

Usage:
    python stress_process.py save ROOT SECONDS INDEX [ENDPOINT]
    python stress_process.py gc   ROOT SECONDS 0     [ENDPOINT]

ROOT is a directory, or s3://bucket/prefix with ENDPOINT the S3 server. A saver saves
checkpoints of task INDEX with keep_last=2 until SECONDS have passed: a frozen tensor
shared by every saver, a frozen one of its own (both reused through change tracking),
values that recur (deduplicated against older, possibly collected blobs), and a tensor
that changes every save; some saves are background ones. Now and then it loads its newest
committed checkpoint through another store and checks it bit for bit (failing loudly if
not). The collector runs gc with a 2 s grace in a loop. Each prints one JSON line of
counts at the end.
"""

import json
import random
import sys
import time

import numpy as np
import torch

from engine_helpers import State, make_session
from metaflow_extensions.implicit_checkpoint.engine.backends import LocalDirBackend
from metaflow_extensions.implicit_checkpoint.engine.gc import collect_garbage
from metaflow_extensions.implicit_checkpoint.engine.retention import RetentionPolicy
from metaflow_extensions.implicit_checkpoint.engine.session import SessionOptions
from metaflow_extensions.implicit_checkpoint.engine.store import CheckpointStore

GRACE = 2.0


def shared_frozen() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).random((256, 1024), dtype=np.float32))


def own_frozen(index: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(1000 + index).random((128, 1024), dtype=np.float32))


def recurring(i: int) -> np.ndarray:
    return np.full(300_000, float(i % 4))  # one of four contents: blobs come and go and come back


def changing(index: int, i: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng([index, i]).random(200_000, dtype=np.float32))


def store_for(root: str, endpoint: str = None) -> CheckpointStore:
    if root.startswith("s3://"):
        from s3_server import s3_client
        from metaflow_extensions.implicit_checkpoint.engine.s3_backend import S3Backend

        return CheckpointStore(S3Backend(s3_client(endpoint), root), workers=4)
    return CheckpointStore(LocalDirBackend(root))


def save_loop(store_args: tuple, seconds: float, index: int) -> dict:
    store = store_for(*store_args)
    pause = random.Random(index)
    read_back = 0
    state = State()
    state.shared = shared_frozen()
    state.own = own_frozen(index)
    session = make_session(
        store, state, task_id=str(index), retention=RetentionPolicy(keep_last=2),
        # frozen tensors are reused without being written
        options=SessionOptions(track_changes=True),
    )
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        i += 1
        state.i = i
        state.recurring = recurring(i)
        state.changing = changing(index, i)
        session.save(metadata={"i": i}, blocking=pause.random() < 0.5)
        # Read back the newest committed one after the first save (so every saver does,
        # however slow the machine), and now and then after that.
        if i == 1 or pause.random() < 0.2:
            session.wait()
            newest = session.list()[-1]
            loaded = State()
            make_session(store_for(*store_args), loaded, attempt=1, task_id=str(index)).load(newest)
            if not check_loaded(loaded, index, newest.metadata["i"]):
                raise AssertionError("checkpoint %s did not load bit-exact" % newest.key)
            read_back += 1
        time.sleep(pause.uniform(0, 0.05))
    session.finish()
    return {"saves": i, "read_back": read_back}


def gc_loop(store: CheckpointStore, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    rounds = deleted = busy = 0
    while time.monotonic() < deadline:
        report = collect_garbage(store, "UnitFlow", grace=GRACE, wait=10)
        rounds += 1
        deleted += len(report.deleted_blobs)
        busy += bool(report.busy)
        time.sleep(0.2)
    return {"rounds": rounds, "deleted": deleted, "busy": busy}


def check_loaded(state: State, index: int, i: int) -> bool:
    return (
        torch.equal(state.shared, shared_frozen())
        and torch.equal(state.own, own_frozen(index))
        and np.array_equal(state.recurring, recurring(i))
        and torch.equal(state.changing, changing(index, i))
    )


def main():
    role, root, seconds, index = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    store_args = (root, sys.argv[5] if len(sys.argv) > 5 else None)
    if role == "save":
        result = save_loop(store_args, seconds, index)
    else:
        result = gc_loop(store_for(*store_args), seconds)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
