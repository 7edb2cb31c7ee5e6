"""When a save is due: a fixed interval, or the Young/Daly interval from measured costs.

``current.checkpoint.due()`` asks a ``SaveSchedule``. With ``every_seconds`` or
``every_steps`` the answer is plain arithmetic. With neither, the interval is Young's
first-order optimum (Young 1974; Daly 2006 for the higher-order correction, which differs
by less than 5 % while the save cost is under a tenth of the MTBF):

    interval = sqrt(2 * save_cost * mtbf)

``save_cost`` is what a save costs the training loop: the seconds ``save()`` blocked the
caller (a blocking save's whole duration; for ``save(blocking=False)``, only the capture
into memory and the wait for the previous background save), the median of this task's
last ``COST_WINDOW`` saves, so one slow save (the first one writes every byte; later ones
deduplicate) does not swing it. A retry starts from the cost its resume point recorded.
Until a save has been measured, the first ``due()`` call is due: that save is the
measurement. A background save is never due again before the previous one committed:
the interval is at least the last commit's latency.

``mtbf`` is how long, on average, the machine runs before it is taken away (a setting).
Near the optimum the lost time is flat: an MTBF off by 4x makes the interval off by 2x
and the time lost about 25 % larger than the best possible, not 4x.

Every count starts again at each ``save()`` (the state it captured is what a crash
would fall back to). A stop notice (``StopNotice``) makes every ``due()`` true.
"""

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from .errors import CheckpointException

#: The MTBF's default: 2 hours, a pessimistic figure for GPU spot capacity (see
#: docs/guide.md, "Spot machines").
DEFAULT_MTBF = 7200.0
#: How many of the newest saves the cost estimate takes the median of.
COST_WINDOW = 5

#: How an interval was chosen (``SaveInterval.chosen_by``).
EVERY_SECONDS = "every_seconds"
EVERY_STEPS = "every_steps"
YOUNG_DALY = "young_daly"
NOT_MEASURED = "not_measured"  # no save measured yet: the first due() call is due


def young_daly_interval(save_cost: float, mtbf: float) -> float:
    """Young's optimal seconds between saves: ``sqrt(2 * save_cost * mtbf)``.

    Parameters
    ----------
    save_cost : float
        Seconds one save stops the training loop.
    mtbf : float
        Mean seconds between failures (preemptions) of the machine.
    """
    return math.sqrt(2.0 * save_cost * mtbf)


@dataclass(frozen=True)
class StopNotice:
    """The task was told to stop: by SIGTERM, or by the spot-termination notice file.

    Attributes
    ----------
    source : str
        ``"SIGTERM"`` or ``"spot termination notice"``.
    received_at : float
        When it was noticed (seconds since the epoch).
    detail : str
        The notice file's path and content (the termination time EC2 announced), or "".
    """

    source: str
    received_at: float
    detail: str = ""

    def describe(self) -> str:
        return self.source + (" (%s)" % self.detail if self.detail else "")

    def to_wire(self) -> Dict[str, Any]:
        return {"source": self.source, "received_at": self.received_at, "detail": self.detail}

    @classmethod
    def from_wire(cls, wire: Any) -> Optional["StopNotice"]:
        if not isinstance(wire, dict):
            return None
        source, at, detail = wire.get("source"), wire.get("received_at"), wire.get("detail", "")
        if not isinstance(source, str) or not _is_number(at) or not isinstance(detail, str):
            return None
        return cls(source, float(at), detail)


@dataclass(frozen=True)
class SaveInterval:
    """The interval ``due()`` used at its last call (``current.checkpoint.save_interval``).

    Attributes
    ----------
    chosen_by : str
        ``"every_seconds"``, ``"every_steps"`` (given to ``due()``), ``"young_daly"``
        (from the measured save cost and the MTBF), or ``"not_measured"`` (no save
        measured yet: the first call is due).
    seconds : float or None
        Seconds between saves (None when counting steps, or before a measurement).
    steps : int or None
        ``due()`` calls between saves, when given.
    save_cost : float or None
        The measured cost of a save in seconds (the median of the newest saves).
    mtbf : float
        The mean seconds between preemptions assumed (the setting).
    """

    chosen_by: str
    seconds: Optional[float]
    steps: Optional[int]
    save_cost: Optional[float]
    mtbf: float

    def describe(self) -> str:
        if self.chosen_by == EVERY_STEPS:
            return "every %d steps" % self.steps
        if self.chosen_by == EVERY_SECONDS:
            return "every %.3g s" % self.seconds
        if self.chosen_by == YOUNG_DALY:
            return "every %.3g s (Young/Daly: save cost %.3g s, MTBF %.0f s)" % (
                self.seconds, self.save_cost, self.mtbf)
        return "at the first due() call (no save measured yet)"

    def to_wire(self) -> Dict[str, Any]:
        return {
            "chosen_by": self.chosen_by,
            "seconds": self.seconds,
            "steps": self.steps,
            "save_cost": self.save_cost,
            "mtbf": self.mtbf,
        }

    @classmethod
    def from_wire(cls, wire: Any) -> Optional["SaveInterval"]:
        if not isinstance(wire, dict) or not isinstance(wire.get("chosen_by"), str):
            return None
        seconds, steps, cost, mtbf = (wire.get(k) for k in ("seconds", "steps", "save_cost", "mtbf"))
        if not (_optional_number(seconds) and _optional_number(cost) and _is_number(mtbf)):
            return None
        if steps is not None and type(steps) is not int:
            return None
        return cls(wire["chosen_by"], seconds, steps, cost, float(mtbf))


