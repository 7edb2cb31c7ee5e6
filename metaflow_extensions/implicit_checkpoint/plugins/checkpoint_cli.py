"""`python flow.py checkpoint list|inspect|status|gc|verify`: checkpoints from a terminal."""

import json
from typing import List, Optional

from .metaflow_internals import click

from ..engine.artifact import CheckpointArtifact
from ..engine.errors import CheckpointException
from ..engine.gc import DEFAULT_GRACE, DEFAULT_WAIT, collect_garbage
from ..engine.keys import CheckpointKey
from ..engine import reading
from ..engine.verify import verify_checkpoints
from .formatting import gang_note, human_bytes, missing_blobs, reuse_note, stored_bytes, verify_report_dict
from .store_binding import store_for_datastore
from .task_status import FAILED, KILLED, RUNNING, SUCCEEDED, attempt_records

NOT_STARTED, IN_PROGRESS, COMPLETED = "not_started", "in_progress", "completed"
#: What ``checkpoint status`` says of a step: the first of these that one of its tasks is.
STEP_STATES = (NOT_STARTED, IN_PROGRESS, COMPLETED, FAILED, KILLED)
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
                % (flow, run_id, _latest_runs_hint(flow, obj))
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
            "No run of %s was found %s. %s" % (flow, where, _latest_runs_hint(flow, obj))
        )
    return run


def _latest_runs_hint(flow: str, obj=None) -> str:
    """What to type instead: the newest run of ``flow`` in any namespace, and whose it is;
    or, when there is none, where the command looked and how local runs are found."""
    from metaflow import Flow, namespace
    from metaflow.exception import MetaflowNotFound

    namespace(None)
    try:
        run = Flow(flow).latest_run
    except MetaflowNotFound:
        run = None
    if run is None:
        return "This flow has no run at all %s." % _where_runs_are_looked_for(obj)
    users = sorted(tag for tag in run.system_tags if tag.startswith("user:"))
    return (
        "The latest run in any namespace is %s%s: pass --run-id %s, or --namespace %s, "
        "or --all-namespaces."
        % (run.pathspec, " (%s)" % ", ".join(users) if users else "", run.id,
           users[0] if users else "NAMESPACE")
    )


