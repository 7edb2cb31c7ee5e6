"""Shared fixtures: an isolated Metaflow world per test, and helpers to run real flows."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TEST_FLOWS = REPO / "tests" / "flows"
EXAMPLE_FLOWS = REPO / "flows"


class MetaflowWorld:
    """A private METAFLOW_HOME, local datastore and metadata under one directory."""

    def __init__(self, root: Path):
        self.root = root
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("METAFLOW_", "AWS_"))
        }
        self.env.update(
            {
                "USERNAME": "tester",
                "METAFLOW_HOME": str(root),
                "METAFLOW_DEFAULT_DATASTORE": "local",
                "METAFLOW_DEFAULT_METADATA": "local",
                "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(root),
                "PYTHONUNBUFFERED": "1",
            }
        )

    @property
    def datastore_root(self) -> Path:
        return self.root / ".metaflow"

    def run_flow(self, flow: Path, *args: str, check: bool = True, timeout: int = 300):
        """Run ``python flow.py run ARGS`` and return the completed process (output merged)."""
        return self.command(flow, "run", *args, check=check, timeout=timeout)

    def command(self, flow: Path, *args: str, check: bool = True, timeout: int = 300):
        """Run ``python flow.py ARGS`` (any Metaflow command) and return the process."""
        proc = subprocess.run(
            [sys.executable, str(flow), "--no-pylint", *args],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError("%s %s failed:\n%s" % (flow.name, " ".join(args), proc.stdout[-6000:]))
        return proc

    def start_run(self, flow: Path, *args: str) -> subprocess.Popen:
        """Start ``python flow.py run ARGS`` in the background (output merged, as text)."""
        return subprocess.Popen(
            [sys.executable, str(flow), "--no-pylint", "run", *args],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def python(self, code: str, timeout: int = 120):
        """Run ``code`` in a separate Python process (a "notebook") and return the JSON it
        prints on its last line."""
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise AssertionError("notebook process failed:\n%s\n%s" % (proc.stdout, proc.stderr))
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def latest_run_id(self, flow_name: str) -> str:
        return self.python(
            """
            import json
            from metaflow import Flow, namespace
            namespace(None)
            print(json.dumps(Flow(%r).latest_run.id))
            """
            % flow_name
        )


@pytest.fixture
def world(tmp_path) -> MetaflowWorld:
    root = tmp_path / "mf"
    root.mkdir()
    return MetaflowWorld(root)


@pytest.fixture
def write_flow(tmp_path):
    """Write a flow file from source text and return its path."""

    def write(source: str, name: str = "flow_under_test.py") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(source))
        return path

    return write


#: The modules whose tests take longest (real flows of many processes), slowest first.
#: They start first (make test steals work between the xdist workers), so the two
#: workers end together instead of one of them running a 2-minute flow alone at the end.
SLOWEST_FIRST = (
    "test_torchrun.py",
    "test_gang_flow.py",
    "test_resume_command.py",
    "test_lease_fence.py",
    "test_hostile_checkpoints.py",
    "test_fuzz_trust.py",
    "test_fidelity_flows.py",
    "test_train_resume_example.py",
    "test_newcomer.py",
    "test_s3.py",
    "test_lightning_flow.py",
    "test_hf_trainer_flow.py",
    "test_card.py",
    "test_seed_compat.py",
    "test_gc_stress.py",
    "test_restore_in_place.py",
    "test_foreach_flow.py",
    "test_damaged_blob_flow.py",
    "test_eager.py",
    "test_worker_saves.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: position for position, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
