"""Save and load of the benchmark state by metaflow-checkpoint, Outerbounds' @checkpoint extension.

metaflow-checkpoint registers a step decorator named ``checkpoint`` and ``current.checkpoint``,
as our package does, so the two cannot be installed together: its flow
(peer_flows/metaflow_checkpoint_flow.py) runs with the python of benchmarks/.venv-peer, which
``make bench`` builds. The flow times save and load inside its step; this module runs it in an
isolated Metaflow home and datastore. run.py calls it once per round (one warm-up save and
load, then one timed), between our cases of that round.

    measure(workdir, 100 * 1024 * 1024, repeats=1)                        # local datastore
    measure(workdir, 100 * 1024 * 1024, repeats=1, env_overrides=s3_env)  # S3, see METAFLOW_NOTES.md
"""

import json
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

from measure import isolated_metaflow_env

HERE = Path(__file__).resolve().parent
PEER_VENV = HERE / ".venv-peer"
PEER_PYTHON = PEER_VENV / "bin" / "python"
FLOW = HERE / "peer_flows" / "metaflow_checkpoint_flow.py"
STDERR_TAIL = 4000


def _peer_python() -> Path:
    if not PEER_PYTHON.exists():
        raise RuntimeError(
            "metaflow-checkpoint's virtualenv is missing: %s does not exist. Build it with "
            "`make %s/.installed` (`make bench` builds it too)." % (PEER_PYTHON, PEER_VENV.relative_to(HERE.parent))
        )
    return PEER_PYTHON


def measure(
    workdir: Path, size_bytes: int, repeats: int, env_overrides: Optional[Dict[str, str]] = None
) -> Dict[str, List[float]]:
    """Seconds of metaflow-checkpoint saving and loading a ``states.state_dict(size_bytes)``.

    One flow run makes ``repeats`` timed saves and then ``repeats`` timed loads, after one
    warm-up save and load that are dropped. ``env_overrides`` is applied on top of the isolated
    local setup, e.g. to point the datastore at S3.

    Returns
    -------
    dict
        Samples (one per timed run, warm-up dropped): ``save`` (torch.save into the checkpoint
        directory plus ``current.checkpoint.save()``, what a user waits for) with its parts
        ``torch_save`` and ``their_save``; ``load`` (``current.checkpoint.load(reference)``
        plus ``torch.load``) with its parts ``their_load`` and ``torch_load``.
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1, got %d" % repeats)
    python = _peer_python()
    root = Path(workdir) / "metaflow-checkpoint"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    timings_file = root / "timings.json"
    env = isolated_metaflow_env(root)
    # Nothing of ours may be importable next to metaflow-checkpoint.
    env.pop("PYTHONPATH", None)
    env.update(env_overrides or {})
    command = [
        str(python), str(FLOW), "--no-pylint", "run",
        "--size_bytes", str(size_bytes),
        "--runs", str(repeats + 1),
        "--timings_file", str(timings_file),
    ]
    try:
        finished = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
        if finished.returncode != 0:
            raise RuntimeError(
                "the metaflow-checkpoint flow failed (exit %d): %s\n%s"
                % (finished.returncode, " ".join(command), (finished.stdout + finished.stderr)[-STDERR_TAIL:])
            )
        measured = json.loads(timings_file.read_text())
    finally:
        shutil.rmtree(root, ignore_errors=True)

    samples = {part: runs[1:] for part, runs in measured["samples"].items()}  # [0] is the warm-up
    saves = [a + b for a, b in zip(samples["torch_save"], samples["their_save"])]
    loads = [a + b for a, b in zip(samples["their_load"], samples["torch_load"])]
    return dict(samples, save=saves, load=loads)
