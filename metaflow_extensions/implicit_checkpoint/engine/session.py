"""One task's checkpointing: save, load, inspect, list, and finding where to resume.

This is what ``current.checkpoint`` is. It knows nothing of Metaflow: the task's
identity, its attributes (an ``AttributeSource``) and the object to restore onto are
handed in, so it runs the same in a flow and in a unit test.
"""

import hashlib
import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from .artifact import CheckpointArtifact, Reference, key_of
from .change_tracking import ChangeTracker, WriteHistory
from .directory import scan_folder
from .errors import CheckpointCorrupted, CheckpointException, CheckpointNotFound, TaskPreempted
from .fields import FieldSelector
from .gang import Gang, GangMember
from .integrity import check_blobs, describe as describe_damage
from .keys import CheckpointKey, split_pathspec, validate_name
from .lineage import find_eager_resume_point, find_origin_resume_point
from .loading import LoadRequest, load_checkpoint
from .manifest import Manifest, normalize_metadata
from .option_names import OptionNames
from .retention import RetentionPolicy
from .rng import capture_rng_state, restore_rng_state
from .save_schedule import DEFAULT_MTBF, SaveInterval, SaveRecord, SaveSchedule, StopNotice
from .reading import (
    inspect_checkpoint,
    list_step_across_runs,
    list_task,
    open_checkpoint,
    read_listed_manifest,
)
from .snapshot import PreparedSave, commit_save, prepare_save, teach_tracker
from .staging import DEFAULT_BUDGET, StagingArea
from .state_size import tensor_bytes
from .store import CheckpointStore, ReusedBlobDamaged
from .termination import (
    DEFAULT_PREEMPTION_GRACE,
    DEFAULT_SIGTERM_WAIT,
    SPOT_NOTICE_SOURCE,
    PreemptionGuard,
)
from .notices import warn

LOAD_POLICIES = ("fresh", "eager", "none")
#: What save(storage_format=...) accepts: metaflow-checkpoint's formats, recorded only.
STORAGE_FORMATS = ("files", "tar")
DEFAULT_NAME = "checkpoint"
#: Seconds between looks for the spot-termination notice file (one stat each).
NOTICE_FILE_POLL = 1.0
#: What a preempted attempt's error says happens next, where the caller says nothing.
DEFAULT_AFTER_PREEMPTION = "the task's next attempt resumes from it."


@dataclass(frozen=True)
class SessionOptions:
    """How a session saves (the plugins read them from the extension's settings).

    ``track_changes``: skip hashing storages whose torch version counter did not move
    (opt-in: see change_tracking.py for its hazard). ``staging_bytes``: the most a
    background save stages in memory; a larger change is saved synchronously.
    ``sigterm_wait``: when the grace after SIGTERM ran out, how long the pending
    background save may take to commit. ``preemption_grace``: after SIGTERM, how long the
    step has to reach its next save point (see termination.py). ``mtbf``: the mean
    seconds between preemptions, for ``due()``'s Young/Daly interval.
    ``stop_notice_file``: a file whose appearance is a stop notice (Metaflow's
    spot-termination notice on @kubernetes and @batch), or None.
    """

    track_changes: bool = False
    staging_bytes: int = DEFAULT_BUDGET
    sigterm_wait: float = DEFAULT_SIGTERM_WAIT
    preemption_grace: float = DEFAULT_PREEMPTION_GRACE
    mtbf: float = DEFAULT_MTBF
    stop_notice_file: Optional[str] = None
    #: What messages call these options (the plugins: the settings that set them).
    names: OptionNames = OptionNames()


@dataclass(frozen=True)
class TaskIdentity:
    flow: str
    run_id: str
    step: str
    task_id: str
    attempt: int
    foreach_indices: Tuple[int, ...] = ()
    origin_run_id: Optional[str] = None  # the run Metaflow's `resume` re-executes
    gang: Optional[Gang] = None  # a node of a multi-node (@parallel) step

    @property
    def pathspec(self) -> str:
        return "/".join((self.flow, self.run_id, self.step, self.task_id))

    @property
    def checkpoint_task_id(self) -> str:
        """The task whose checkpoints these are: the gang's control task for a node."""
        return self.gang.control_task_id if self.gang is not None else self.task_id


