"""A process that saves ever-new checkpoints until it is killed (run by test_kill_during_save).

Usage: python saver_process.py ROOT MEGABYTES
Checkpoint i holds arrays filled from a generator seeded with i, and metadata {"i": i}.
"""

import sys

import numpy as np

from engine_helpers import State, local_store, make_session


def state_for(i: int, megabytes: int) -> dict:
    rng = np.random.default_rng(i)
    per_array = megabytes * 1024 * 1024 // 8 // 4
    return {"a%d" % k: rng.random(per_array) for k in range(4)} | {"small": rng.random(100)}


def main():
    root, megabytes = sys.argv[1], int(sys.argv[2])
    state = State()
    session = make_session(local_store(root), state)
    i = 0
    while True:
        i += 1
        state.arrays = state_for(i, megabytes)
        state.i = i
        session.save(metadata={"i": i})
        print("saved", i, flush=True)


if __name__ == "__main__":
    main()