@dataclass(frozen=True)
class SaveRecord:
    """How one save went, as its manifest records it (``"save_record"``; the card shows it).

    Attributes
    ----------
    blocked : float
        Seconds ``save()`` blocked the step (its cost to the training loop).
    to_commit : float
        Seconds from the ``save()`` call to the commit (equal to ``blocked`` for a
        blocking save; longer for a background one).
    background : bool
        Saved with ``blocking=False``.
    interval : SaveInterval or None
        The interval ``due()`` was using when the save started (None: ``due()`` was
        never called).
    stop_notice : StopNotice or None
        Set on a preemption save: the notice the task had received.
    """

    blocked: float
    to_commit: float
    background: bool
    interval: Optional[SaveInterval] = None
    stop_notice: Optional[StopNotice] = None

    @property
    def preemption(self) -> bool:
        return self.stop_notice is not None

    def to_wire(self) -> Dict[str, Any]:
        return {
            "blocked": self.blocked,
            "to_commit": self.to_commit,
            "background": self.background,
            "interval": self.interval.to_wire() if self.interval is not None else None,
            "stop_notice": self.stop_notice.to_wire() if self.stop_notice is not None else None,
        }

    @classmethod
    def from_wire(cls, wire: Any) -> Optional["SaveRecord"]:
        """The record of a manifest's ``save_record``; None when absent or malformed (a
        record only describes the save: a damaged one must not hide the checkpoint)."""
        if not isinstance(wire, dict):
            return None
        blocked, to_commit, background = (wire.get(k) for k in ("blocked", "to_commit", "background"))
        if not (_is_number(blocked) and _is_number(to_commit) and isinstance(background, bool)):
            return None
        return cls(
            float(blocked),
            float(to_commit),
            background,
            SaveInterval.from_wire(wire.get("interval")),
            StopNotice.from_wire(wire.get("stop_notice")),
        )


class SaveSchedule:
    """Counts steps and time since the last save and decides when the next one is due.

    Parameters
    ----------
    mtbf : float
        Mean seconds between preemptions, for the Young/Daly interval.
    clock : callable, default time.monotonic
        Seconds, for intervals and save costs (a test passes its own).
    """

    def __init__(self, mtbf: float = DEFAULT_MTBF, clock: Callable[[], float] = time.monotonic):
        self._mtbf = float(mtbf)
        self._clock = clock
        self._costs: List[float] = []
        self._commit_latency = 0.0
        self._last_save = clock()
        self._steps = 0
        self._interval: Optional[SaveInterval] = None

    @property
    def interval(self) -> Optional[SaveInterval]:
        """The interval of the last ``due()`` call (None before the first)."""
        return self._interval

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    def due(self, every_seconds: Any = None, every_steps: Any = None, step: str = "?") -> bool:
        """Count this call as a step; True when the interval has passed since the last save."""
        seconds = _positive(every_seconds, "every_seconds", step, whole=False)
        steps = _positive(every_steps, "every_steps", step, whole=True)
        self._steps += 1
        self._interval = self.current_interval(seconds, steps)
        elapsed = self._clock() - self._last_save
        chosen = self._interval
        if chosen.chosen_by == NOT_MEASURED:
            return True
        if chosen.steps is not None and self._steps >= chosen.steps:
            return True
        return chosen.seconds is not None and elapsed >= chosen.seconds

    def current_interval(
        self, every_seconds: Optional[float] = None, every_steps: Optional[int] = None
    ) -> SaveInterval:
        cost = statistics.median(self._costs[-COST_WINDOW:]) if self._costs else None
        if every_steps is not None or every_seconds is not None:
            return SaveInterval(
                EVERY_STEPS if every_steps is not None else EVERY_SECONDS,
                every_seconds, every_steps, cost, self._mtbf,
            )
        if cost is None:
            return SaveInterval(NOT_MEASURED, None, None, None, self._mtbf)
        seconds = max(young_daly_interval(cost, self._mtbf), self._commit_latency)
        return SaveInterval(YOUNG_DALY, seconds, None, cost, self._mtbf)

    def started(self) -> float:
        """A save begins: the counts start again. Returns its start on the clock."""
        now = self._clock()
        self._last_save, self._steps = now, 0
        return now

    def measured(self, blocked: float) -> None:
        """A save blocked the step ``blocked`` seconds."""
        self._costs.append(max(float(blocked), 0.0))

    def committed(self, to_commit: float) -> None:
        """A save committed ``to_commit`` seconds after it was called."""
        self._commit_latency = max(float(to_commit), 0.0)

    def resume_from(self, record: Optional[SaveRecord]) -> None:
        """A retry starts from the cost its resume point's save measured (a record
        claiming a save as long as the MTBF is no measurement to go by: it was read back
        from the store)."""
        if record is not None and not self._costs and record.blocked < self._mtbf:
            self._costs.append(record.blocked)


def _positive(value: Any, argument: str, step: str, whole: bool) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not _is_number(value) or not value > 0 or (
        whole and int(value) != value
    ) or not math.isfinite(value):
        raise CheckpointException(
            "current.checkpoint.due(%s=%r) in step *%s*: %s must be a positive %s, e.g. "
            "due(%s=%s), or None." % (
                argument, value, step, argument,
                "whole number of due() calls" if whole else "number of seconds",
                argument, "100" if whole else "600",
            )
        )
    return int(value) if whole else float(value)


def _is_number(value: Any) -> bool:
    """A finite number of at least 0 (seconds, counts): what a record read back holds."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _optional_number(value: Any) -> bool:
    return value is None or _is_number(value)
