"""What sound change detection costs: saves of one state, default vs opt-in tracking vs DCP.

    python benchmarks/soundness_cost.py [SIZE_MB] [ROUNDS]

Same 1 GB state (benchmarks/states.py), same process, rounds interleaved; every timed
save starts after os.sync(). Per round: a sync save of changed state (default: every
storage hashed), a background save of changed and of unchanged state (the blocking
part), an unchanged sync re-save (bytes written), each with default settings and with
METAFLOW_CHECKPOINT_TRACK_CHANGES=1 (trusts torch's version counters), and dcp.save /
dcp.async_save of the same state dict. Prints medians with ranges as JSON.
"""

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_session import State, local_session  # noqa: E402


def _session(root, state, track: bool):
    from metaflow_extensions.implicit_checkpoint.engine.session import SessionOptions

    return local_session(root, state, options=SessionOptions(track_changes=track))


def _timed(action):
    os.sync()
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def _touch_all(state_dict):
    import torch

    with torch.no_grad():
        for tensor in state_dict.values():
            tensor.add_(1)


def one_round(workdir: Path, sd) -> dict:
    import torch.distributed.checkpoint as dcp

    figures = {}
    for label, track in (("default", False), ("track_changes", True)):
        root = workdir / label
        shutil.rmtree(root, ignore_errors=True)
        state = State()
        state.model = sd
        session = _session(root, state, track)
        session.save()  # first save of the process: blobs exist, buffers mapped
        _touch_all(sd)
        figures["%s sync save, all changed" % label], _ = _timed(session.save)
        figures["%s unchanged re-save" % label], artifact = _timed(session.save)
        figures["%s unchanged re-save bytes written" % label] = artifact.implicit_manifest["bytes_written"]
        session.save(blocking=False)
        session.wait()  # staging buffer mapped
        _touch_all(sd)
        figures["%s background blocking, all changed" % label], _ = _timed(lambda: session.save(blocking=False))
        session.wait()
        figures["%s background blocking, unchanged" % label], _ = _timed(lambda: session.save(blocking=False))
        session.wait()
        session.finish()
        shutil.rmtree(root, ignore_errors=True)
    for label, action in (("dcp.save", dcp.save), ("dcp.async_save blocking", dcp.async_save)):
        target = workdir / label.replace(" ", "_")
        shutil.rmtree(target, ignore_errors=True)
        _touch_all(sd)
        figures[label], result = _timed(lambda: action(sd, checkpoint_id=str(target)))
        if hasattr(result, "result"):
            result.result()
        shutil.rmtree(target, ignore_errors=True)
    return figures


def main() -> None:
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    from states import state_dict

    sd = state_dict(size_mb * 1024 * 1024)
    workdir = Path(tempfile.mkdtemp(prefix="soundness-", dir=os.environ.get("BENCH_DIR")))
    try:
        one_round(workdir, sd)  # warm-up
        results = [one_round(workdir, sd) for _ in range(rounds)]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = {}
    for name in results[0]:
        values = [r[name] for r in results]
        report[name] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    ratios = [r["default sync save, all changed"] / r["dcp.save"] for r in results]
    report["default sync save / dcp.save"] = {
        "median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
