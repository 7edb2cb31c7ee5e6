"""Save leases and the deleter's lock: why gc never deletes a blob a save is about to use.

A readers-writer lock made of small marker files, so it works on any backend with
strongly consistent writes and listings (a local disk, S3)::

    <locks dir>/saves/<lease id>     one per save in progress
    <locks dir>/deleters/<id>        while gc or verify --repair deletes blobs
    <locks dir>/epoch/<id>           changes whenever blobs were deleted

A **save** writes its lease, then lists the locks dir. If a live deleter marker is
there it removes its lease, waits until the marker is gone, and tries again. Holding
the lease it may check, write and reference blobs and commit; it removes the lease
after the commit.

A **deleter** first waits (up to half its patience) for a moment with no lease, so saves
are not held up behind a long one; then it writes its marker and lists the locks dir
until no live lease is left (new saves see the marker and wait). It removes the leases
it took for dead, writes a new epoch (before deleting anything: a deleter that fails to
write it deletes nothing), then reads the committed manifests, deletes, and removes its
marker.

Each side writes its own marker *before* it looks for the other's, so at least one of
them sees the other (Dekker's argument): a deleter never deletes while a save is
between its first blob check and its commit. The epoch tells a process that blobs it
checked earlier may be gone since.

**The commit fence** (``fence``). A live lease is a promise, not a fact: a saver
stopped (SIGSTOP, a paused VM) after its last look and before its manifest write, for
longer than ``STALE``, is taken for dead, and gc may delete a blob it is about to
reference. So after writing its manifest the saver lists the locks dir once more
(Dekker again, on the other pair): the deleter removed the dead lease and wrote the new
epoch before it listed the manifests; the saver wrote its manifest before this listing.
If the listing still shows its lease and its epoch, any deleter yet to list will see
the manifest, and none listed earlier (it would have removed the lease first). If
not, the saver lets its lease go, waits until no deleter marker is live (every
deletion that may have missed the manifest is done), and checks every blob the
manifest references; with one missing it removes the manifest again (store.py).

Markers are renewed every ``RENEW`` seconds while held; one not renewed for ``STALE``
seconds belongs to a dead process and is ignored (and cleaned up). Ages are compared
on the storage's own clock (modification times only), never the local one. A holder
that could not renew for ``STALE / 2`` stops before acting (``Marker.check``).

Storage failures arrive as CheckpointStorageError (the backend boundary). Taking a lock
fails with them; letting one go never does (``_let_go``): the holder's work is committed,
or its own error is the news, and a marker left behind counts as dead once stale.
"""

import os
import re
import socket
import threading
import time
import uuid
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, Iterator, List, Optional, Tuple

from .backends import TEMP_PREFIX, StorageBackend, StoredFile
from .errors import CheckpointStorageError
from .notices import warn

RENEW = 15.0
STALE = 300.0
POLL = 0.1

SAVES, DELETERS, EPOCH = "saves", "deleters", "epoch"
_SEP = "+"  # never part of a run id, step name or task id (keys.py)


class StoreBusy(CheckpointStorageError):
    """A deleter gave up waiting for saves in progress."""

    def __init__(self, message: str, leases: List[str]):
        super().__init__(message, operation="lock", reason="saves in progress")
        self.leases = leases


@dataclass
class Marker:
    """A held lease or deleter marker."""

    path: str
    name: str
    renewed: float  # time.monotonic() of the last successful write or renewal
    deleted: bool = False  # a deleter's: whether it deleted anything

    def check(self, what: str) -> None:
        """Raise unless this marker was renewed recently enough to still count as live."""
        silent = time.monotonic() - self.renewed
        if silent > STALE / 2:
            raise CheckpointStorageError(
                "%s stopped: its marker %s could not be renewed for %.0f s, so others may "
                "consider it dead. Nothing was committed or deleted; try again."
                % (what, self.path, silent),
                operation="touch",
                path=self.path,
                reason="not renewed for %.0f s" % silent,
            )


@dataclass(frozen=True)
class Lease:
    marker: Marker
    epoch: FrozenSet[str]  # the deletion epoch seen when the lease was taken
    temp_prefix: str  # this save's temp files are named this + a random part


