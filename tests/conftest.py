"""Shared fixtures: an isolated Metaflow world per test, and helpers to run real flows."""

import json
import os
import shutil
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


# -- one crashed-and-resumed ResumeFlow run, shared by the checks that only read it --------

RESUME_FLOW = TEST_FLOWS / "resume_flow.py"

#: The shared run: train is SIGKILLed after its 3rd save; the retry resumes from it and
#: saves 4 and 5 (versions 1-3 by attempt 0, 4-5 by attempt 1).
RESUMED_RUN_ARGS = ("--crash", "kill", "--crash-after", "3", "--saves", "5")


class ResumedRun:
    """What the shared run left: a world over its datastore, its run id, its output."""

    def __init__(self, world: MetaflowWorld, run_id: str, output: str):
        self.world = world
        self.run_id = run_id
        self.output = output

    @property
    def task_pathspec(self) -> str:
        return "ResumeFlow/%s/train/2" % self.run_id


def _shared_folder(tmp_path_factory) -> Path:
    """A folder every xdist worker of this session sees (the parent of their base temps),
    or this session's base temp without xdist."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def _resumed_run_record(tmp_path_factory) -> dict:
    # The first worker to get here runs the flow under the lock; the other waits, then
    # reads what it recorded. A run that failed records nothing: the next user retries it.
    import fcntl

    folder = _shared_folder(tmp_path_factory)
    root, record = folder / "resumed-run", folder / "resumed-run.json"
    with open(folder / "resumed-run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            world = MetaflowWorld(root)
            proc = world.run_flow(RESUME_FLOW, *RESUMED_RUN_ARGS)
            run_id = world.latest_run_id("ResumeFlow")
            record.write_text(json.dumps({"root": str(root), "run_id": run_id, "output": proc.stdout}))
        return json.loads(record.read_text())


def _files_under(root: Path) -> dict:
    return {str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in root.rglob("*") if path.is_file()}


@pytest.fixture
def resumed_run(_resumed_run_record) -> ResumedRun:
    """The session's ResumeFlow run (RESUMED_RUN_ARGS), for checks that only read it:
    list, inspect, load, fetch its card. Each test gets a world of its own over the shared
    datastore (its ``env`` is the test's to change). A test that changed a file of the
    datastore fails: it needs a run of its own."""
    record = _resumed_run_record
    shared = ResumedRun(MetaflowWorld(Path(record["root"])), record["run_id"], record["output"])
    before = _files_under(shared.world.datastore_root)
    yield shared
    after = _files_under(shared.world.datastore_root)
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    assert not changed, "the shared resumed run is read-only; this test changed %s" % changed[:5]


# -- slowest modules first, from recorded durations ----------------------------------------

#: Seconds each test module took (setup, calls and teardown of its tests) in the last
#: recorded run: `make test-durations` rewrites it (pytest --record-durations).
DURATIONS = REPO / "tests" / "durations.json"


def pytest_addoption(parser):
    parser.addoption(
        "--record-durations",
        action="store_true",
        help="write each test module's time to tests/durations.json (modules not run keep theirs)",
    )


def _module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(items):
    # The slowest modules start first (make test steals work between the xdist workers),
    # so the two workers end together instead of one running a 2-minute flow alone at the
    # end. A module with no recorded time (a new one) starts before all: it may be slow.
    # The sort is stable: a module's tests stay together, in the file's order, so module
    # fixtures are set up once per worker.
    recorded = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    items.sort(key=lambda item: -recorded.get(_module_of(item.nodeid), float("inf")))


class _DurationRecorder:
    """Sums the reports' durations per module and merges them into tests/durations.json."""

    def __init__(self):
        self.seconds = {}

    def pytest_runtest_logreport(self, report):
        module = _module_of(report.nodeid)
        self.seconds[module] = self.seconds.get(module, 0.0) + report.duration

    def pytest_sessionfinish(self):
        recorded = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
        recorded.update({module: round(seconds, 1) for module, seconds in self.seconds.items()})
        DURATIONS.write_text(json.dumps(dict(sorted(recorded.items())), indent=1) + "\n")


def pytest_configure(config):
    # Under xdist the reports reach the controller too: it alone records.
    if config.getoption("--record-durations") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_DurationRecorder(), "duration-recorder")