@dataclass
class AttributeSource:
    """What a save can capture: attributes assigned in this task, and others readable."""

    assigned: Callable[[], Dict[str, Any]]
    available_names: Callable[[], Iterable[str]] = lambda: ()
    lookup: Optional[Callable[[str], Any]] = None


class CheckpointSession:
    """Checkpointing for one task attempt (``current.checkpoint``)."""

    def __init__(
        self,
        store: CheckpointStore,
        task: TaskIdentity,
        source: AttributeSource,
        target: Any,
        selector: Optional[FieldSelector] = None,
        rng: bool = True,
        load_policy: str = "fresh",
        retention: Optional[RetentionPolicy] = None,
        accept_run: Callable[[str], bool] = lambda run_id: True,
        gang_saves: bool = True,
        options: SessionOptions = SessionOptions(),
        directory: Optional[str] = None,
        clock: Callable[[], float] = time.monotonic,
        after_preemption: str = DEFAULT_AFTER_PREEMPTION,
        saves_in_background: bool = False,
    ):
        """``gang_saves``: for a node of a gang, whether its saves are its part of the
        gang's global checkpoints (the step's own session) or checkpoints of their own
        (a worker process of the node). ``directory``: the task's folder, whose files
        every save snapshots and every load restores (None: saves have no folder).
        ``clock``: seconds, for ``due()`` and save costs. ``after_preemption``: what the
        error of a preempted attempt says happens next (the scheduler's retry).
        ``saves_in_background``: the step's code saves with ``blocking=False`` (the
        decorator reads it from the step's source): from ``start()`` on, the staging
        buffer is kept as large as the state the step builds, on a thread of its own, so
        even the task's first background save only copies."""
        self._store = store
        self._task = task
        self._source = source
        self._target = target
        self._selector = selector or FieldSelector()
        self._rng = rng
        self._load_policy = load_policy
        self._retention = retention or RetentionPolicy()
        self._accept_run = accept_run  # eager resume: may this run's checkpoints be used?
        self._started_at = time.time()
        self._task_keys_known: List[CheckpointKey] = []  # this task's checkpoints, all attempts
        self._next_version: Optional[int] = None
        self._resume_point: Optional[CheckpointArtifact] = None
        self._parent: Optional[str] = None  # key of the checkpoint this attempt resumed from
        self._saved: List[CheckpointArtifact] = []
        self._options = options
        self._tracker = ChangeTracker() if options.track_changes else None
        self._write_history = WriteHistory()
        self._staging: Optional[StagingArea] = None
        self._saves_in_background = saves_in_background
        self._background: Optional[ThreadPoolExecutor] = None
        self._pending: Optional[Future] = None
        self._preemption = PreemptionGuard(
            self._commit_before_exit,
            options.preemption_grace,
            options.sigterm_wait,
            options.names.preemption_grace,
        )
        self._schedule = SaveSchedule(options.mtbf, clock)
        self._after_preemption = after_preemption
        self._notice_file_checked: Optional[float] = None
        # The stop notice the newest save was made under: that save ends the attempt (a
        # blocking one: the notice was there when it committed; a background one: when
        # save() handed it over). Its SaveRecord marks it as a preemption save.
        self._ending_notice: Optional[StopNotice] = None
        self._directory = directory
        self._gang: Optional[GangMember] = None
        if task.gang is not None and gang_saves:
            self._gang = GangMember(
                store, task.gang, task.flow, task.run_id, task.step, task.task_id, task.attempt
            )
        self.on_commit: List[Callable[[CheckpointArtifact, dict], None]] = []
        self.on_load: List[Callable[[CheckpointArtifact], None]] = []

    # -- task start ------------------------------------------------------------------

    def start(self) -> Optional[CheckpointArtifact]:
        """Find the checkpoint to resume from (per ``load_policy``); it is not loaded yet.

        The newest checkpoint whose blobs are all stored with the right size; a damaged
        one is passed over with a warning naming what is damaged.
        """
        t = self._task
        if self._gang is not None:
            self._gang.join()
        if t.attempt == 0:
            self._next_version = 1
        else:
            self._task_keys_known = self._task_keys()
            self._next_version = max((k.version for k in self._task_keys_known), default=0) + 1
            if self._load_policy != "none":
                earlier = [k for k in self._task_keys_known if k.attempt < t.attempt]
                self._resume_point = self._newest_intact(earlier)
        # Then, in order: the origin run's same task (Metaflow's `resume`), other runs
        # (eager). Each returns the newest intact checkpoint's manifest, or None.
        elsewhere = []
        if self._load_policy != "none" and t.origin_run_id not in (None, t.run_id):
            elsewhere.append(lambda: find_origin_resume_point(
                self._store, t.flow, t.origin_run_id, t.step, t.foreach_indices, self._resumable
            ))
        if self._load_policy == "eager":
            elsewhere.append(lambda: find_eager_resume_point(
                self._store, t.flow, t.step, t.foreach_indices, self._started_at, t.run_id,
                self._accept_run, self._resumable,
            ))
        for find in elsewhere:
            if self._resume_point is None:
                found = find()
                if found is not None:
                    self._resume_point = CheckpointArtifact.from_manifest(found)
        if self._saves_in_background:
            self._follow_the_state_with_staging()
        elif self._resume_point is None and t.gang is None:
            self._prepare_staging_as_earlier_runs_did()
        return self._resume_point

    def _newest_intact(self, keys: List[CheckpointKey]) -> Optional[CheckpointArtifact]:
        for key in reversed(keys):
            manifest = read_listed_manifest(self._store, key)
            if manifest is not None and self._resumable(key, manifest):
                return CheckpointArtifact.from_manifest(manifest)
        return None

    def _resumable(self, key: CheckpointKey, manifest: Manifest) -> bool:
        """May a task resume from this checkpoint? Not when saved with ``latest=False``,
        nor when its data is damaged."""
        return manifest.latest is not False and self._is_intact(key, manifest)

    def _is_intact(self, key: CheckpointKey, manifest: Manifest) -> bool:
        (damages,) = check_blobs(self._store, key.flow, [manifest])
        if damages:
            warn(
                "@checkpoint: %s. Not resuming from it: looking for an earlier checkpoint "
                "(`checkpoint verify --repair` removes damaged blobs; a save of the same "
                "data writes them again)." % describe_damage(str(key), damages)
            )
        return not damages

    def _task_keys(self) -> List[CheckpointKey]:
        t = self._task
        return self._store.list_keys(t.flow, t.run_id, t.step, t.checkpoint_task_id)

    # -- public surface --------------------------------------------------------------

    @property
    def is_loaded(self) -> bool:
        """True when a checkpoint to resume from was found at task start."""
        return self._resume_point is not None

    @property
    def loaded(self) -> Optional[CheckpointArtifact]:
        """The checkpoint found at task start, or None."""
        return self._resume_point

    @property
    def directory(self) -> str:
        """The task's folder: every ``save()`` snapshots the files in it, ``load()``
        puts the checkpoint's files back (the same path on every attempt; empty when
        the task starts). Point a framework's output at it, e.g. a Hugging Face
        ``TrainingArguments(output_dir=current.checkpoint.directory)``."""
        if self._directory is None:
            raise CheckpointException(
                "This checkpoint session has no folder: current.checkpoint.directory exists "
                "in a @checkpoint step; Checkpoint().directory in a notebook."
            )
        return self._directory

    @property
    def info(self) -> Optional[CheckpointArtifact]:
        """The checkpoint found at task start, or None (metaflow-checkpoint's name for
        ``loaded``)."""
        return self._resume_point

    @property
    def task_identifier(self) -> str:
        """Identifies this step and foreach position across runs: what eager resume and
        ``list(full_namespace=True)`` match on (12 hex digits)."""
        t = self._task
        position = json.dumps([t.step, list(t.foreach_indices)])
        return hashlib.sha256(position.encode()).hexdigest()[:12]

    def save(
        self,
        name: str = DEFAULT_NAME,
        metadata: Optional[dict] = None,
        blocking: bool = True,
        latest: bool = True,
        storage_format: str = "files",
    ) -> CheckpointArtifact:
        """Snapshot the step's attributes.

        Parameters
        ----------
        name : str, default "checkpoint"
            Checkpoints of one name form a series (``list(name=...)``, retention).
        metadata : dict, optional
            Plain values shown with the checkpoint and charted on the card.
        blocking : bool, default True
            True returns once the checkpoint is committed. False returns once the state
            is captured in memory (changed tensors copied) and commits in the background;
            a failure there is raised by the next save(), wait(), or at task end. One
            save is in flight at most: a new one first waits for it.
        latest : bool, default True
            False: this checkpoint is never chosen as the one to resume from (it is
            listed and loadable by reference), as in metaflow-checkpoint.
        storage_format : str, default "files"
            Accepted for metaflow-checkpoint's flows ("files" or "tar") and recorded;
            storage is content-addressed blobs either way.

        Returns
        -------
        CheckpointArtifact

        Raises
        ------
        TaskPreempted
            After a stop notice (SIGTERM, a spot-termination notice), once this save is
            committed (a background one too): the attempt ends as failed, for ``@retry``
            to resume from it. Let it propagate (an ``except Exception`` around the loop
            would keep a machine that is going away training).
        """
        self._preemption.install()
        self._look_for_notice_file()
        in_save_point = self._enter_save_point()
        committed = False
        try:
            artifact = self._save(name, metadata, blocking, latest, storage_format)
            if self._ending_notice is None:
                return artifact
            in_save_point = in_save_point or self._enter_save_point()
            self.wait()  # a background save: the attempt ends once it is committed
            committed = True
        finally:
            if in_save_point:
                self._preemption.leave_save_point(committed)
        raise self._preempted(self._saved[-1])

    def _save(
        self, name: str, metadata: Optional[dict], blocking: bool, latest: bool, storage_format: str
    ) -> CheckpointArtifact:
        started = self._schedule.started()
        interval = self._schedule.interval
        self.wait()
        self._ending_notice = None
        metadata = self._checked_save_arguments(name, metadata, latest, storage_format)
        t = self._task
        fields = self._selector.select(
            self._source.assigned(), self._source.available_names(), self._source.lookup, t.step
        )
        key = self._next_key(name)
        if not blocking and self._staging is None:
            self._staging = StagingArea(self._options.staging_bytes)
        rng_state = capture_rng_state() if self._rng else None
        extra = {"foreach_indices": list(t.foreach_indices), "latest": latest, "storage_format": storage_format}

        def prepare():
            return prepare_save(
                key,
                fields,
                metadata,
                parent=self._parent,
                rng_state=rng_state,
                extra=extra,
                tracker=self._tracker,
                staging=None if blocking else self._staging,
                folder=scan_folder(self._directory) if self._directory is not None else None,
            )

        prepared = prepare()
        self._next_version += 1
        if blocking or not prepared.staged:
            if not blocking:
                warn(
                    "@checkpoint: %s changed more bytes than the staging budget (%s=%d); "
                    "saved synchronously." % (key, self._options.names.staging_bytes, self._staging.budget)
                )
            # The step's state is still what was captured: a retry captures it again.
            return self._save_now(prepared, lambda _: prepare(), started, interval)
        return self._save_in_background(prepared, started, interval)

    def _checked_save_arguments(
        self, name: str, metadata: Optional[dict], latest: bool, storage_format: str
    ) -> Dict[str, Any]:
        """Check ``save()``'s arguments, naming the step; the metadata as stored."""
        step = self._task.step
        validate_name(name, step)
        metadata = normalize_metadata(metadata, step)
        if not isinstance(latest, bool):
            raise CheckpointException("save(latest=%r) in step *%s*: latest is True or False." % (latest, step))
        if storage_format not in STORAGE_FORMATS:
            raise CheckpointException(
                "save(storage_format=%r) in step *%s*: use one of %s (recorded only: "
                "checkpoints are stored as content-addressed blobs either way)."
                % (storage_format, step, ", ".join(map(repr, STORAGE_FORMATS)))
            )
        return metadata

    def _next_key(self, name: str) -> CheckpointKey:
        """The key of this task's next save: versions count on from the task's newest."""
        t = self._task
        if self._next_version is None:
            self._next_version = max((k.version for k in self._task_keys()), default=0) + 1
        return CheckpointKey(t.flow, t.run_id, t.step, t.checkpoint_task_id, t.attempt, name, self._next_version)

    def _save_in_background(
        self, prepared: PreparedSave, started: float, interval: Optional[SaveInterval]
    ) -> CheckpointArtifact:
        """Hand a staged save to the background thread; the step blocked until now."""
        if self._background is None:
            self._background = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-save")
        blocked = self._schedule.clock() - started
        self._schedule.measured(blocked)
        self._ending_notice = self._preemption.notice
        self._pending = self._background.submit(
            self._save_now, prepared, _staged_again, started, interval, blocked, self._ending_notice
        )
        return CheckpointArtifact.from_manifest(prepared.manifest)

    def _save_now(
        self,
        prepared: PreparedSave,
        capture_again: Callable[[PreparedSave], Optional[PreparedSave]],
        started: float,
        interval: Optional[SaveInterval],
        blocked: Optional[float] = None,
        notice: Optional[StopNotice] = None,
    ) -> CheckpointArtifact:
        """Commit ``prepared``, on this thread or the background one, with the one retry a
        save gets: when a blob it reuses turns out gone or damaged (``ReusedBlobDamaged``:
        deleted by hand, by ``verify --repair``, or by a gc that took a paused save for
        dead), nothing was committed; change tracking forgets what it knew, and the save
        is committed once more from ``capture_again(prepared)``, which stores every tensor
        anew, or raises when the bytes the save saw can no longer be had (None)."""
        try:
            return self._commit(prepared, started, interval, blocked, notice)
        except ReusedBlobDamaged:
            if self._tracker is not None:
                self._tracker.keep_only([])
            again = capture_again(prepared)
            if again is None:
                raise
            return self._commit(again, started, interval, blocked, notice)

    def _commit(
        self,
        prepared: PreparedSave,
        started: float,
        interval: Optional[SaveInterval],
        blocked: Optional[float] = None,
        notice: Optional[StopNotice] = None,
    ) -> CheckpointArtifact:
        """Commit ``prepared``, its manifest stamped with its ``SaveRecord``. ``blocked``
        and ``notice``: how long a background save blocked the step, and the stop notice
        it was made under (None: a blocking save, whose cost is its whole duration up to
        the commit, and which ends the attempt if a notice came by then)."""
        records: List[SaveRecord] = []

        def stamp_and_commit(key: CheckpointKey, manifest: Manifest) -> Manifest:
            took = self._schedule.clock() - started
            if blocked is None:
                self._ending_notice = self._preemption.notice
            record = SaveRecord(
                blocked=took if blocked is None else blocked,
                to_commit=took,
                background=blocked is not None,
                interval=interval,
                stop_notice=self._ending_notice if blocked is None else notice,
            )
            records.append(record)
            stamped = replace(manifest, save_record=record.to_wire())
            if self._gang is not None:
                return self._gang.commit(key, stamped)
            self._store.commit(key, stamped)
            return stamped

        with self._store.save_lease(prepared.key):
            outcome = commit_save(self._store, prepared, stamp_and_commit, self._write_history)
        manifest = outcome.manifest
        if self._tracker is not None:
            teach_tracker(self._tracker, prepared, outcome)
        if blocked is None:
            self._schedule.measured(records[-1].blocked)
        self._schedule.committed(records[-1].to_commit)
        artifact = CheckpointArtifact.from_manifest(manifest)
        self._saved.append(artifact)
        self._task_keys_known.append(prepared.key)
        if self._gang is None or self._gang.commits:
            self._after_commit(prepared.key)
        for listener in self.on_commit:
            listener(artifact, manifest)
        return artifact

    def _after_commit(self, key: CheckpointKey) -> None:
        """Housekeeping that must never fail a committed save: the cross-run note, retention."""
        try:
            self._store.notes.record(key, self._task.foreach_indices)
            if self._retention.active:
                self._apply_retention(key.name)
        except Exception as ex:
            warn(
                "@checkpoint: checkpoint %s is committed, but housekeeping after it failed: "
                "%s: %s" % (key, type(ex).__name__, ex)
            )

    def _apply_retention(self, name: str) -> None:
        same_name = [k for k in self._task_keys_known if k.name == name]
        artifacts = [
            CheckpointArtifact.from_manifest(self._store.read_manifest(k)) for k in same_name
        ]
        protected = {a.key for a in (self._resume_point,) if a is not None}
        if self._parent:
            protected.add(self._parent)
        for artifact in self._retention.to_remove(artifacts, protected):
            key = CheckpointKey.parse(artifact.key)
            self._store.delete_manifest(key)
            self._task_keys_known.remove(key)

    def due(self, every_seconds: Optional[float] = None, every_steps: Optional[int] = None) -> bool:
        """Whether to save now: ``if current.checkpoint.due(): current.checkpoint.save()``.

        Call it once per step of the loop (each call counts as a step).

        Parameters
        ----------
        every_seconds : float, optional
            Due when this many seconds have passed since the last ``save()``.
        every_steps : int, optional
            Due at every this many calls since the last ``save()``. With both, due at
            whichever comes first. With neither, the Young/Daly interval
            ``sqrt(2 * save_cost * MTBF)``: the save cost measured from this task's own
            saves, the MTBF a setting (``METAFLOW_CHECKPOINT_MTBF``); before any save was
            measured, the first call is due. ``save_interval`` shows the choice.

        Returns
        -------
        bool
            True when the interval has passed, and always once the task was told to stop
            (SIGTERM, a spot-termination notice): the next ``save()`` then commits and
            ends the attempt as failed (``TaskPreempted``), for ``@retry`` to resume it.
        """
        self._preemption.install()
        self._look_for_notice_file()
        interval_passed = self._schedule.due(every_seconds, every_steps, self._task.step)
        return interval_passed or self._preemption.notice is not None

    @property
    def save_interval(self) -> SaveInterval:
        """The interval ``due()`` uses: how it was chosen (``chosen_by``), its ``seconds``
        or ``steps``, the measured ``save_cost`` and the ``mtbf`` assumed."""
        return self._schedule.interval or self._schedule.current_interval()

    @property
    def stop_notice(self) -> Optional[StopNotice]:
        """The stop notice the task received (SIGTERM, a spot-termination notice), or None."""
        return self._preemption.notice

    def _look_for_notice_file(self) -> None:
        path = self._options.stop_notice_file
        if path is None or self._preemption.notice is not None:
            return
        now = self._schedule.clock()
        if self._notice_file_checked is not None and now - self._notice_file_checked < NOTICE_FILE_POLL:
            return
        self._notice_file_checked = now
        try:
            with open(path) as notice:
                termination_time = notice.read(200).strip()
        except (OSError, ValueError):  # no notice (the usual case), or not text yet
            return
        detail = "%s: termination at %s" % (path, termination_time or "an unstated time")
        if self._preemption.notify(SPOT_NOTICE_SOURCE, detail):
            warn(
                "@checkpoint: spot termination notice (%s): current.checkpoint.due() is now "
                "True; the next save commits and ends the task as failed, for @retry to "
                "resume it." % detail
            )

    def _enter_save_point(self) -> bool:
        return self._preemption.notice is not None and self._preemption.enter_save_point()

    def _preempted(self, artifact: CheckpointArtifact) -> TaskPreempted:
        notice, t = self._preemption.notice, self._task
        warn(
            "@checkpoint: preempted (%s): checkpoint %s is committed; attempt %d ends as "
            "failed now: %s" % (notice.describe(), artifact.key, t.attempt, self._after_preemption)
        )
        return TaskPreempted(
            "Attempt %d of step *%s* was told to stop (%s, %.1f s before this save) and "
            "committed checkpoint %s at its save point, so it ends here as failed: %s"
            % (t.attempt, t.step, notice.describe(), time.time() - notice.received_at,
               artifact.key, self._after_preemption),
            key=artifact.key,
        )

    def wait(self) -> None:
        """Block until the background save (if any) is committed; re-raise its failure."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _commit_before_exit(self, timeout: float) -> None:
        """On SIGTERM: let the pending background save commit, for at most ``timeout`` s."""
        pending = self._pending
        if pending is None:
            return
        if not pending.done():
            warn(
                "@checkpoint: SIGTERM: committing the pending background save (waiting up "
                "to %.0f s, %s)." % (timeout, self._options.names.sigterm_wait)
            )
        try:
            pending.result(timeout=timeout)
        except FutureTimeout:
            warn(
                "@checkpoint: the pending save did not commit within %.0f s and is abandoned "
                "(it is not listed; the task's next save removes its temp files)." % timeout
            )
            return
        warn("@checkpoint: the pending save is committed.")

    def finish(self, raise_failure: bool = True) -> None:
        """At task end: commit the pending save; report (or raise) its failure."""
        try:
            self.wait()
        except Exception as ex:
            if raise_failure:
                raise
            warn("@checkpoint: the last background save failed: %s" % ex)
        finally:
            if self._background is not None:
                self._background.shutdown(wait=True)
                self._background = None
            self._preemption.uninstall()
            if self._staging is not None:
                self._staging.close()
            if self._gang is not None:
                self._gang.leave()

    def load(
        self,
        reference: Optional[Reference] = None,
        allow_pickle: bool = True,
        map_location: Any = None,
    ) -> CheckpointArtifact:
        """Restore a checkpoint's fields onto the step (and RNG state, when captured),
        and its files into ``directory``, exactly as saved.

        Stateful objects the step already built are restored in place; everything is
        read, verified and built before anything is changed. ``allow_pickle=False``
        never unpickles: a field that needs it raises, naming it. Tensors load onto the
        device of the live tensor they go into; ``map_location`` ("cpu", "cuda:0", a
        ``torch.device`` or a dict from saved to new device names) places the others
        (default: the device they were saved on, if this machine has it, else the CPU).

        With no ``reference``, a resume point that fails verification while it is read
        (its bytes were altered since the task started, with their size kept) is passed
        over with a warning for the newest intact earlier checkpoint of this task.
        """
        if reference is not None or self._task.gang is not None:
            return self._load(self._resolve(reference, for_what="load"), allow_pickle, map_location)
        while True:
            key = self._resolve(None, for_what="load")
            try:
                return self._load(key, allow_pickle, map_location)
            except CheckpointCorrupted as ex:
                fallback = self._newest_intact(
                    [k for k in self._task_keys_known or [] if k.attempt < self._task.attempt and k.version < key.version]
                )
                if fallback is None:
                    raise
                warn(
                    "@checkpoint: the checkpoint to resume from, %s, failed verification "
                    "while loading (%s). Resuming from the newest intact earlier checkpoint, "
                    "%s, instead; it is loaded whole, so values read from the damaged one are "
                    "replaced." % (key, ex, fallback.key)
                )
                self._resume_point = fallback

    def _load(self, key: CheckpointKey, allow_pickle: bool, map_location: Any = None) -> CheckpointArtifact:
        gang = self._task.gang
        opened = open_checkpoint(self._store, key, gang.node_index if gang is not None else None)
        request = LoadRequest(
            target=self._target,
            allow_pickle=allow_pickle,
            with_rng=self._rng,
            folder=self._directory,
            map_location=map_location,
        )
        loaded = load_checkpoint(self._store, opened, request)
        if loaded.rng_state:
            restore_rng_state(loaded.rng_state)
        self._parent = str(opened.key)
        # The step's state is the checkpoint's now: the interval counts from here, with
        # the cost that checkpoint's save measured.
        self._schedule.started()
        record = SaveRecord.from_wire(opened.manifest.save_record)
        self._schedule.resume_from(record)
        if record is not None and record.background:
            self._prepare_staging(opened.manifest)
        artifact = loaded.artifact
        for listener in self.on_load:
            listener(artifact)
        return artifact

    def _follow_the_state_with_staging(self) -> None:
        """Keep the staging buffer as large as the bytes a save would stage now
        (StagingArea.follow): the fields' tensors and arrays, estimated on the staging
        thread (state_size.py). Only what the step assigned counts: reading a parent
        artifact from this thread would load it behind the step's back."""
        if not self._options.staging_bytes:
            return

        def state_bytes() -> int:
            fields = self._selector.select(self._source.assigned(), strict=False)
            return tensor_bytes(fields.values())

        if self._staging is None:
            self._staging = StagingArea(self._options.staging_bytes)
        self._staging.follow(state_bytes)

    def _prepare_staging_as_earlier_runs_did(self) -> None:
        """A step whose newest checkpoint in an earlier run was saved in the background
        saves in the background again: a task with nothing to resume from maps its
        staging buffer now, sized to that checkpoint's state, so even its first
        background save only copies. The earlier checkpoint is looked up on the staging
        thread, and only its manifest is read: it sizes a buffer, nothing of it is loaded.
        A step never saved in the background before maps its buffer at its first
        background save."""
        t = self._task
        if not self._options.staging_bytes:
            return

        def staged_by_the_newest_earlier_save() -> int:
            newest = find_eager_resume_point(
                self._store, t.flow, t.step, t.foreach_indices, self._started_at, t.run_id,
                accept_run=lambda run_id: True, usable=lambda key, manifest: True,
            )
            if newest is None or newest.format_version == 1:
                return 0
            record = SaveRecord.from_wire(newest.save_record)
            if record is None or not record.background:
                return 0
            return sum(spec.nbytes for spec in newest.storage.storage_specs())

        if self._staging is None:
            self._staging = StagingArea(self._options.staging_bytes)
        self._staging.prepare_sized_by(staged_by_the_newest_earlier_save)

    def _prepare_staging(self, manifest: Manifest) -> None:
        """A task resumed from a background save saves in the background again: its
        staging buffer is mapped now, on a thread of its own, sized to the state loaded, so
        its first background save only copies (StagingArea.prepare)."""
        if manifest.format_version == 1:
            return
        if self._staging is None:
            self._staging = StagingArea(self._options.staging_bytes)
        self._staging.prepare(sum(spec.nbytes for spec in manifest.storage.storage_specs()))

    def inspect(self, reference: Optional[Reference] = None) -> dict:
        """The checkpoint's manifest, without reading any field data.

        Parameters
        ----------
        reference : CheckpointArtifact, dict or str, optional
            The checkpoint to show. None: the newest checkpoint of this task, i.e. this
            attempt's newest committed save, or, before it has saved, the checkpoint it
            resumed from (``CheckpointNotFound`` if there is neither).
        """
        if reference is None and self._saved:
            reference = self._saved[-1]
        return inspect_checkpoint(self._store, self._resolve(reference, for_what="inspect"))

    def list(
        self,
        name: Optional[str] = None,
        task: Any = None,
        attempt: Optional[int] = None,
        full_namespace: bool = False,
    ) -> List[CheckpointArtifact]:
        """Committed checkpoints, oldest first.

        Parameters
        ----------
        name : str, optional
            Only checkpoints of this name.
        task : str or metaflow.Task, optional
            A task pathspec "Flow/run/step/task" (default: this task).
        attempt : int, optional
            Only checkpoints saved by this attempt.
        full_namespace : bool, default False
            True: this step's checkpoints (at this foreach position) in every run of
            the current namespace, this one included, as metaflow-checkpoint's
            ``list(full_namespace=True)``.
        """
        if full_namespace:
            if task is not None:
                raise CheckpointException(
                    "list(full_namespace=True) in step *%s* lists this step's checkpoints "
                    "across runs; it takes no task=." % self._task.step
                )
            t = self._task
            return list_step_across_runs(
                self._store, t.flow, t.step, t.foreach_indices, (t.run_id, t.checkpoint_task_id),
                self._accept_run, name, attempt,
            )
        if task is None:
            flow, run_id, step, task_id = (
                self._task.flow,
                self._task.run_id,
                self._task.step,
                self._task.checkpoint_task_id,
            )
        else:
            flow, run_id, step, task_id = split_pathspec(getattr(task, "pathspec", task))
        return list_task(self._store, flow, run_id, step, task_id, name, attempt)

    def _resolve(self, reference: Optional[Reference], for_what: str) -> CheckpointKey:
        if reference is not None:
            return key_of(reference)
        if self._resume_point is None:
            raise CheckpointNotFound(
                "current.checkpoint.%s() in step *%s* has no checkpoint to %s: %s. "
                "Guard the call with `if current.checkpoint.is_loaded:`, or pass a "
                "checkpoint (an artifact from list(), or its key)."
                % (for_what, self._task.step, for_what, self._why_nothing_found())
            )
        return CheckpointKey.parse(self._resume_point.key)

    def _why_nothing_found(self) -> str:
        if self._load_policy == "none":
            return "load_policy='none' never looks for one"
        if self._task.attempt == 0:
            return "this is the task's first attempt (attempt 0)"
        return "no earlier attempt of this task committed a checkpoint"


def _staged_again(prepared: PreparedSave) -> Optional[PreparedSave]:
    """A background save's retry: its staged bytes are still what ``save()`` saw, so it
    commits them again (every blob written anew where missing). One that reused
    unchanged tensors without staging them cannot: the step may have changed them since
    (None: the failure is raised at the next ``save()``/``wait()``, and that save stores
    every tensor anew)."""
    return prepared if prepared.staged and not prepared.reused else None

