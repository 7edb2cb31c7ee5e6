"""`python flow.py checkpoint list|inspect|status|gc`: on real runs, as subprocesses
(status while a run goes on, list, a failing command), and the printers of `inspect` and
`gc` in this process, through the same click commands, on the same stored run."""

import importlib.util
import json
import time

import pytest
from conftest import TEST_FLOWS

STATUS_FLOW = TEST_FLOWS / "status_flow.py"
RESUME_FLOW = TEST_FLOWS / "resume_flow.py"


@pytest.mark.flow
def test_status_of_completed_failed_and_running_steps(world, tmp_path):
    run = world.start_run(STATUS_FLOW, "--signals", str(tmp_path))
    try:
        deadline = time.time() + 120
        steps = {}
        while time.time() < deadline:
            proc = world.command(STATUS_FLOW, "checkpoint", "status", "--json", check=False)
            if proc.returncode == 0:
                report = json.loads(proc.stdout[proc.stdout.index("{"):])
                steps = {s["step"]: s for s in report["steps"]}
                if steps.get("broken", {}).get("status") == "failed" and steps["busy"]["checkpoints"]:
                    break
            time.sleep(0.5)
        assert steps["done"]["status"] == "completed"
        assert steps["broken"]["status"] == "failed"
        assert steps["busy"]["status"] == "in_progress"
        for name, loss in (("done", 0.5), ("broken", 0.9), ("busy", 0.7)):
            assert steps[name]["attempts"] == 1 and steps[name]["checkpoints"] == 1
            assert steps[name]["newest"]["metadata"] == {"loss": loss}
            assert steps[name]["bytes_written"] == 0  # all in the manifest: the graph is inline

        table = world.command(STATUS_FLOW, "checkpoint", "status").stdout
        for line_start, state in (("done", "completed"), ("broken", "failed"), ("busy", "in_progress")):
            (line,) = [ln for ln in table.splitlines() if ln.startswith(line_start + " ")]
            assert state in line
    finally:
        (tmp_path / "release").write_text("go")
        out, _ = run.communicate(timeout=120)
    assert run.returncode != 0 and "broken" in out


@pytest.mark.flow
def test_list_commands(resumed_run):
    # The session's shared run: killed after save 3 of 5, resumed by attempt 1.
    world = resumed_run.world
    listing = world.command(RESUME_FLOW, "checkpoint", "list", "--json").stdout
    artifacts = json.loads(listing[listing.index("["):])
    assert [a["version"] for a in artifacts] == [1, 2, 3, 4, 5]
    assert [a["attempt"] for a in artifacts] == [0, 0, 0, 1, 1]
    table = world.command(RESUME_FLOW, "checkpoint", "list").stdout
    assert all(a["key"] in table for a in artifacts)

    unknown_run = world.command(RESUME_FLOW, "checkpoint", "list", "--run-id", "424242", check=False)
    assert unknown_run.returncode != 0 and "does not exist" in unknown_run.stdout


