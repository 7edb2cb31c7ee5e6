"""Seconds of one inspect() in a fresh process on a fresh local store (run by local_io.py).

    python inspect_probe.py STORE_ROOT CHECKPOINT_KEY

Prints the seconds on its last line.
"""

import sys
import time
from pathlib import Path


def main() -> None:
    root, key = sys.argv[1], sys.argv[2]
    from local_io import new_session

    # Another task's first attempt: its start() reads nothing, so no manifest is cached.
    session = new_session(Path(root), {}, task_id="inspector")
    start = time.perf_counter()
    session.inspect(key)
    print(time.perf_counter() - start)


if __name__ == "__main__":
    main()
