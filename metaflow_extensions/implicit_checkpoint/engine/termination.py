"""On SIGTERM (spot preemption, Kubernetes eviction), commit the pending background save
before the process exits, within a bounded time.

Schedulers send SIGTERM and, after a grace period (tens of seconds), SIGKILL. Python's
default for SIGTERM is to die at once, abandoning a save that ``save(blocking=False)``
has captured but not committed. While a background save may be pending, the session
installs this handler: it waits for that save at most ``METAFLOW_CHECKPOINT_SIGTERM_WAIT``
seconds (default 20), then hands the signal to whatever handled it before (by default:
the process ends, as it would have). A save the grace does not allow never shows as a
partial checkpoint: its manifest, written last, is simply absent.
"""

import os
import signal
import threading
from typing import Callable
from .notices import warn

#: The setting for how long to wait (read on the plugins side), and its default.
SIGTERM_WAIT_ENV = "METAFLOW_CHECKPOINT_SIGTERM_WAIT"
DEFAULT_SIGTERM_WAIT = 20.0


class SigtermGuard:
    """Runs ``commit_pending(timeout)`` on SIGTERM, then the previous SIGTERM behaviour."""

    def __init__(self, commit_pending: Callable[[float], None], wait: float = DEFAULT_SIGTERM_WAIT):
        self._commit_pending = commit_pending
        self._wait = wait
        self._previous = None
        self._installed = False

    def install(self) -> None:
        """Install the handler (only possible, and only needed, in the main thread)."""
        if self._installed or threading.current_thread() is not threading.main_thread():
            return
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        self._installed = True

    def uninstall(self) -> None:
        if self._installed and signal.getsignal(signal.SIGTERM) == self._handle:
            signal.signal(signal.SIGTERM, self._previous)
        self._installed = False

    def _handle(self, signum, frame) -> None:
        try:
            self._commit_pending(self._wait)
        except Exception as ex:
            warn("@checkpoint: on SIGTERM, the pending save failed: %s" % ex)
        previous = self._previous
        self.uninstall()
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)


