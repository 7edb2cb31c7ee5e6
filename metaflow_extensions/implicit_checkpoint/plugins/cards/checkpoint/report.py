"""What the checkpoint card shows, as plain data for its template.

Built from the checkpoint store (the manifests of every attempt, including attempts
killed hard, which left no Metaflow artifacts behind), the lineage walked from the
store, and how each attempt ended. Nothing here reads storage or knows Metaflow, so
the card's content can be tested from manifests alone.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ....engine.errors import CheckpointException
from ....engine.keys import CheckpointKey
from ....engine.lineage import LineageLink
from ....engine.save_schedule import SaveRecord
from ...task_status import RUNNING
from .chart import attempt_class, metric_charts
from ...formatting import (
    field_names,
    gang_note,
    human_bytes,
    key_segments,
    metadata_entries,
    reuse_note,
    stored_bytes,
    truncate,
    utc_time,
)

UNKNOWN = "unknown"
#: Rows shown per attempt: its first HEAD_ROWS and newest TAIL_ROWS checkpoints (a long
#: training run can save thousands; the card and each live update stay small).
HEAD_ROWS, TAIL_ROWS = 10, 90


@dataclass
class TaskCheckpoints:
    """Everything the card is made from.

    Attributes
    ----------
    pathspec : str
        The task, ``Flow/run/step/task``.
    attempt : int
        The attempt that renders the card (the running one, or the one that succeeded).
    statuses : List[str]
        How each attempt ended, oldest first ("succeeded", "failed", "killed", "running").
    checkpoints : List[dict]
        Public manifests of every committed checkpoint of the task, oldest first.
    lineage : List[LineageLink]
        The chain this attempt's saves descend from, oldest ancestor first.
    live : bool
        True while the task runs (the card refreshes after saves).
    """

    pathspec: str
    attempt: int
    statuses: List[str]
    checkpoints: List[dict]
    lineage: List[LineageLink] = field(default_factory=list)
    live: bool = False
    loaded: Dict[int, str] = field(default_factory=dict)


def resume_key(
    checkpoints: List[dict], attempt: int, loaded: Optional[Dict[int, str]] = None
) -> Optional[str]:
    """The key of the checkpoint ``attempt`` resumed from (None if none).

    Taken from the attempt's newest save (that is what its current state descends
    from), or, for an attempt that saved nothing, from what it recorded loading.
    """
    parents = [m.get("parent") for m in checkpoints if m["attempt"] == attempt]
    if parents:
        return parents[-1]
    return (loaded or {}).get(attempt)


def build_report(task: TaskCheckpoints) -> Dict[str, Any]:
    """The template's data for ``task``."""
    checkpoints = task.checkpoints
    attempts = _attempt_numbers(task)
    status_of = {a: _status(task.statuses, a) for a in attempts}
    loaded_by = _loaded_by(checkpoints)
    run_id = task.pathspec.split("/")[1]
    referenced = sum(stored_bytes(m) for m in checkpoints)
    written = sum(m.get("bytes_written", 0) for m in checkpoints)
    saved = max(referenced - written, 0)
    this_resume = resume_key(checkpoints, task.attempt, task.loaded)
    gaps = version_gaps(checkpoints)
    # A live card can be rendered after its attempt ended (Metaflow finishes a refresh
    # already started when the attempt dies): then it is a snapshot, not live.
    live = task.live and status_of[task.attempt] in (RUNNING, UNKNOWN)
    return {
        "pathspec": task.pathspec,
        "attempt": task.attempt,
        "live": live,
        "snapshot": task.live and not live,
        "attempt_status": status_of[task.attempt],
        "attempts": [
            {
                "attempt": a,
                "status": status_of[a],
                "status_cls": "ic-status-%s" % status_of[a],
                "cls": attempt_class(a),
                "count": sum(1 for m in checkpoints if m["attempt"] == a),
                "count_text": _count_text(a, checkpoints, gaps),
                "resumed_from": _describe_key(resume_key(checkpoints, a, task.loaded), run_id),
                "current": a == task.attempt,
            }
            for a in attempts
        ],
        "resumed_from": _describe_key(this_resume, run_id),
        "resume_note": _resume_note(task, this_resume),
        "save_interval": _interval_in_use(checkpoints, task.attempt),
        "history": [
            {
                "attempt": a,
                "status": status_of[a],
                "status_cls": "ic-status-%s" % status_of[a],
                "cls": attempt_class(a),
                **_history_rows(
                    [m for m in checkpoints if m["attempt"] == a],
                    loaded_by,
                    [g for g in gaps if g["attempts"][0] == a],
                ),
            }
            for a in attempts
        ],
        "has_checkpoints": bool(checkpoints),
        "lineage": _lineage_rows(task.lineage, run_id),
        "has_lineage": bool(task.lineage),
        "lineage_note": _lineage_note(task, this_resume),
        "chart": _chart_section(checkpoints, attempts, status_of),
        "totals": {
            "checkpoints": len(checkpoints),
            "not_kept": sum(g["last"] - g["first"] + 1 for g in gaps),
            "attempts": len(attempts),
            "referenced": human_bytes(referenced),
            "written": human_bytes(written),
            "saved": human_bytes(saved),
            "saved_pct": "%.0f%%" % (100.0 * saved / referenced) if referenced else "0%",
        },
    }


