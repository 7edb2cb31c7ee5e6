"""metaflow-checkpoint saving and loading a torch state dict, timed inside its own step.

Runs with the python of benchmarks/.venv-peer, driven by benchmarks/peer_metaflow_checkpoint.py.
Used the way metaflow-checkpoint's documentation shows for a torch model:

- save: ``torch.save(state_dict, <file in current.checkpoint.directory>)``, then
  ``current.checkpoint.save()``, which stores that directory and returns a reference;
- load: ``current.checkpoint.load(reference)``, which restores the directory into
  ``current.checkpoint.directory``, then ``torch.load`` of the file.

All saves run before all loads: on the local datastore a load leaves symlinks into the
datastore in ``current.checkpoint.directory``, so a later ``torch.save`` there would
overwrite an already stored checkpoint.
"""

import json
import os
import sys
import time
from pathlib import Path

import torch
from metaflow import FlowSpec, Parameter, checkpoint, current, step

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from states import nbytes, state_dict  # noqa: E402

MODEL_FILE = "model.pt"
PEER_PACKAGE = "metaflow_extensions.obcheckpoint"


def _check_loaded(loaded: dict, state: dict) -> None:
    if loaded.keys() != state.keys() or not all(torch.equal(loaded[k], state[k]) for k in state):
        raise AssertionError("metaflow-checkpoint loaded a state that differs from the one saved")


class MetaflowCheckpointBenchFlow(FlowSpec):
    size_bytes = Parameter("size_bytes", type=int, required=True, help="Bytes of the state dict")
    runs = Parameter("runs", type=int, required=True, help="Saves (then loads) to time")
    timings_file = Parameter("timings_file", required=True, help="JSON file the samples are written to")

    # show_card=False: the default card starts a thread that lists the checkpoints every
    # 3 s and re-renders a card while the step runs, which is not part of a save or load.
    @checkpoint(show_card=False)
    @step
    def start(self):
        if not type(current.checkpoint).__module__.startswith(PEER_PACKAGE):
            raise RuntimeError(
                "current.checkpoint is %s, not metaflow-checkpoint's: run this flow with the "
                "python of benchmarks/.venv-peer" % type(current.checkpoint).__module__
            )
        state = state_dict(self.size_bytes)
        samples = {"torch_save": [], "their_save": [], "their_load": [], "torch_load": []}

        references = []
        model_path = os.path.join(current.checkpoint.directory, MODEL_FILE)
        for _ in range(self.runs):
            os.sync()  # start from a quiet disk, like every other save the suite times
            started = time.perf_counter()
            torch.save(state, model_path)
            written = time.perf_counter()
            references.append(current.checkpoint.save())
            samples["torch_save"].append(written - started)
            samples["their_save"].append(time.perf_counter() - written)

        for reference in references:
            started = time.perf_counter()
            current.checkpoint.load(reference)
            restored = time.perf_counter()
            loaded = torch.load(os.path.join(current.checkpoint.directory, MODEL_FILE))
            samples["their_load"].append(restored - started)
            samples["torch_load"].append(time.perf_counter() - restored)
            _check_loaded(loaded, state)
            del loaded  # free this copy before the next load

        Path(self.timings_file).write_text(json.dumps({"bytes": nbytes(state), "samples": samples}))
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    MetaflowCheckpointBenchFlow()
