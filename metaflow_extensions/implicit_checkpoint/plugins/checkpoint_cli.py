"""`python flow.py checkpoint list|inspect|status|gc|verify`: checkpoints from a terminal."""

import json
from typing import List, Optional

from metaflow._vendor import click

from ..engine.artifact import CheckpointArtifact
from ..engine.errors import CheckpointException
from ..engine.gc import DEFAULT_GRACE, DEFAULT_WAIT, collect_garbage
from ..engine.keys import CheckpointKey
from ..engine import reading
from ..engine.verify import verify_checkpoints
from .formatting import gang_note, human_bytes, reuse_note, stored_bytes
from .store_binding import store_for_datastore
from .task_status import FAILED, RUNNING, SUCCEEDED, attempt_statuses

NOT_STARTED, IN_PROGRESS, COMPLETED = "not_started", "in_progress", "completed"
SIZE_LEGEND = (
    "SIZE: the checkpoint's data in the store (fields, files and RNG state); WRITTEN: the part of "
    "it this save wrote (the rest was already stored by an earlier save)."
)


@click.group()
def cli():
    pass


@cli.group(help="Inspect and manage checkpoints saved by @checkpoint.")
def checkpoint():
    pass


def run_options(command):
    """The options that pick a run, as Metaflow's own commands spell them."""
    command = click.option(
        "--all-namespaces",
        is_flag=True,
        help="Look for the latest run in every namespace, not only in yours.",
    )(command)
    command = click.option(
        "--namespace",
        "user_namespace",
        default=None,
        help="Look for the latest run in this namespace (default: yours, user:$USERNAME).",
    )(command)
    return click.option(
        "--run-id",
        default=None,
        help="The run (any namespace; default: the latest run of this flow in your namespace).",
    )(command)


def _run(obj, run_id: Optional[str], user_namespace: Optional[str], all_namespaces: bool):
    """The client Run: the given id (in any namespace, as Metaflow's `card` commands find
    one), or this flow's latest run in the chosen namespace."""
    from metaflow import Flow, Run, get_namespace, namespace
    from metaflow.exception import MetaflowNamespaceMismatch, MetaflowNotFound

    flow = obj.flow.name
    if run_id is not None:
        namespace(None)
        try:
            return Run("%s/%s" % (flow, run_id))
        except MetaflowNotFound:
            raise CheckpointException(
                "Run %s/%s does not exist (in any namespace). %s"
                % (flow, run_id, _latest_runs_hint(flow))
            )
    if all_namespaces:
        namespace(None)
    elif user_namespace is not None:
        namespace(user_namespace)
    searched = get_namespace()
    try:
        run = Flow(flow).latest_run
    except (MetaflowNamespaceMismatch, MetaflowNotFound):
        run = None
    if run is None:
        where = "in any namespace" if searched is None else "in namespace %s" % searched
        raise CheckpointException(
            "No run of %s was found %s. %s" % (flow, where, _latest_runs_hint(flow))
        )
    return run


def _latest_runs_hint(flow: str) -> str:
    """What to type instead: the newest run of ``flow`` in any namespace, and whose it is."""
    from metaflow import Flow, namespace
    from metaflow.exception import MetaflowNotFound

    namespace(None)
    try:
        run = Flow(flow).latest_run
    except MetaflowNotFound:
        run = None
    if run is None:
        return (
            "This flow has no run in this datastore and metadata (check METAFLOW_HOME and "
            "METAFLOW_DATASTORE_SYSROOT_LOCAL, or run the flow first)."
        )
    users = sorted(tag for tag in run.system_tags if tag.startswith("user:"))
    return (
        "The latest run in any namespace is %s%s: pass --run-id %s, or --namespace %s, "
        "or --all-namespaces."
        % (run.pathspec, " (%s)" % ", ".join(users) if users else "", run.id,
           users[0] if users else "NAMESPACE")
    )


def _checkpointed_steps(obj) -> List[str]:
    return [
        node.name
        for node in obj.graph
        if any(deco.name == "checkpoint" for deco in getattr(obj.flow, node.name).decorators)
    ]


