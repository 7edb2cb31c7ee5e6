"""The engine needs no Metaflow: imported and used with metaflow made unimportable."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.flow

NO_METAFLOW = """
import json, sys

class Unimportable:
    def find_spec(self, name, path=None, target=None):
        if name == "metaflow" or name.startswith("metaflow."):
            raise ImportError("metaflow is unimportable in this test")

sys.meta_path.insert(0, Unimportable())
sys.path.insert(0, %r)
import torch
from metaflow_extensions.implicit_checkpoint.engine.backends import LocalDirBackend
from metaflow_extensions.implicit_checkpoint.engine.errors import CheckpointException, CheckpointNotFound
from metaflow_extensions.implicit_checkpoint.engine.session import AttributeSource, CheckpointSession, TaskIdentity
from metaflow_extensions.implicit_checkpoint.engine.store import CheckpointStore


class State:
    pass


def session(state, attempt):
    s = CheckpointSession(
        CheckpointStore(LocalDirBackend(%r)),
        TaskIdentity("UnitFlow", "1", "train", "1", attempt),
        AttributeSource(lambda: dict(vars(state))),
        target=state,
    )
    s.start()
    return s


state = State()
state.model = torch.nn.Linear(4, 2)
state.step = 7
session(state, 0).save(metadata={"loss": 0.5})
resumed = State()
resumed.model = torch.nn.Linear(4, 2)
retry = session(resumed, 1)
retry.load()
try:
    retry.load("UnitFlow/1/train/1/0/checkpoint/99")
except CheckpointNotFound as ex:
    missing = isinstance(ex, CheckpointException)
print(json.dumps({
    "same": torch.equal(resumed.model.weight, state.model.weight) and resumed.step == 7,
    "errors": missing,
    "metaflow_loaded": any(m == "metaflow" or m.startswith("metaflow.") for m in sys.modules),
}))
"""


def test_the_engine_saves_and_loads_with_metaflow_unimportable(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", NO_METAFLOW % (str(REPO), str(tmp_path))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
        "same": True,
        "errors": True,
        "metaflow_loaded": False,
    }