class Locks:
    """Leases and deleter markers on one backend."""

    def __init__(self, backend: StorageBackend, poll: float = POLL):
        self.backend = backend
        self.poll = poll
        self._held: Dict[str, Marker] = {}
        self._lock = threading.Lock()
        self._renewer: Optional[threading.Thread] = None
        #: Test hook: called with a phase name ("save-waiting-for-deleter", ...).
        self.on_phase: Callable[[str], None] = lambda phase: None

    # -- saves -----------------------------------------------------------------------

    @contextmanager
    def lease(
        self, locks_dir: str, temp_root: str, task: str, attempt: int
    ) -> Iterator[Optional[Lease]]:
        """Hold a save lease while the block runs (None where nothing can delete).

        ``task`` names the task (``run+step+task_id``); with ``attempt`` it is part of
        the lease's name, so a later attempt can clean up after an earlier one.
        """
        if not self.backend.can_delete:
            yield None
            return
        owner = "%s%s%d" % (task, _SEP, attempt)
        name = _SEP.join((owner, str(os.getpid()), uuid.uuid4().hex[:12]))
        path = "%s/%s/%s" % (locks_dir, SAVES, name)
        while True:
            marker = self._write(path, name, owner)
            try:
                listing = self._list(locks_dir)
            except BaseException:
                self._let_go(marker)
                raise
            now = listing[SAVES].get(name, StoredFile(path, 0, time.time())).mtime
            deleters = [f for f in listing[DELETERS].values() if now - f.mtime < STALE]
            if not deleters:
                break
            # Strict: a lease left here would keep the deleter waiting for this save.
            self._release(marker)
            self.on_phase("save-waiting-for-deleter")
            self._wait_gone(locks_dir, now)
        try:
            self._forget_dead_leases(locks_dir, temp_root, listing[SAVES], task, attempt)
            yield Lease(marker, frozenset(listing[EPOCH]), _temp_prefix(temp_root, name))
        finally:
            self._let_go(marker)

    def fence(self, locks_dir: str, lease: Lease) -> Optional[float]:
        """Call right after the write the lease was for (a manifest). None when no
        deleter can have missed that write; otherwise the storage's time (a lower bound)
        for ``wait_for_deleters``: the caller must then check its blobs itself.

        One listing. A deleter that missed the write listed the manifests before it,
        after writing its marker, and deletes only after removing every lease it took for
        dead (and writing a new epoch). So if this lease is still listed, and the epoch
        is the lease's, every deleter that could delete has yet to list the manifests and
        will see the write (see the module docstring)."""
        listing = self._list(locks_dir)
        self.on_phase("save-fenced")
        if lease.marker.name in listing[SAVES] and frozenset(listing[EPOCH]) == lease.epoch:
            return None
        mtimes = [f.mtime for kind in listing.values() for f in kind.values()]
        return max(mtimes, default=time.time())

    def wait_for_deleters(self, locks_dir: str, lease: Lease, server_now: float) -> None:
        """After a ``fence`` that failed: let the lease go (what it protected is written,
        and a deleter may be waiting for it) and wait until no live deleter marker is
        left, so every deletion that may have missed the write is done."""
        self._let_go(lease.marker)
        self.on_phase("save-fence-waiting-for-deleters")
        self._wait_gone(locks_dir, server_now, first_look=True)

    def _forget_dead_leases(self, locks_dir, temp_root, leases, task, attempt) -> None:
        """Remove the leases (and temp files) of this task's earlier attempts: attempts
        run one after another, so those processes are gone."""
        dead = []
        for name in leases:
            parts = name.split(_SEP)
            if len(parts) == 6 and _SEP.join(parts[:3]) == task and parts[3].isdigit():
                if int(parts[3]) < attempt:
                    dead.append(name)
        if dead:
            self._remove_temp_files(temp_root, dead)
            self.backend.delete(["%s/%s/%s" % (locks_dir, SAVES, name) for name in dead])

    def _remove_temp_files(self, temp_root: str, leases: List[str]) -> None:
        """Remove the temp files the saves holding ``leases`` left (they are dead)."""
        prefixes = tuple(_temp_prefix(temp_root, name) for name in leases)
        self.backend.delete(
            [f.path for f in self.backend.walk_files(temp_root) if f.path.startswith(prefixes)]
        )

    # -- deleters --------------------------------------------------------------------

    @contextmanager
    def deleting(self, locks_dir: str, temp_root: str, wait: float) -> Iterator[Marker]:
        """Hold the deleter's lock: no save is between its blob checks and its commit
        while the block runs. Raises StoreBusy after ``wait`` seconds of saves in progress."""
        name = _SEP.join((socket.gethostname(), str(os.getpid()), uuid.uuid4().hex[:12]))
        path = "%s/%s/%s" % (locks_dir, DELETERS, name)
        deadline = time.monotonic() + wait
        # First, for half the wait, look for a moment without saves before marking: saves
        # are not held up while a long one finishes. Then mark, and new saves wait.
        polite_until = time.monotonic() + wait / 2
        while self._list(locks_dir)[SAVES] and time.monotonic() < polite_until:
            self.on_phase("deleter-waiting-for-saves")
            time.sleep(self.poll)
        marker = self._write(path, name, "deleter")
        try:
            self.on_phase("deleter-marked")
            while True:
                listing = self._list(locks_dir)
                now = listing[DELETERS].get(name, StoredFile(path, 0, time.time())).mtime
                live = sorted(n for n, f in listing[SAVES].items() if now - f.mtime < STALE)
                if not live:
                    break
                if time.monotonic() >= deadline:
                    raise StoreBusy(
                        "%d save(s) in progress did not finish within %.0f s: %s. Nothing "
                        "was deleted; run again later." % (len(live), wait, ", ".join(live)),
                        live,
                    )
                time.sleep(self.poll)
                self._renew(marker)
            dead = [n for n, f in listing[SAVES].items() if now - f.mtime >= STALE]
            if dead:
                self._remove_temp_files(temp_root, dead)
                self.backend.delete(["%s/%s/%s" % (locks_dir, SAVES, n) for n in dead])
            yield marker
        finally:
            self._let_go(marker)

    def new_epoch(self, locks_dir: str) -> None:
        """Record that blobs may be deleted from now on (a deleter writes it before its
        first deletion): processes drop what they remember checking, and a commit whose
        lease began in an older epoch checks its blobs (``fence``)."""
        old = list(self._list(locks_dir)[EPOCH])
        self.backend.write("%s/%s/%s" % (locks_dir, EPOCH, uuid.uuid4().hex), [b""], durable=True)
        self.backend.delete(["%s/%s/%s" % (locks_dir, EPOCH, name) for name in old])

    # -- markers ---------------------------------------------------------------------

    def hold(self, path: str, owner: str) -> Marker:
        """Write a marker at ``path`` naming ``owner`` (and this process and host), renewed
        every ``RENEW`` seconds until ``release``: others tell from it that we are alive."""
        return self._write(path, path.rsplit("/", 1)[-1], owner)

    def release(self, marker: Marker) -> None:
        """Remove a marker ``hold`` wrote (a failure to is warned about, see ``_let_go``)."""
        self._let_go(marker)

    def _list(self, locks_dir: str) -> Dict[str, Dict[str, StoredFile]]:
        listing: Dict[str, Dict[str, StoredFile]] = {SAVES: {}, DELETERS: {}, EPOCH: {}}
        for entry in self.backend.walk_files(locks_dir):
            kind, _, name = entry.path[len(locks_dir) + 1 :].partition("/")
            if kind in listing and name and "/" not in name and not name.startswith("."):
                listing[kind][name] = entry
        return listing

    def _wait_gone(self, locks_dir: str, server_now: float, first_look: bool = False) -> None:
        """Wait until no live deleter marker is left. ``server_now`` is the storage's
        clock when waiting began; local elapsed time extends it."""
        began = time.monotonic()
        while True:
            if not first_look:
                time.sleep(self.poll)
            first_look = False
            now = server_now + time.monotonic() - began
            markers = self._list(locks_dir)[DELETERS].values()
            if all(now - f.mtime >= STALE for f in markers):
                return

    def _write(self, path: str, name: str, owner: str) -> Marker:
        text = "%s pid=%d host=%s" % (owner, os.getpid(), socket.gethostname())
        self.backend.write(path, [text.encode()], durable=False)
        marker = Marker(path, name, time.monotonic())
        with self._lock:
            self._held[path] = marker
            self._start_renewer()
        return marker

    def _renew(self, marker: Marker) -> None:
        if self.backend.touch([marker.path])[0]:
            marker.renewed = time.monotonic()

    def _release(self, marker: Marker) -> None:
        """Stop renewing ``marker`` and remove it; raises CheckpointStorageError."""
        with self._lock:
            self._held.pop(marker.path, None)
        self.backend.delete([marker.path])

    def _let_go(self, marker: Marker) -> None:
        """``_release``, for a holder that is done or failing: a marker the storage
        cannot remove is no reason to fail committed work or to hide the holder's own
        error. Unrenewed, it counts as dead after ``STALE`` seconds."""
        try:
            self._release(marker)
        except CheckpointStorageError as ex:
            warn(
                "checkpoint: could not remove the marker %s (others ignore it once it is "
                "%.0f s old): %s" % (marker.path, STALE, ex)
            )

    def _start_renewer(self) -> None:
        if self._renewer is not None and self._renewer.is_alive():
            return
        self._renewer = threading.Thread(
            target=_renew_forever, args=(weakref.ref(self),), name="checkpoint-leases", daemon=True
        )
        self._renewer.start()

    def held(self) -> List[Marker]:
        with self._lock:
            return list(self._held.values())


def marker_owner(text: str) -> Optional[Tuple[str, int]]:
    """``(host, pid)`` of the process a marker's content names, or None."""
    found = re.search(r" pid=(\d+) host=(\S+)", text)
    return (found.group(2), int(found.group(1))) if found else None


def _temp_prefix(temp_root: str, lease: str) -> str:
    """How the temp files of the save holding ``lease`` are named (+ a random part)."""
    return "%s/%s%s." % (temp_root, TEMP_PREFIX, lease)


def _renew_forever(locks_ref) -> None:
    while True:
        time.sleep(RENEW)
        locks = locks_ref()
        if locks is None:
            return
        for marker in locks.held():
            try:
                locks._renew(marker)
            except CheckpointStorageError:
                pass  # retried next round; the holder checks its marker before acting
        del locks