def _max_attempts(obj, step: str) -> int:
    user_retries = 0
    for deco in getattr(obj.flow, step).decorators:
        user_retries = max(user_retries, deco.step_task_retry_count()[0])
    return user_retries + 1


def _run_artifacts(store, run) -> List[CheckpointArtifact]:
    return reading.list_run(store, *run.pathspec.split("/"))


def _table(echo, headers: List[str], rows: List[List[str]]) -> None:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    line = "  ".join("%%-%ds" % w for w in widths)
    echo(line % tuple(headers))
    for row in rows:
        echo(line % tuple(row))


def _echo(obj):
    return lambda text: obj.echo_always(text, err=False)


@checkpoint.command("list", help="List a run's checkpoints, newest last.")
@run_options
@click.option("--step", default=None, help="Only this step.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_obj
def list_checkpoints(obj, run_id, user_namespace, all_namespaces, step, as_json):
    run = _run(obj, run_id, user_namespace, all_namespaces)
    artifacts = _run_artifacts(store_for_datastore(obj.flow_datastore), run)
    if step:
        artifacts = [a for a in artifacts if a.step_name == step]
    echo = _echo(obj)
    if as_json:
        echo(json.dumps([a.to_dict() for a in artifacts], indent=2))
        return
    if not artifacts:
        echo("No checkpoints in run %s." % run.pathspec)
        return
    _table(
        echo,
        ["KEY", "CREATED (UTC)", "SIZE", "WRITTEN", "METADATA"],
        [
            [
                _key_cell(a),
                a.created_on[:19].replace("T", " "),
                human_bytes(stored_bytes(a.implicit_manifest)),
                human_bytes(a.implicit_manifest.get("bytes_written", 0)),
                json.dumps(a.metadata)[:60],
            ]
            for a in artifacts
        ],
    )
    echo(SIZE_LEGEND)


@checkpoint.command("inspect", help="Show one checkpoint's manifest (reads no field data).")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_obj
def inspect_checkpoint(obj, key, as_json):
    store = store_for_datastore(obj.flow_datastore)
    manifest = reading.inspect_checkpoint(store, key)
    echo = _echo(obj)
    if as_json:
        echo(json.dumps(manifest, indent=2, default=str))
        return
    echo("Checkpoint  %s" % manifest["key"])
    echo("Created     %s (attempt %d, version %d)" % (manifest["created_on"], manifest["attempt"], manifest["version"]))
    echo("Resumed     from %s" % (manifest["parent"] or "nothing (a fresh start)"))
    stored, written = stored_bytes(manifest), manifest.get("bytes_written", 0)
    echo(
        "Size        %s in the store (fields, files and RNG state), %s of it written by this save (%s)"
        % (human_bytes(stored), human_bytes(written), reuse_note(stored, written) or "nothing stored")
    )
    echo("Field data  %s (the fields below; tensors they share counted once)" % human_bytes(manifest["size"]))
    echo("Metadata    %s" % json.dumps(manifest["metadata"]))
    echo("RNG state   %s" % (", ".join(manifest["rng"]) if manifest["rng"] else "not captured"))
    gang = manifest.get("gang")
    parts = gang["parts"] if gang else [{"node": None, "fields": manifest["fields"]}]
    if gang:
        echo("Gang        %d nodes, each its own part (`Checkpoint().load(key, node=N)`)" % gang["num_nodes"])
    echo("")
    _table(
        echo,
        (["NODE"] if gang else []) + ["FIELD", "TYPE", "CODEC", "SIZE", "DETAIL"],
        [
            ([str(part["node"])] if gang else [])
            + [name, info["type"], info["codec"], human_bytes(info["size"]), _field_detail(info)]
            for part in parts
            for name, info in sorted(part["fields"].items())
        ],
    )
    files = manifest.get("files")
    if files is not None:
        echo("")
        echo(
            "Files       %d in current.checkpoint.directory, %s%s"
            % (
                len(files),
                human_bytes(sum(info["size"] for info in files.values())),
                " (node 0's)" if gang else "",
            )
        )
        if files:
            _table(
                echo,
                ["FILE", "SIZE"],
                [
                    [rel, "-> %s" % info["symlink"] if "symlink" in info else human_bytes(info["size"])]
                    for rel, info in sorted(files.items())
                ],
            )


def _key_cell(artifact: CheckpointArtifact) -> str:
    cell = artifact.key + gang_note(artifact.implicit_manifest)
    return cell if artifact.intact else "%s (DAMAGED: verify)" % cell


def _field_detail(info: dict) -> str:
    if "alias_of" in info:
        return "same object as %s" % info["alias_of"]
    if "shape" in info:
        return "%s %s" % (info["dtype"], info["shape"])
    if "value" in info:
        return repr(info["value"])[:40]
    if "tensors" in info:
        return "%d tensors" % info["tensors"]
    return ""


@checkpoint.command("status", help="Progress of each @checkpoint step of a run.")
@run_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_obj
def status(obj, run_id, user_namespace, all_namespaces, as_json):
    run = _run(obj, run_id, user_namespace, all_namespaces)
    artifacts = _run_artifacts(store_for_datastore(obj.flow_datastore), run)
    rows = [_step_status(obj, run, step, artifacts) for step in _checkpointed_steps(obj)]
    echo = _echo(obj)
    if as_json:
        echo(json.dumps({"run": run.pathspec, "steps": rows}, indent=2))
        return
    echo("Run %s" % run.pathspec)
    _table(
        echo,
        ["STEP", "STATUS", "TASKS", "ATTEMPTS", "CHECKPOINTS", "WRITTEN", "NEWEST", "METADATA"],
        [
            [
                r["step"],
                r["status"],
                str(r["tasks"]),
                str(r["attempts"]),
                str(r["checkpoints"]),
                human_bytes(r["bytes_written"]),
                (r["newest"]["key"] + ("" if r["newest"]["intact"] else " (DAMAGED)"))
                if r["newest"]
                else "-",
                json.dumps(r["newest"]["metadata"])[:50] if r["newest"] else "",
            ]
            for r in rows
        ],
    )


def _step_status(obj, run, step: str, artifacts: List[CheckpointArtifact]) -> dict:
    mine = [a for a in artifacts if a.step_name == step]
    task_states, attempts = [], 0
    try:
        tasks = list(run[step])
    except KeyError:
        tasks = []
    for task in tasks:
        statuses = attempt_statuses(task.pathspec)
        attempts += len(statuses)
        task_states.append(_task_state(statuses, _max_attempts(obj, step)))
    if not task_states:
        state = NOT_STARTED
    elif FAILED in task_states:
        state = FAILED
    elif IN_PROGRESS in task_states:
        state = IN_PROGRESS
    else:
        state = COMPLETED
    newest = mine[-1] if mine else None
    return {
        "step": step,
        "status": state,
        "tasks": len(task_states),
        "attempts": attempts,
        "checkpoints": len(mine),
        "bytes_written": sum(a.implicit_manifest.get("bytes_written", 0) for a in mine),
        "damaged": [a.key for a in mine if not a.intact],
        "newest": None
        if newest is None
        else {"key": newest.key, "created_on": newest.created_on, "metadata": newest.metadata,
              "size": newest.size, "intact": newest.intact},
    }


def _task_state(statuses: List[str], max_attempts: int) -> str:
    if not statuses or statuses[-1] == RUNNING:
        return IN_PROGRESS
    if statuses[-1] == SUCCEEDED:
        return COMPLETED
    # The newest attempt failed: the task is done only if no retry is left.
    return FAILED if len(statuses) >= max_attempts else IN_PROGRESS


@checkpoint.command("gc", help="Delete blobs that no checkpoint references.")
@click.option("--dry-run", is_flag=True, help="Only print what would be deleted, and how many bytes.")
@click.option(
    "--grace-seconds",
    default=DEFAULT_GRACE,
    show_default=True,
    type=float,
    help="Keep unreferenced blobs younger than this (saves in progress are protected by "
    "their leases whatever the grace).",
)
@click.option(
    "--wait",
    default=DEFAULT_WAIT,
    show_default=True,
    type=float,
    help="Seconds to wait for saves in progress before giving up (deleting nothing).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_obj
def gc(obj, dry_run, grace_seconds, wait, as_json):
    report = collect_garbage(
        store_for_datastore(obj.flow_datastore), obj.flow.name, dry_run, grace_seconds, wait
    )
    echo = _echo(obj)
    if as_json:
        echo(json.dumps(report.to_dict(), indent=2))
        return
    verb = "Would delete" if dry_run else "Deleted"
    echo(
        "%s %d unreferenced blob(s), %s, of flow %s (%d manifests reference %d blobs)."
        % (verb, len(report.deleted_blobs), human_bytes(report.deleted_bytes), obj.flow.name,
           report.manifests, report.referenced_blobs)
    )
    if dry_run:
        for digest in report.deleted_blobs:
            echo("  %s" % digest)
    if report.kept_young_blobs:
        echo("Kept %d unreferenced blob(s) younger than %.0f s." % (report.kept_young_blobs, grace_seconds))
    if report.deleted_temp_files:
        echo("%s %d stale temp file(s)." % (verb, report.deleted_temp_files))
    if report.aborted_uploads:
        echo("%s %d abandoned multipart upload(s)." % ("Would abort" if dry_run else "Aborted", report.aborted_uploads))
    if report.busy:
        echo("Deleted nothing: %d save(s) in progress did not finish within %.0f s; run "
             "gc again later." % (len(report.busy), wait))


@checkpoint.command(
    "verify",
    help="Read and hash every blob a run's checkpoints reference; report each checkpoint "
    "as intact or damaged. Nothing is deleted unless --repair.",
)
@run_options
@click.option(
    "--repair",
    is_flag=True,
    help="Delete damaged blobs, so the next save of the same content writes them again.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_obj
def verify(obj, run_id, user_namespace, all_namespaces, repair, as_json):
    run = _run(obj, run_id, user_namespace, all_namespaces)
    store = store_for_datastore(obj.flow_datastore)
    keys = [CheckpointKey.parse(a.key) for a in _run_artifacts(store, run)]
    report = verify_checkpoints(store, obj.flow.name, keys, repair)
    echo = _echo(obj)
    if as_json:
        echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_verify_report(echo, run.pathspec, report, repair)
    if report.damaged:
        raise CheckpointException(
            "%d of %d checkpoint(s) of run %s are damaged."
            % (len(report.damaged), len(report.checkpoints), run.pathspec)
        )


def _print_verify_report(echo, run: str, report, repair: bool) -> None:
    echo(
        "Run %s: %d checkpoint(s), %d blob(s) read (%s)."
        % (run, len(report.checkpoints), report.blobs_read, human_bytes(report.bytes_read))
    )
    _table(
        echo,
        ["KEY", "STATUS"],
        [[v.key, "intact" if v.intact else "DAMAGED"] for v in report.checkpoints],
    )
    for verdict in report.damaged:
        echo("")
        echo("%s is damaged:" % verdict.key)
        if verdict.manifest_problem:
            echo("  manifest: %s" % verdict.manifest_problem)
        for damage in verdict.damages:
            echo("  field(s) %s: blob %s %s" % (", ".join(damage.fields) or "-", damage.blob, damage.problem))
    if report.repaired_blobs:
        echo("")
        echo("Deleted %d damaged blob(s); the next save of the same data writes them again."
             % len(report.repaired_blobs))
    elif repair and report.busy:
        echo("Deleted nothing: saves in progress did not finish in time; run again later.")
    elif report.damaged and not repair:
        echo("")
        echo("Run with --repair to delete the damaged blobs (a missing one needs no repair).")
