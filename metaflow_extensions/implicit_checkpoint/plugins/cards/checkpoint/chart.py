"""Geometry of the metrics chart: numeric metadata over saves, one colour per attempt.

Every top-level metadata key whose values are numbers (``loss``, ``accuracy``, ...) gets
a small chart, except a training counter (``epoch``, ``step``, ...) that every save
carries: that one labels the x axis instead (a counter drawn as a metric is just a
rising line). The x axis is the task's saves in version order, shared by all charts;
each attempt is its own polyline. Where an attempt resumed, the checkpoint it loaded
is ringed and joined to the attempt's first save by a dashed line, and a vertical
guide marks where the attempt starts. This module only computes coordinates; the SVG
markup lives in the card's template.
"""

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional

from ....engine.errors import CheckpointException
from ....engine.keys import CheckpointKey
from ...formatting import is_number, number_label, tick_labels, truncate

WIDTH, HEIGHT = 540, 170
LEFT, RIGHT, TOP, BOTTOM = 52, 14, 22, 26
MAX_CHARTS = 6
MAX_X_TICKS = 8
#: Longer series are drawn as a line only: a dot (with its tooltip) per save would make
#: the card of a long run heavy.
MAX_DOTS = 100
#: Metadata keys that count progress: the first one every save carries (as a whole
#: number) labels the x axis and gets no chart of its own.
COUNTER_KEYS = ("epoch", "step", "global_step", "iteration")
#: Attempts are coloured by ``ic-a<attempt % COLOURS>`` classes defined in the stylesheet.
COLOURS = 8


def attempt_class(attempt: int) -> str:
    return "ic-a%d" % (attempt % COLOURS)


def x_counter(checkpoints: List[dict]) -> Optional[str]:
    """The counter key that labels the x axis: in COUNTER_KEYS, whole-numbered in every
    save's metadata (None if there is none)."""
    for key in COUNTER_KEYS:
        values = [(m.get("metadata") or {}).get(key) for m in checkpoints]
        if values and all(is_number(v) and float(v).is_integer() for v in values):
            return key
    return None


def metric_names(checkpoints: List[dict], counter: Optional[str] = None) -> List[str]:
    """Metadata keys with at least one numeric value, in order of first appearance,
    without the x axis' ``counter``."""
    names: List[str] = []
    for manifest in checkpoints:
        for key, value in (manifest.get("metadata") or {}).items():
            if key not in names and key != counter and is_number(value):
                names.append(key)
    return names


def metric_charts(checkpoints: List[dict]) -> Dict[str, Any]:
    """Chart geometry for ``checkpoints`` (public manifests of one task, oldest first).

    Returns ``{"charts": [...], "not_charted": "names over the limit"}``; ``charts`` is
    empty when no metadata value is a number.
    """
    counter = x_counter(checkpoints)
    names = metric_names(checkpoints, counter)
    x_of = _x_positions(len(checkpoints))
    x_labels = [
        ("%s %d" % (counter, m["metadata"][counter])) if counter else "v%d" % m["version"]
        for m in checkpoints
    ]
    index_of_key = {m["key"]: i for i, m in enumerate(checkpoints)}
    resumes = _resume_points(checkpoints, index_of_key)
    charts = [
        _chart(name, checkpoints, x_of, x_labels, index_of_key, resumes)
        for name in names[:MAX_CHARTS]
    ]
    return {
        "charts": charts,
        "not_charted": truncate(", ".join(names[MAX_CHARTS:]), 200),
        "has_resumes": bool(resumes),
        # The metadata holds a counter and nothing else to chart: say so, not "no numbers".
        "counter_only": counter if counter and not names else "",
    }


def _x_positions(count: int) -> List[float]:
    width = WIDTH - LEFT - RIGHT
    if count == 1:
        return [LEFT + width / 2.0]
    return [LEFT + width * i / float(count - 1) for i in range(count)]


def _resume_points(checkpoints: List[dict], index_of_key: Dict[str, int]) -> List[dict]:
    """Where an attempt's saves start from a loaded checkpoint: one entry per attempt."""
    resumes, seen_attempts = [], set()
    for i, manifest in enumerate(checkpoints):
        attempt = manifest["attempt"]
        if attempt in seen_attempts:
            continue
        seen_attempts.add(attempt)
        parent = manifest.get("parent")
        if not parent:
            continue
        parent_index = index_of_key.get(parent)
        if parent_index is not None:
            source = "v%d" % checkpoints[parent_index]["version"]
        else:
            source = _elsewhere(parent, manifest)
        resumes.append(
            {
                "attempt": attempt,
                "first_index": i,
                "parent_index": parent_index,
                "label": "attempt %d \u2190 %s" % (attempt, source),
            }
        )
    return resumes


def _elsewhere(parent_key: str, manifest: dict) -> str:
    """A parent outside this task, named by what differs: its run, or its task."""
    try:
        parent = CheckpointKey.parse(parent_key)
    except CheckpointException:
        return truncate(parent_key, 40)
    if parent.run_id != manifest.get("run_id"):
        return "run %s v%d" % (parent.run_id, parent.version)
    return "task %s v%d" % (parent.task_id, parent.version)


