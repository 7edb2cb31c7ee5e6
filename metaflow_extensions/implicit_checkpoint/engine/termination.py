"""On SIGTERM (spot preemption, Kubernetes eviction): give the loop a grace to save, and
bound everything by it.

Schedulers send SIGTERM and, after a grace period (Kubernetes: 30 s by default; AWS
Batch / ECS: 30 s; an EC2 spot notice comes 2 minutes before), SIGKILL. While the session
is in use, ``PreemptionGuard`` holds SIGTERM:

1. The handler records a ``StopNotice`` and returns: the loop goes on, ``due()`` is True,
   and the next ``save()`` commits and ends the task as failed (``TaskPreempted``), so
   ``@retry`` resumes it. The handler also puts back SIGTERM's previous behaviour at
   once, so a second SIGTERM acts as if we had never been there.
2. A timer thread waits ``grace`` seconds (``METAFLOW_CHECKPOINT_PREEMPTION_GRACE``). If
   the loop has not reached a save point by then, the timer commits the pending
   background save (at most ``METAFLOW_CHECKPOINT_SIGTERM_WAIT`` seconds) and re-delivers
   the signal with ``os.kill``. It runs in a thread of its own because Python runs signal
   handlers only in the main thread, between bytecodes: a loop stuck in C code never
   gets there. Once the loop is in its save point, the timer leaves it alone (the
   scheduler's SIGKILL bounds it).

A save the grace does not allow never shows as a partial checkpoint: its manifest,
written last, is simply absent.
"""

import os
import signal
import threading
import time
from typing import Callable, Optional

from .notices import warn
from .option_names import OptionNames
from .save_schedule import StopNotice

#: The options' defaults (the plugins fill them from the extension's settings).
DEFAULT_SIGTERM_WAIT = 20.0
#: 10 s to reach a save point leaves 20 s of Kubernetes' default 30 s for that save.
DEFAULT_PREEMPTION_GRACE = 10.0
SIGTERM_SOURCE = "SIGTERM"
SPOT_NOTICE_SOURCE = "spot termination notice"


class PreemptionGuard:
    """Holds SIGTERM for a session; see the module's docstring.

    Parameters
    ----------
    commit_pending : callable
        ``commit_pending(timeout)`` commits the pending background save, if any.
    grace : float
        Seconds the loop has, after SIGTERM, to reach a save point (0: commit the
        pending save and re-deliver the signal at once).
    wait : float
        Seconds ``commit_pending`` may take when the grace ran out.
    """

    def __init__(
        self,
        commit_pending: Callable[[float], None],
        grace: float = DEFAULT_PREEMPTION_GRACE,
        wait: float = DEFAULT_SIGTERM_WAIT,
        grace_name: str = OptionNames.preemption_grace,
    ):
        self._commit_pending = commit_pending
        self._grace = grace
        self._grace_name = grace_name
        self._wait = wait
        self._previous = None
        self._installed = False
        self._lock = threading.Lock()
        self._notice: Optional[StopNotice] = None
        self._saving = False  # the loop is in its save point: the timer leaves it alone
        self._expired = False
        self._done = False  # the preemption save committed: the timer does nothing
        self._timer: Optional[threading.Timer] = None

    @property
    def notice(self) -> Optional[StopNotice]:
        """The stop notice received, or None."""
        return self._notice

    @property
    def grace(self) -> float:
        return self._grace

    def install(self) -> None:
        """Hold SIGTERM (only possible, and only needed, in the main thread)."""
        if self._installed or threading.current_thread() is not threading.main_thread():
            return
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        self._installed = True

    def uninstall(self) -> None:
        """Give SIGTERM back and stop the timer (the task is ending)."""
        if self._installed and signal.getsignal(signal.SIGTERM) == self._handle:
            signal.signal(signal.SIGTERM, self._previous_behaviour)
        self._installed = False
        with self._lock:
            self._done = True
        if self._timer is not None:
            self._timer.cancel()

    def notify(self, source: str, detail: str = "") -> bool:
        """Record a stop notice; True when it is the first one."""
        with self._lock:
            if self._notice is not None:
                return False
            self._notice = StopNotice(source, time.time(), detail)
            return True

    def enter_save_point(self) -> bool:
        """The loop reached a save point after a notice; False when the grace already
        ran out (the timer is ending the process)."""
        with self._lock:
            if self._expired:
                return False
            self._saving = True
            return True

    def leave_save_point(self, committed: bool) -> None:
        """The save point ended: the task ends now (``committed``), or the grace goes on."""
        with self._lock:
            self._saving = False
            self._done = self._done or committed
        if committed and self._timer is not None:
            self._timer.cancel()

    @property
    def _previous_behaviour(self):
        # None: a handler installed outside Python; the default is the closest we can give.
        return self._previous if self._previous is not None else signal.SIG_DFL

    def _handle(self, signum, frame) -> None:
        if self._installed and signal.getsignal(signal.SIGTERM) == self._handle:
            # A second SIGTERM, or the timer's re-delivery, meets the previous behaviour.
            signal.signal(signal.SIGTERM, self._previous_behaviour)
        self._installed = False
        if not self.notify(SIGTERM_SOURCE):
            return
        warn(
            "@checkpoint: SIGTERM received: the step has %.0f s (%s) to reach its next "
            "save point (current.checkpoint.due() is now True); that save commits and ends "
            "the task as failed, for @retry to resume it." % (self._grace, self._grace_name)
        )
        if self._grace <= 0:
            self._expire()
            return
        self._timer = threading.Timer(self._grace, self._expire)
        self._timer.daemon = True
        self._timer.name = "checkpoint-preemption-grace"
        self._timer.start()

    def _expire(self) -> None:
        """The grace ran out without a save point: commit the pending save, re-deliver."""
        with self._lock:
            if self._saving or self._done:
                return
            self._expired = True
        warn(
            "@checkpoint: the step reached no save point within %.0f s of SIGTERM (%s)."
            % (self._grace, self._grace_name)
        )
        try:
            self._commit_pending(self._wait)
        except Exception as ex:
            warn("@checkpoint: on SIGTERM, the pending save failed: %s" % ex)
        if self._previous != signal.SIG_IGN:
            os.kill(os.getpid(), signal.SIGTERM)
