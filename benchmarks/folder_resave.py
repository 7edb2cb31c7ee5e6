"""What the task folder costs: saves and a restore of a folder like a framework's output.

    python benchmarks/folder_resave.py [SIZE_MB] [ROUNDS]

The folder: one SIZE_MB file (a model), 200 small files in 10 subfolders, an empty
folder. Per round, on one session: a first save (everything written), an unchanged sync
re-save and an unchanged background re-save (time blocked and until committed), each
after os.sync(); then a restore into an empty folder from a fresh process' view. Prints
medians with ranges, and bytes written, as JSON.
"""

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_session import State, local_session  # noqa: E402
from measure import Figure, timed_from_quiet_disk  # noqa: E402


def make_folder(folder: Path, size_mb: int, seed: int) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    (folder / "empty").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(rng.bytes(size_mb * 1024 * 1024))
    for sub in range(10):
        for n in range(20):
            path = folder / ("part-%d" % sub) / ("file-%d.json" % n)
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(rng.bytes(2000))


def summary(values):
    figure = Figure(values).to_json()
    del figure["samples"]
    return figure


def main(size_mb: int = 50, rounds: int = 5) -> dict:
    times = {k: [] for k in ("first_save", "unchanged_sync", "unchanged_background_blocked",
                             "unchanged_background_committed", "restore")}
    written = {k: [] for k in ("first_save", "unchanged_sync", "unchanged_background")}
    for round_number in range(rounds):
        work = Path(tempfile.mkdtemp(prefix="folder-bench-"))
        try:
            folder = work / "task" / "directory"
            make_folder(folder, size_mb, round_number)
            session = local_session(work / "store", State(), directory=str(folder))
            for case in ("first_save", "unchanged_sync"):
                times[case].append(timed_from_quiet_disk(session.save))
                written[case].append(session.inspect()["bytes_written"])
            os.sync()
            start = time.perf_counter()
            session.save(blocking=False)
            times["unchanged_background_blocked"].append(time.perf_counter() - start)
            session.wait()
            times["unchanged_background_committed"].append(time.perf_counter() - start)
            written["unchanged_background"].append(session.inspect()["bytes_written"])
            session.finish()
            restored = work / "restored" / "directory"
            retry = local_session(work / "store", State(), attempt=1, directory=str(restored))
            times["restore"].append(timed_from_quiet_disk(retry.load))
            retry.finish()
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return {
        "size_mb": size_mb,
        "rounds": rounds,
        "seconds": {k: summary(v) for k, v in times.items()},
        "bytes_written": {k: summary(v) for k, v in written.items()},
    }


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    print(json.dumps(main(*args), indent=2))
