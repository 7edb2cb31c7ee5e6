"""Values as the card and the `checkpoint` command show them: sizes, times, and user
data cut to a readable length.

Everything returned here is plain text; the card's templates HTML-escape it, so a value
holding markup is shown as text and never becomes part of the page.
"""

import json
import math
from datetime import datetime, timezone
from typing import Any, Dict, List

#: Longest text shown for one metadata value (the full value, up to TITLE_CHARS, is in
#: the hover title).
VALUE_CHARS = 60
TITLE_CHARS = 400
#: Metadata entries and field names shown per checkpoint before "+N more".
MAX_ENTRIES = 8
MAX_FIELD_NAMES = 6


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending in an ellipsis when it was cut."""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "\u2026"


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return "%d B" % n if unit == "B" else "%.1f %s" % (value, unit)
        value /= 1024.0
    return "%d B" % n


def stored_bytes(manifest: Dict[str, Any]) -> int:
    """Bytes of stored data a checkpoint uses: its fields' and its RNG state's blobs.

    The same kind of bytes as ``bytes_written`` (what the save wrote of them), so the
    two compare: written <= stored, and the difference was already in the store.
    Manifests older than that figure have only the field data size.
    """
    return manifest.get("bytes_referenced", manifest.get("size", 0))


def reuse_note(stored: int, written: int) -> str:
    """'all new', or how much of a checkpoint's data was already stored: '75% reused'."""
    if stored <= 0:
        return ""
    reused = max(stored - written, 0)
    if reused == 0:
        return "all new"
    return "%.0f%% reused" % (100.0 * reused / stored)


def key_segments(key: str) -> List[Dict[str, str]]:
    """A checkpoint key split after each '/', for a template to allow line breaks there
    (and only there): ``[{"text": "Flow/"}, {"text": "123/"}, ...]``."""
    parts = key.split("/")
    return [{"text": part + "/"} for part in parts[:-1]] + [{"text": parts[-1]}]


def utc_time(iso: str) -> str:
    """An ISO-8601 timestamp as 'YYYY-MM-DD HH:MM:SS' in UTC (the input if unparseable)."""
    try:
        moment = datetime.fromisoformat(iso)
    except (TypeError, ValueError):
        return str(iso)
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def compact(value: Any) -> str:
    """A metadata value as short text: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return "%.6g" % value
    try:
        return json.dumps(value, separators=(",", ":"), sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return repr(value)


def metadata_entries(metadata: Dict[str, Any]) -> List[Dict[str, str]]:
    """User metadata as ``[{"key", "value", "title"}]``, each cut to a readable length,
    with one final ``{"key": "", "value": "+N more"}`` entry when there are many."""
    entries = []
    items = list((metadata or {}).items())
    for key, value in items[:MAX_ENTRIES]:
        text = compact(value)
        entries.append(
            {
                "key": truncate(str(key), 24),
                "value": truncate(text, VALUE_CHARS),
                "title": truncate("%s = %s" % (key, text), TITLE_CHARS),
            }
        )
    if len(items) > MAX_ENTRIES:
        rest = ", ".join(str(k) for k, _ in items[MAX_ENTRIES:])
        entries.append(
            {
                "key": "",
                "value": "+%d more" % (len(items) - MAX_ENTRIES),
                "title": truncate(rest, TITLE_CHARS),
            }
        )
    return entries


def gang_note(manifest: Dict[str, Any]) -> str:
    """' (2 nodes)' for the checkpoint of a multi-node gang, '' otherwise."""
    gang = manifest.get("gang")
    return " (%d nodes)" % gang["num_nodes"] if gang else ""


def field_names(fields: Dict[str, Any]) -> str:
    """'model, optimizer, epoch +3 more'."""
    names = list(fields or {})
    shown = ", ".join(truncate(name, 32) for name in names[:MAX_FIELD_NAMES])
    if len(names) > MAX_FIELD_NAMES:
        shown += " +%d more" % (len(names) - MAX_FIELD_NAMES)
    return shown


def is_number(value: Any) -> bool:
    """True for finite ints and floats (not bools): the metadata values a chart can plot."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def number_label(value: float) -> str:
    """A value in a tooltip: 0.000123 -> '0.000123', 12345678 -> '1.235e+07'."""
    return "%.4g" % value


def tick_labels(values: List[float]) -> List[str]:
    """Axis labels for ``values``, all with the same precision: enough decimals to tell
    ticks of this spread apart (0.3127, 0.1789, 0.0452 -> '0.31', '0.18', '0.05');
    scientific notation for very large or very small magnitudes."""
    spread = max(values) - min(values)
    largest = max(abs(v) for v in values)
    if largest >= 1e6 or (0 < largest < 1e-3):
        return ["%.2e" % v for v in values]
    decimals = 0 if spread <= 0 else min(max(1 - math.floor(math.log10(spread)), 0), 6)
    return ["%.*f" % (decimals, v) for v in values]


def missing_blobs(store, report) -> Dict[str, int]:
    """``{digest: size}`` of the blobs a verify report found missing: verify counts every
    referenced blob in ``blobs_read`` / ``bytes_read``, and a missing one was not read."""
    from ..engine.errors import CheckpointException
    from ..engine.keys import CheckpointKey

    missing = {d.blob for v in report.checkpoints for d in v.damages if d.problem == "missing"}
    if not missing:
        return {}
    sizes: Dict[str, int] = {}
    for verdict in report.checkpoints:
        if any(d.blob in missing for d in verdict.damages):
            try:
                blobs = store.read_manifest(CheckpointKey.parse(verdict.key)).storage.blobs
            except CheckpointException:
                continue
            sizes.update({d: n for d, n in blobs.items() if d in missing})
    return {d: sizes.get(d, 0) for d in missing}


def verify_report_dict(report, missing: Dict[str, int]) -> Dict[str, Any]:
    """A verify report as ``--json`` and ``Checkpoint().verify()`` return it: blobs and
    bytes read without the missing blobs, which are listed in ``blobs_missing``."""
    out = report.to_dict()
    out["blobs_read"] = report.blobs_read - len(missing)
    out["bytes_read"] = report.bytes_read - sum(missing.values())
    out["blobs_missing"] = sorted(missing)
    return out