def _chart_section(
    checkpoints: List[dict], attempts: List[int], status_of: Dict[int, str]
) -> Dict[str, Any]:
    legend = [
        {"attempt": a, "cls": attempt_class(a), "status": status_of[a]}
        for a in attempts
        if any(m["attempt"] == a for m in checkpoints)
    ]
    section = metric_charts(checkpoints)
    return dict(section, legend=legend, has_legend=bool(legend and section["charts"]))


def _attempt_numbers(task: TaskCheckpoints) -> List[int]:
    newest = max(
        [len(task.statuses) - 1, task.attempt] + [m["attempt"] for m in task.checkpoints]
    )
    return list(range(newest + 1))


def _status(statuses: List[str], attempt: int) -> str:
    return statuses[attempt] if attempt < len(statuses) else UNKNOWN


def _loaded_by(checkpoints: List[dict]) -> Dict[str, List[int]]:
    """key -> the attempts whose saves descend from it (that resumed from it)."""
    found: Dict[str, List[int]] = {}
    for manifest in checkpoints:
        parent = manifest.get("parent")
        if parent and manifest["attempt"] not in found.setdefault(parent, []):
            found[parent].append(manifest["attempt"])
    return found


def version_gaps(checkpoints: List[dict]) -> List[Dict[str, Any]]:
    """Versions the task used that are not in the store, with the attempts that may have
    saved them.

    Versions count up by one per save within a task, across attempts (a retry goes on
    from the highest stored one). A version with no checkpoint was removed by retention
    (``keep_last`` / ``keep_best``), or its save never committed (it failed, or the
    attempt was killed during it). Between two checkpoints of one attempt it is that
    attempt's; before the first checkpoint, attempt 0's when that is attempt 0's; between
    attempts a and b, any of a to b. Returns ``[{"first", "last", "attempts"}]``, oldest
    first.
    """
    gaps = []
    previous_version, previous_attempt = 0, None
    for version, attempt in sorted((m["version"], m["attempt"]) for m in checkpoints):
        if version > previous_version + 1:
            low = attempt if previous_attempt is None and attempt == 0 else (
                0 if previous_attempt is None else previous_attempt)
            gaps.append({
                "first": previous_version + 1,
                "last": version - 1,
                "attempts": list(range(low, attempt + 1)),
            })
        previous_version, previous_attempt = version, attempt
    return gaps


def _versions(gap: Dict[str, Any]) -> str:
    if gap["first"] == gap["last"]:
        return "v%d" % gap["first"]
    return "v%d\u2013v%d" % (gap["first"], gap["last"])


def _count_text(attempt: int, checkpoints: List[dict], gaps: List[Dict[str, Any]]) -> str:
    """'3 checkpoint(s)', or '3 saved, 1 kept' when retention (or a save that never
    committed) took some of the attempt's versions."""
    kept = sum(1 for m in checkpoints if m["attempt"] == attempt)
    gone = sum(g["last"] - g["first"] + 1 for g in gaps if g["attempts"] == [attempt])
    if not gone:
        return "%d checkpoint(s)" % kept
    return "%d checkpoint(s) saved or begun, %d kept" % (kept + gone, kept)


def _gap_row(gap: Dict[str, Any]) -> Dict[str, Any]:
    count = gap["last"] - gap["first"] + 1
    who = (
        "" if len(gap["attempts"]) == 1
        else " (saved by attempt %s)" % " or ".join(str(a) for a in gap["attempts"])
    )
    return {
        "gap": True,
        "version": gap["first"],
        "gap_attempt": "/".join(str(a) for a in gap["attempts"]),
        "gap_versions": _versions(gap),
        "gap_text": "%d version(s) not in the store%s: removed by retention (keep_last / "
        "keep_best), or a save that never committed (it failed, or the attempt was killed "
        "during it)" % (count, who),
    }


def _history_rows(
    of_attempt: List[dict], loaded_by: Dict[str, List[int]], gaps: List[Dict[str, Any]] = ()
) -> Dict[str, Any]:
    """The rows of one attempt, with a row for each run of versions not kept; the middle
    of a very long attempt is left out, and said so."""
    items = sorted(
        [_history_row(m, loaded_by) for m in of_attempt] + [_gap_row(g) for g in gaps],
        key=lambda row: row["version"],
    )
    if len(items) <= HEAD_ROWS + TAIL_ROWS:
        return {"rows": items, "elided": ""}
    head, middle, tail = items[:HEAD_ROWS], items[HEAD_ROWS:-TAIL_ROWS], items[-TAIL_ROWS:]
    shown = [r for r in middle if not r["gap"]]
    return {
        "rows": head,
        "elided": "%d checkpoints (v%d to v%d) not shown; `python flow.py checkpoint list` "
        "lists them all" % (len(shown), middle[0]["version"], middle[-1]["version"]),
        "tail": tail,
    }