def _chart(
    name: str,
    checkpoints: List[dict],
    x_of: List[float],
    x_labels: List[str],
    index_of_key: Dict[str, int],
    resumes: List[dict],
) -> Dict[str, Any]:
    values: Dict[int, float] = {}
    for i, manifest in enumerate(checkpoints):
        value = (manifest.get("metadata") or {}).get(name)
        if is_number(value):
            values[i] = float(value)
    scale = _YScale.of(values.values())
    y_ticks = [scale.high, (scale.high + scale.low) / 2.0, scale.low]
    return {
        "metric": truncate(name, 40),
        "width": WIDTH,
        "height": HEIGHT,
        "left": LEFT,
        "right": WIDTH - RIGHT,
        "plot_top": scale.top,
        "plot_bottom": scale.bottom,
        "label_x": LEFT - 6,
        "y_ticks": [
            {"y": "%.1f" % scale.y_of(v), "label": label}
            for v, label in zip(y_ticks, tick_labels(y_ticks))
        ],
        "x_ticks": [
            {"x": "%.1f" % x_of[i], "label": x_labels[i].rsplit(" ", 1)[-1]}
            for i in _tick_indices(len(checkpoints))
        ],
        "x_caption": x_labels[0].rsplit(" ", 1)[0] if " " in x_labels[0] else "save",
        "x_label_y": HEIGHT - 8,
        "series": _series(name, checkpoints, values, x_of, x_labels, scale),
        "resumes": [_resume_marker(row, resume, values, x_of, scale) for row, resume in enumerate(resumes)],
    }


@dataclass(frozen=True)
class _YScale:
    """Metric values to heights in the plot (the plot's top is the highest value)."""

    low: float
    high: float
    top: float = TOP
    bottom: float = HEIGHT - BOTTOM

    @classmethod
    def of(cls, values: Iterable[float]) -> "_YScale":
        values = list(values)
        low, high = min(values), max(values)
        if low == high:
            spread = abs(low) * 0.1 or 1.0
            low, high = low - spread, high + spread
        return cls(low, high)

    def y_of(self, value: float) -> float:
        return self.top + (self.high - value) / (self.high - self.low) * (self.bottom - self.top)


def _series(name, checkpoints, values: Dict[int, float], x_of, x_labels, scale: _YScale) -> List[dict]:
    """One line per attempt, through its checkpoints' values (with a dot per value when
    there are few)."""
    series = []
    for attempt in sorted({m["attempt"] for m in checkpoints}):
        indices = [i for i in values if checkpoints[i]["attempt"] == attempt]
        if not indices:
            continue
        series.append(
            {
                "cls": attempt_class(attempt),
                "points": " ".join("%.1f,%.1f" % (x_of[i], scale.y_of(values[i])) for i in indices),
                "dots": [
                    {
                        "cx": "%.1f" % x_of[i],
                        "cy": "%.1f" % scale.y_of(values[i]),
                        "title": "v%d \u00b7 attempt %d%s \u00b7 %s = %s"
                        % (
                            checkpoints[i]["version"],
                            attempt,
                            "" if x_labels[i].startswith("v") else " \u00b7 " + x_labels[i],
                            name,
                            number_label(values[i]),
                        ),
                    }
                    for i in (indices if len(values) <= MAX_DOTS else [])
                ],
            }
        )
    return series


def _resume_marker(row: int, resume: dict, values: Dict[int, float], x_of, scale: _YScale) -> dict:
    """Where an attempt resumed: a vertical line at its first checkpoint, labelled, and a
    link from the value it resumed from to its first value."""
    first, parent = resume["first_index"], resume["parent_index"]
    right_side = x_of[first] > WIDTH * 0.7
    marker = {
        "cls": attempt_class(resume["attempt"]),
        "x": "%.1f" % x_of[first],
        "top": "%.1f" % scale.top,
        "bottom": "%.1f" % scale.bottom,
        "label": resume["label"],
        # Labels of nearby resumes would overlap on one line: stagger them.
        "label_y": "%.1f" % (scale.top + 10 + 11 * (row % 3)),
        "anchor": "end" if right_side else "start",
        "dx": -4 if right_side else 4,
        "link": None,
    }
    if parent is not None and parent in values and first in values:
        marker["link"] = {
            "x1": "%.1f" % x_of[parent],
            "y1": "%.1f" % scale.y_of(values[parent]),
            "x2": "%.1f" % x_of[first],
            "y2": "%.1f" % scale.y_of(values[first]),
        }
    return marker


def _tick_indices(count: int) -> List[int]:
    if count <= MAX_X_TICKS:
        return list(range(count))
    step = (count - 1) / float(MAX_X_TICKS - 1)
    return sorted({int(round(step * k)) for k in range(MAX_X_TICKS)})

