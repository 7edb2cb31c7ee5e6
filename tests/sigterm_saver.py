"""A task that starts a background save and is then terminated (run by test_sigterm.py).

Usage: python sigterm_saver.py ROOT SECONDS_PER_BLOB [PREEMPTION_GRACE]
Saves checkpoint 1 (blocking), then checkpoint 2 with blocking=False, prints "staged",
and "trains" until a signal ends it. Every blob waits SECONDS_PER_BLOB as a temp file before it is published, so the
background save is still pending when the test sends SIGTERM. It never reaches another
save point, so after PREEMPTION_GRACE seconds (default 0) the pending save is committed
and the signal re-delivered.
"""

import sys
import time

import numpy as np

from engine_helpers import State, make_session
from metaflow_extensions.implicit_checkpoint.engine.backends import LocalDirBackend
from metaflow_extensions.implicit_checkpoint.engine.session import SessionOptions
from metaflow_extensions.implicit_checkpoint.engine.store import CheckpointStore

ARRAYS = 6


def arrays_for(version: int) -> list:
    return [np.random.default_rng([version, k]).random(300_000) for k in range(ARRAYS)]


class SlowBlobBackend(LocalDirBackend):
    def __init__(self, root, delay):
        super().__init__(root)
        self.delay = delay

    def _publish(self, tmp, full, durable):
        if "/blobs/" in full:
            time.sleep(self.delay)  # written as a temp file, not yet renamed to its blob
        super()._publish(tmp, full, durable)


def main():
    root, delay = sys.argv[1], float(sys.argv[2])
    grace = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    state = State()
    options = SessionOptions(preemption_grace=grace, sigterm_wait=60)
    session = make_session(CheckpointStore(SlowBlobBackend(root, 0)), state, options=options)
    state.arrays = arrays_for(1)
    session.save(metadata={"version": 1})
    session._store.backend.delay = delay
    state.arrays = arrays_for(2)
    session.save(metadata={"version": 2}, blocking=False)
    print("staged", flush=True)
    while True:
        time.sleep(0.1)


if __name__ == "__main__":
    main()