def _history_row(manifest: dict, loaded_by: Dict[str, List[int]]) -> Dict[str, Any]:
    stored, written = stored_bytes(manifest), manifest.get("bytes_written", 0)
    resumed_by = loaded_by.get(manifest["key"], [])
    return {
        "gap": False,
        "attempt": manifest["attempt"],
        "version": manifest["version"],
        "name": manifest["name"],
        "created": utc_time(manifest.get("created_on", "")),
        "fields": field_names(manifest.get("fields")) + gang_note(manifest),
        "fields_title": truncate(", ".join(manifest.get("fields") or {}), 400),
        "field_count": len(manifest.get("fields") or {}),
        "size": human_bytes(stored),
        "written": human_bytes(written),
        "dedup": reuse_note(stored, written),
        "metadata": metadata_entries(manifest.get("metadata")),
        "resumed_by": ", ".join("attempt %d" % a for a in resumed_by),
        **_save_cost_cells(SaveRecord.from_wire(manifest.get("save_record"))),
    }


def _save_cost_cells(record: Optional[SaveRecord]) -> Dict[str, Any]:
    """The row's save cost (what the save blocked the step), and its preemption mark."""
    if record is None:  # saved by a version that did not record it
        return {"cost": "", "cost_note": "", "preemption": ""}
    note = (
        "background; committed after %s" % _seconds(record.to_commit) if record.background else ""
    )
    if record.interval is not None:
        note = "; ".join(filter(None, [note, "due %s" % record.interval.describe()]))
    return {
        "cost": _seconds(record.blocked),
        "cost_note": note,
        "preemption": (
            "preemption save, after %s" % record.stop_notice.describe()
            if record.stop_notice is not None else ""
        ),
    }


def _interval_in_use(checkpoints: List[dict], attempt: int) -> str:
    """The interval due() used at the newest save of ``attempt`` (else of any attempt)."""
    newest_first = sorted(checkpoints, key=lambda m: (m["attempt"] == attempt, m["version"]), reverse=True)
    for manifest in newest_first:
        record = SaveRecord.from_wire(manifest.get("save_record"))
        if record is not None and record.interval is not None:
            return record.interval.describe()
    return ""


def _seconds(value: float) -> str:
    return "%.3g s" % value if value < 100 else "%.0f s" % value


def _describe_key(key: Optional[str], run_id: str) -> Optional[Dict[str, Any]]:
    """A checkpoint key as the card names it: the key, and its run, attempt and version."""
    if not key:
        return None
    try:
        parsed = CheckpointKey.parse(key)
    except CheckpointException:
        return {"key": key, "key_segments": key_segments(key), "run": "?", "task": "?",
                "attempt": "?", "name": "?", "version": "?", "other_run": False}
    return {
        "key": key,
        "key_segments": key_segments(key),
        "run": parsed.run_id,
        "task": parsed.task_id,
        "attempt": parsed.attempt,
        "name": parsed.name,
        "version": parsed.version,
        "other_run": parsed.run_id != run_id,
    }


def _resume_note(task: TaskCheckpoints, resumed: Optional[str]) -> str:
    if resumed:
        return ""
    if not any(m["attempt"] == task.attempt for m in task.checkpoints):
        return "attempt %d has not saved a checkpoint yet" % task.attempt
    return "attempt %d started fresh (it loaded no checkpoint before saving)" % task.attempt


def _lineage_note(task: TaskCheckpoints, resumed: Optional[str]) -> str:
    return "no lineage: %s" % _resume_note(task, resumed) if not task.lineage else ""


def _lineage_rows(links: List[LineageLink], run_id: str) -> List[Dict[str, Any]]:
    rows = []
    for position, link in enumerate(links):
        described = _describe_key(link.key, run_id) or {}
        row = {
            "position": position + 1,
            "key": link.key,
            "key_segments": key_segments(link.key),
            "run": described.get("run", "?"),
            "other_run": described.get("other_run", False),
            "attempt": described.get("attempt", "?"),
            "version": described.get("version", "?"),
            "name": described.get("name", "?"),
            "direct": position == len(links) - 1,
            "problem": link.problem,
            "created": "",
            "metadata": [],
        }
        if link.readable:
            row["created"] = utc_time(link.manifest.get("created_on", ""))
            row["metadata"] = metadata_entries(link.manifest.get("metadata"))
        rows.append(row)
    return rows