class InProcessCli:
    """The `checkpoint` commands invoked here, with the state Metaflow's CLI hands them
    (metaflow.cli.start builds it): the flow, its datastore on the world's root, the echo."""

    def __init__(self, world, flow_file, flow_name: str):
        from metaflow._vendor.click.testing import CliRunner
        from metaflow.cli import CliState, echo_always
        from metaflow.datastore import FlowDataStore
        from metaflow.plugins.datastores.local_storage import LocalStorage

        spec = importlib.util.spec_from_file_location(flow_file.stem, flow_file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.state = CliState(getattr(module, flow_name)(use_cli=False))
        self.state.echo_always = echo_always
        self.state.flow_datastore = FlowDataStore(
            self.state.flow.name, storage_impl=LocalStorage, ds_root=str(world.datastore_root)
        )
        self.runner = CliRunner()

    def __call__(self, *args: str):
        from metaflow_extensions.implicit_checkpoint.plugins.checkpoint_cli import checkpoint

        return self.runner.invoke(checkpoint, list(args), obj=self.state)


@pytest.mark.flow
def test_inspect_and_gc_print_what_the_store_holds(resumed_run):
    cli = InProcessCli(resumed_run.world, RESUME_FLOW, "ResumeFlow")
    prefix = resumed_run.task_pathspec + "/"
    keys = [prefix + "%d/%s/%d" % (attempt, "even" if v % 2 == 0 else "odd", v)
            for v, attempt in ((1, 0), (2, 0), (3, 0), (4, 1), (5, 1))]

    shown = cli("inspect", keys[-1])
    assert shown.exit_code == 0, shown.output
    assert keys[-1] in shown.output and "weights" in shown.output and "float64 [1000]" in shown.output
    assert "from %s" % keys[2] in shown.output  # the retry resumed from attempt 0's third save
    as_json = cli("inspect", keys[-1], "--json")
    assert json.loads(as_json.output[as_json.output.index("{"):])["fields"]["count"]["value"] == 5

    missing = cli("inspect", keys[-1][:-1] + "9")
    assert missing.exit_code != 0 and "No committed checkpoint" in str(missing.exception)
    malformed = cli("inspect", "nonsense")
    assert malformed.exit_code != 0 and "not a checkpoint key" in str(malformed.exception)

    dry = cli("gc", "--dry-run")
    assert dry.exit_code == 0 and "Would delete 0 unreferenced blob(s)" in dry.output
    negative = cli("gc", "--grace-seconds", "-5")
    assert negative.exit_code != 0 and "0 seconds or more" in str(negative.exception)


def test_a_task_state_is_never_in_progress_once_nothing_runs_it():
    """`checkpoint status`'s decision, attempt by attempt (what each attempt's metadata
    and process say), as the runs in test_newcomer.py reach it."""
    from metaflow_extensions.implicit_checkpoint.plugins.checkpoint_cli import _task_state
    from metaflow_extensions.implicit_checkpoint.plugins.task_status import AttemptRecord

    def attempts(*statuses, alive=None, not_retryable=False):
        *older, newest = statuses
        return [AttemptRecord(i, s, None) for i, s in enumerate(older)] + [
            AttemptRecord(len(older), newest, None, not_retryable, alive)
        ]

    # Running on this machine: in progress, even when another task ended the run.
    assert _task_state(attempts("running", alive=True), 1, run_over=True) == "in_progress"
    # Running elsewhere (unknown): in progress until the run is over, then killed.
    assert _task_state(attempts("running"), 1, run_over=False) == "in_progress"
    assert _task_state(attempts("running"), 1, run_over=True) == "killed"
    # Failed with a retry left: the runtime starts the next attempt, unless the error is
    # one no retry fixes, or the run is over.
    assert _task_state(attempts("failed"), 3, run_over=False) == "in_progress"
    assert _task_state(attempts("failed", not_retryable=True), 3, run_over=False) == "failed"
    assert _task_state(attempts("killed"), 3, run_over=True) == "killed"
    # No retry left.
    assert _task_state(attempts("killed", "failed"), 2, run_over=False) == "failed"
    assert _task_state(attempts("killed"), 1, run_over=False) == "killed"
    assert _task_state(attempts("failed", "succeeded"), 2, run_over=False) == "completed"


def test_an_attempt_whose_process_is_gone_reads_killed():
    import json
    import socket
    import subprocess
    import sys

    from metaflow_extensions.implicit_checkpoint.plugins.task_status import process_alive, this_process

    assert process_alive(json.dumps(this_process())) is True
    child = subprocess.Popen([sys.executable, "-c", "import json, sys; sys.path[:0] = %r\n"
                              "from metaflow_extensions.implicit_checkpoint.plugins.task_status import this_process\n"
                              "print(json.dumps(this_process()))" % sys.path],
                             stdout=subprocess.PIPE, text=True)
    recorded, _ = child.communicate(timeout=60)
    assert process_alive(recorded.strip()) is False  # exited (and reaped)
    elsewhere = dict(this_process(), host=socket.gethostname() + "-elsewhere")
    assert process_alive(json.dumps(elsewhere)) is None  # another machine: cannot tell
    reused = dict(this_process(), start=this_process()["start"] + 1) if this_process()["start"] else None
    if reused:
        assert process_alive(json.dumps(reused)) is False  # a later process with that pid
    assert process_alive(None) is None and process_alive("not json") is None
