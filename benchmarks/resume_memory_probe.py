"""Peak resident memory of resuming into a live model, in a fresh process.

    python resume_memory_probe.py WORKDIR SIZE_BYTES

A first process builds a model of about SIZE_BYTES (float32 Linear layers) with an SGD
optimizer, and saves it; a second one builds the same model (as a retry does), measures
its resident memory, and loads the checkpoint into it. Prints JSON: the model's bytes
and, above what the process used before building the model (Python, torch), its
resident memory with the model built and at its peak during load().
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_session import State, local_session  # noqa: E402
from memory_probe import _reset_peak, _status_kb  # noqa: E402

LAYER = 4096  # one Linear(4096, 4096): 64 MiB of weights


def _model(size: int):
    import torch

    layers = max(1, size // (LAYER * LAYER * 4))
    return torch.nn.Sequential(*[torch.nn.Linear(LAYER, LAYER) for _ in range(layers)])


def save(root: Path, size: int) -> None:
    state = State()
    state.model = _model(size)
    state.epoch = 3
    local_session(root, state, durable=False).save()


def load(root: Path, size: int) -> dict:
    import torch  # noqa: F401  (imported before the baseline, as in a task)

    base = _status_kb("VmRSS") * 1024
    state = State()
    state.model = _model(size)
    model_bytes = sum(p.numel() * p.element_size() for p in state.model.parameters())
    with_model = _status_kb("VmRSS") * 1024 - base
    session = local_session(root, state, attempt=1, durable=False)
    _reset_peak()
    session.load()
    peak = _status_kb("VmHWM") * 1024 - base
    return {"bytes": model_bytes, "with_model": with_model, "peak": peak}


def main() -> None:
    workdir, size = Path(sys.argv[1]), int(sys.argv[2])
    if len(sys.argv) > 3:
        if sys.argv[3] == "save":
            save(workdir, size)
        else:
            print(json.dumps(load(workdir, size)))
        return
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    for phase in ("save", "load"):
        done = subprocess.run(
            [sys.executable, __file__, str(workdir), str(size), phase],
            check=True, stdout=subprocess.PIPE, text=True,
        )
    shutil.rmtree(workdir, ignore_errors=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["peak_over_model"] = result["peak"] / result["bytes"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
