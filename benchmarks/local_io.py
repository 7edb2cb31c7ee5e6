"""Save / load / inspect of torch state dicts on local disk: ours against torch and safetensors.

Each round starts from an empty store; rounds are repeated and medians reported. Peers
and ours run at the same durability: "fsync" cases fsync every file written, "no fsync"
cases none.
"""

import os
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save_file as safetensors_save_file

from measure import fsync_path, median_of, timed, timed_from_quiet_disk
from states import change_share, nbytes, state_dict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from engine_helpers import State, make_session  # noqa: E402

from metaflow_extensions.implicit_checkpoint.engine.backends import LocalDirBackend  # noqa: E402
from metaflow_extensions.implicit_checkpoint.engine.store import CheckpointStore  # noqa: E402


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _session(root: Path, state: dict, durable: bool = True, attempt: int = 0):
    holder = State()
    holder.model_state = state
    store = CheckpointStore(LocalDirBackend(str(root)), durable=durable)
    return make_session(store, holder, attempt=attempt)


def _background(session) -> tuple:
    """(seconds the step was blocked, seconds until committed) of one background save."""
    os.sync()
    start = time.perf_counter()
    session.save(blocking=False)
    blocked = time.perf_counter() - start
    session.wait()
    return blocked, time.perf_counter() - start


def run(workdir: Path, size_bytes: int, repeats: int) -> dict:
    """Return {"bytes": state size, "cases": {case: median seconds}, "written": {...}}."""
    state = state_dict(size_bytes)
    samples, written = {}, {}

    def add(case, seconds):
        samples.setdefault(case, []).append(seconds)

    for rep in range(repeats + 1):  # the first round warms up and is dropped
        work = _fresh(workdir / "io")
        st_file, pt_file = str(work / "state.safetensors"), str(work / "state.pt")

        sessions = {}
        for durable in (True, False):
            tag = "fsync" if durable else "no fsync"

            def st_save():
                safetensors_save_file(state, st_file)
                if durable:
                    fsync_path(st_file)

            def pt_save():
                torch.save(state, pt_file)
                if durable:
                    fsync_path(pt_file)

            add("safetensors save_file (%s)" % tag, timed_from_quiet_disk(st_save))
            add("torch.save (%s)" % tag, timed_from_quiet_disk(pt_save))
            sessions[tag] = _session(work / ("sync-" + tag), state, durable)
            add("ours sync save (%s)" % tag, timed_from_quiet_disk(sessions[tag].save))

        # Sync re-saves, with fsync.
        session = sessions["fsync"]
        add("ours sync re-save, unchanged", timed_from_quiet_disk(session.save))
        written["sync re-save, unchanged"] = session.list()[-1].implicit_manifest["bytes_written"]
        change_share(state, 0.1, seed=rep)
        add("ours sync re-save, 10% changed", timed_from_quiet_disk(session.save))
        artifact = session.list()[-1]

        # Background saves: what the step waits for, and when the commit lands.
        background = _session(_fresh(work / "background"), state)
        blocked, total = _background(background)
        add("ours background save, first: blocking", blocked)
        add("ours background save, first: until committed", total)
        change_share(state, 1.0, seed=100 + rep)
        blocked, total = _background(background)
        add("ours background save, all changed: blocking", blocked)
        add("ours background save, all changed: until committed", total)
        blocked, _ = _background(background)
        add("ours background re-save, unchanged: blocking", blocked)
        written["background re-save, unchanged"] = background.list()[-1].implicit_manifest["bytes_written"]
        change_share(state, 0.1, seed=200 + rep)
        blocked, _ = _background(background)
        add("ours background re-save, 10% changed: blocking", blocked)
        background.finish()

        add("torch.load", timed(lambda: torch.load(pt_file)))

        def st_full_read():
            with open(st_file, "rb") as f:
                safetensors_load(f.read())

        add("safetensors full read", timed(st_full_read))
        reader = _session(work / "sync-fsync", {}, attempt=1)
        add("ours load", timed(lambda: reader.load(artifact)))
        inspector = _session(work / "sync-fsync", {}, attempt=1)
        add("ours inspect", timed(lambda: inspector.inspect(artifact.key)))
    shutil.rmtree(workdir / "io", ignore_errors=True)
    return {
        "bytes": nbytes(state),
        "cases": {case: median_of(v[1:]) for case, v in samples.items()},
        "written": written,
    }
