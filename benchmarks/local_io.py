"""Save / load / inspect of torch state dicts on local disk: ours against torch and safetensors.

Every case starts from an empty store and is repeated; medians are reported. Peers and
ours run at the same durability: "fsync" rows fsync every file written, "no fsync"
rows none.
"""

import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save_file as safetensors_save_file

from measure import fsync_path, median_of, timed
from states import change_share, nbytes, state_dict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from engine_helpers import State, make_session  # noqa: E402

from metaflow_extensions.implicit_checkpoint.engine.backends import LocalDirBackend  # noqa: E402
from metaflow_extensions.implicit_checkpoint.engine.store import CheckpointStore  # noqa: E402


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def run(workdir: Path, size_bytes: int, repeats: int) -> dict:
    """Return {case: median seconds} for one state size."""
    state = state_dict(size_bytes)
    samples = {}

    def add(case, seconds):
        samples.setdefault(case, []).append(seconds)

    for rep in range(repeats + 1):  # the first round warms up and is dropped
        work = _fresh(workdir / "io")
        st_file, pt_file = str(work / "state.safetensors"), str(work / "state.pt")

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

            add("safetensors save_file (%s)" % tag, timed(st_save))
            add("torch.save (%s)" % tag, timed(pt_save))
            holder = State()
            holder.model_state = state
            store = CheckpointStore(LocalDirBackend(str(work / ("store-" + tag))), durable=durable)
            session = make_session(store, holder, task_id=str(rep))
            add("ours save (%s)" % tag, timed(session.save))
            if durable:
                add("ours re-save unchanged (fsync)", timed(session.save))
                change_share(state, 0.1, seed=rep)
                add("ours re-save 10% changed (fsync)", timed(session.save))
                artifact = session.save()

        add("torch.load", timed(lambda: torch.load(pt_file)))

        def st_full_read():
            with open(st_file, "rb") as f:
                safetensors_load(f.read())

        add("safetensors full read", timed(st_full_read))
        ours_root = str(work / "store-fsync")
        reader = make_session(CheckpointStore(LocalDirBackend(ours_root)), State(), attempt=1, task_id=str(rep))
        add("ours load", timed(lambda: reader.load(artifact)))
        inspector = make_session(CheckpointStore(LocalDirBackend(ours_root)), State(), attempt=1, task_id=str(rep))
        add("ours inspect", timed(lambda: inspector.inspect(artifact.key)))
    shutil.rmtree(workdir / "io", ignore_errors=True)
    return {"bytes": nbytes(state), "cases": {case: median_of(v[1:]) for case, v in samples.items()}}