def _where_runs_are_looked_for(obj) -> str:
    """Which datastore and metadata this command read, and how Metaflow picked them."""
    import os

    datastore = getattr(obj, "flow_datastore", None)
    root = getattr(datastore, "datastore_root", None) or "?"
    kind = getattr(datastore, "TYPE", "?")
    metadata = getattr(obj, "metadata", None)
    metadata_kind = getattr(metadata, "TYPE", "?")
    if kind == "local" and metadata_kind == "local":
        if os.environ.get("METAFLOW_DATASTORE_SYSROOT_LOCAL"):
            how = (
                "(METAFLOW_DATASTORE_SYSROOT_LOCAL is set, so that is where Metaflow "
                "looks, from any directory)"
            )
        else:
            how = (
                "(found from the current directory %s: Metaflow uses the first .metaflow "
                "folder in it or a folder above it). Local runs are found from the "
                "directory they were made in: run this command there, or set "
                "METAFLOW_DATASTORE_SYSROOT_LOCAL to the folder that holds that .metaflow"
                % os.getcwd()
            )
        return "in the local datastore and metadata at %s %s" % (root, how)
    return (
        "in the %s datastore at %s with the %s metadata provider; check that these are "
        "the datastore and metadata the run used (Metaflow's configuration: METAFLOW_HOME "
        "and its config.json, METAFLOW_DEFAULT_DATASTORE, METAFLOW_DEFAULT_METADATA)"
        % (kind, root, metadata_kind)
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
    foreach = any(a.implicit_manifest.get("foreach_indices") for a in artifacts)
    _table(
        echo,
        ["KEY"] + (["FOREACH"] if foreach else []) + ["CREATED (UTC)", "SIZE", "WRITTEN", "METADATA"],
        [
            [_key_cell(a)]
            + ([_foreach_cell(a.implicit_manifest)] if foreach else [])
            + [
                a.created_on[:19].replace("T", " "),
                human_bytes(stored_bytes(a.implicit_manifest)),
                human_bytes(a.implicit_manifest.get("bytes_written", 0)),
                json.dumps(a.metadata)[:60],
            ]
            for a in artifacts
        ],
    )
    echo(SIZE_LEGEND)
    if foreach:
        echo("FOREACH: the task's index in each enclosing foreach, outermost first.")
    damaged = [a for a in artifacts if not a.intact]
    if damaged:
        echo("")
        echo(
            "%d checkpoint(s) marked (DAMAGED): part of their data is missing or altered, so "
            "a retry never resumes from them. `python %s checkpoint verify --run-id %s` "
            "names the fields and blobs."
            % (len(damaged), _script(), run.id)
        )


def _script() -> str:
    import os
    import sys

    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "flow.py"


def _foreach_cell(manifest: dict) -> str:
    indices = manifest.get("foreach_indices") or []
    return ",".join(str(i) for i in indices) if indices else "-"


@checkpoint.command("inspect", help="Show one checkpoint's manifest (reads no field data).")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_obj
def inspect_checkpoint(obj, key, as_json):
    store = store_for_datastore(obj.flow_datastore)
    full = reading.open_checkpoint(store, key).manifest
    manifest = full.public()
    echo = _echo(obj)
    if as_json:
        echo(json.dumps(manifest, indent=2, default=str))
        return
    gang = manifest.get("gang")
    breakdown = None if gang else field_breakdown(full)
    _print_summary(echo, manifest, gang, breakdown)
    _print_fields(echo, manifest, gang, breakdown)
    _print_files(echo, manifest, gang)


def _print_summary(echo, manifest: dict, gang: Optional[dict], breakdown: Optional[dict]) -> None:
    """What ``checkpoint inspect`` says of the checkpoint as a whole."""
    echo("Checkpoint  %s" % manifest["key"])
    echo("Created     %s (attempt %d, version %d)" % (manifest["created_on"], manifest["attempt"], manifest["version"]))
    echo("Resumed     from %s" % (manifest["parent"] or "nothing (a fresh start)"))
    stored, written = stored_bytes(manifest), manifest.get("bytes_written", 0)
    echo(
        "Size        %s in the store (fields, files and RNG state), %s of it written by this save (%s)"
        % (human_bytes(stored), human_bytes(written), reuse_note(stored, written) or "nothing stored")
    )
    if breakdown is None:
        echo("Field data  %s (tensors the fields share counted once)" % human_bytes(manifest["size"]))
    else:
        echo(
            "Field data  %s: %s of tensors and arrays (the DATA column) + %s of object "
            "graph (the fields' structure, small values and pickled parts, and the RNG state)"
            % (human_bytes(manifest["size"]), human_bytes(breakdown["tensor_bytes"]),
               human_bytes(breakdown["graph_bytes"]))
        )
    echo("Metadata    %s" % json.dumps(manifest["metadata"]))
    echo("RNG state   %s" % (", ".join(manifest["rng"]) if manifest["rng"] else "not captured"))


def _print_fields(echo, manifest: dict, gang: Optional[dict], breakdown: Optional[dict]) -> None:
    """The table of fields (per node, for a gang's checkpoint)."""
    parts = gang["parts"] if gang else [{"node": None, "fields": manifest["fields"]}]
    if gang:
        echo("Gang        %d nodes, each its own part (`Checkpoint().load(key, node=N)`)" % gang["num_nodes"])
    echo("")
    if breakdown is None:
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
        if gang:
            echo("SIZE: each field's data, tensors it shares with other fields included.")
    else:
        rows = breakdown["fields"]
        _table(
            echo,
            ["FIELD", "TYPE", "CODEC", "DATA", "DETAIL"],
            [
                [name, info["type"], info["codec"],
                 human_bytes(rows[name]["bytes"]) if rows[name]["tensors"] else "-",
                 _field_detail(info, rows[name])]
                for name, info in sorted(manifest["fields"].items())
            ],
        )
        echo(
            "DATA: the bytes of the tensors and arrays a field holds, each counted once: a "
            "tensor several fields reach (an optimizer's parameters are the model's) is "
            "counted with the first field of the fewest tensors, and the others say so."
        )


def _print_files(echo, manifest: dict, gang: Optional[dict]) -> None:
    """The files of the checkpoint's folder."""
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
    return cell if artifact.intact else "%s (DAMAGED)" % cell


def _field_detail(info: dict, row: Optional[dict] = None) -> str:
    if "alias_of" in info:
        return "same object as %s" % info["alias_of"]
    if "shape" in info:
        return "%s %s" % (info["dtype"], info["shape"])
    if "value" in info:
        return repr(info["value"])[:40]
    if row is not None and row["tensors"]:
        own = row["tensors"] - row["shared_tensors"]
        text = "%d tensor(s)" % row["tensors"]
        if row["shared_with"]:
            counted = ", ".join(row["shared_with"])
            if own == 0:
                return "%s, all counted with %s" % (text, counted)
            return "%s, %d counted with %s" % (text, row["shared_tensors"], counted)
        return text
    if "tensors" in info:
        return "%d tensors" % info["tensors"]
    return ""


def field_breakdown(manifest) -> Optional[dict]:
    """Field data split so that it adds up: each tensor's bytes counted once, with the
    field that reaches it among the fewest tensors (ties: by name), plus the object
    graph. None when the layout does not say (a gang's global manifest, format 1).

    Returns ``{"tensor_bytes", "graph_bytes", "fields": {name: {"bytes", "tensors",
    "shared_tensors", "shared_with"}}}``; ``tensor_bytes + graph_bytes`` is the
    manifest's ``size``."""
    storage = manifest.storage
    if storage is None or storage.blob_fields is not None or manifest.format_version < 2:
        return None
    try:
        nbytes = [int(entry[1]) for entry in storage.tensors]
        reach = {name: set(int(i) for i in (entry or {}).get("tensors", ()))
                 for name, entry in storage.fields.items()}
    except (TypeError, ValueError, IndexError, AttributeError):
        return None
    if set(reach) != set(manifest.fields):
        return None
    graph = storage.graph
    graph_bytes = len(graph) if isinstance(graph, (bytes, bytearray)) else sum(
        int(extent[2]) for extent in (graph or []))
    owner = {}
    for name in sorted(reach, key=lambda n: (len(reach[n]), n)):
        for index in reach[name]:
            owner.setdefault(index, name)
    rows = {}
    for name, indices in reach.items():
        mine = [i for i in indices if owner[i] == name]
        others = sorted({owner[i] for i in indices if owner[i] != name})
        rows[name] = {
            "bytes": sum(nbytes[i] for i in mine),
            "tensors": len(indices),
            "shared_tensors": len(indices) - len(mine),
            "shared_with": others,
        }
    tensor_bytes = sum(nbytes[i] for i in owner)
    return {"tensor_bytes": tensor_bytes, "graph_bytes": graph_bytes, "fields": rows}


@checkpoint.command("status", help="Progress of each @checkpoint step of a run.")
@run_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_obj
def status(obj, run_id, user_namespace, all_namespaces, as_json):
    run = _run(obj, run_id, user_namespace, all_namespaces)
    artifacts = _run_artifacts(store_for_datastore(obj.flow_datastore), run)
    steps = _checkpointed_steps(obj)
    records = {step: _task_records(run, step) for step in steps}
    over = _run_is_over(run, obj, records)
    rows = [_step_status(obj, run, step, artifacts, records[step], over) for step in steps]
    echo = _echo(obj)
    if as_json:
        echo(json.dumps({"run": run.pathspec, "run_over": over, "steps": rows}, indent=2))
        return
    echo("Run %s%s" % (run.pathspec, " (over)" if over else ""))
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
    for r in rows:
        if r["resume_command"]:
            echo("")
            echo(
                "Step %s ended %s with checkpoints: `%s` reruns it in a new run, from its "
                "newest checkpoint." % (r["step"], r["status"], r["resume_command"])
            )
    if any(r["newest"] and not r["newest"]["intact"] for r in rows):
        echo("")
        echo(
            "(DAMAGED): part of that checkpoint's data is missing or altered, so it is never "
            "resumed from; `python %s checkpoint verify --run-id %s` names the fields and "
            "blobs." % (_script(), run.id)
        )


def _task_records(run, step: str) -> list:
    """``[(task pathspec, [AttemptRecord, ...]), ...]`` for the step's tasks in ``run``."""
    try:
        tasks = list(run[step])
    except KeyError:
        return []
    return [(task.pathspec, attempt_records(task.pathspec)) for task in tasks]


def _run_is_over(run, obj, records: dict) -> bool:
    """True once nothing of the run runs any more: it finished, or one of its tasks failed
    with no retry left and its process has ended (Metaflow then stops the run and ends
    its other tasks). A task that failed with an error no retry fixes is not retried,
    and the run's other tasks go on: that one does not end the run."""
    try:
        if run.finished:
            return True
    except Exception:
        pass
    for step, tasks in records.items():
        max_attempts = _max_attempts(obj, step)
        for _, attempts in tasks:
            if not attempts:
                continue
            last = attempts[-1]
            if (
                last.status in (FAILED, KILLED)
                and not last.not_retryable
                and len(attempts) >= max_attempts
                and last.alive is not True
            ):
                return True
    return False


def _step_status(obj, run, step: str, artifacts: List[CheckpointArtifact], tasks: list, over: bool) -> dict:
    mine = [a for a in artifacts if a.step_name == step]
    max_attempts = _max_attempts(obj, step)
    task_states = [_task_state(attempts, max_attempts, over) for _, attempts in tasks]
    attempts = sum(len(a) for _, a in tasks)
    if not task_states:
        state = NOT_STARTED
    else:
        state = next(s for s in (IN_PROGRESS, FAILED, KILLED, COMPLETED) if s in task_states or s == COMPLETED)
    newest = mine[-1] if mine else None
    resume = None
    if state in (FAILED, KILLED) and newest is not None:
        resume = "python %s resume --origin-run-id %s" % (_script(), run.id)
    return {
        "step": step,
        "status": state,
        "tasks": len(task_states),
        "task_states": {pathspec: s for (pathspec, _), s in zip(tasks, task_states)},
        "attempts": attempts,
        "checkpoints": len(mine),
        "bytes_written": sum(a.implicit_manifest.get("bytes_written", 0) for a in mine),
        "damaged": [a.key for a in mine if not a.intact],
        "newest": None
        if newest is None
        else {"key": newest.key, "created_on": newest.created_on, "metadata": newest.metadata,
              "size": newest.size, "intact": newest.intact},
        "resume_command": resume,
    }


def _task_state(attempts: list, max_attempts: int, run_over: bool) -> str:
    """completed / in_progress / failed / killed, from the task's attempts (oldest first)."""
    if not attempts:
        return KILLED if run_over else IN_PROGRESS
    last = attempts[-1]
    if last.status == SUCCEEDED:
        return COMPLETED
    if last.status == RUNNING:
        # Its process is seen running, or it ran elsewhere (unknown): running until the
        # run is over.
        return KILLED if run_over and last.alive is not True else IN_PROGRESS
    # The newest attempt ended badly: the runtime starts another while a retry is left
    # (not after an error no retry fixes, nor once the run is over).
    if len(attempts) < max_attempts and not last.not_retryable and not run_over:
        return IN_PROGRESS
    return FAILED if last.status == FAILED else KILLED


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
    missing = missing_blobs(store, report)
    echo = _echo(obj)
    if as_json:
        echo(json.dumps(verify_report_dict(report, missing), indent=2))
    else:
        _print_verify_report(echo, run.pathspec, report, repair, missing)
    if report.damaged:
        raise CheckpointException(
            "%d of %d checkpoint(s) of run %s are damaged."
            % (len(report.damaged), len(report.checkpoints), run.pathspec)
        )


def _print_verify_report(echo, run: str, report, repair: bool, missing: Optional[dict] = None) -> None:
    missing = missing or {}
    read = report.blobs_read - len(missing)
    echo(
        "Run %s: %d checkpoint(s), %d blob(s) read and hashed (%s)%s."
        % (run, len(report.checkpoints), read,
           human_bytes(report.bytes_read - sum(missing.values())),
           ", %d missing" % len(missing) if missing else "")
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
