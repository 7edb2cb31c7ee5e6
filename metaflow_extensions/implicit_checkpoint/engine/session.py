"""One task's checkpointing: save, load, inspect, list, and finding where to resume.

This is what ``current.checkpoint`` is. It knows nothing of Metaflow: the task's
identity, its attributes (an ``AttributeSource``) and the object to restore onto are
handed in, so it runs the same in a flow and in a unit test.
"""

import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from .artifact import CheckpointArtifact, Reference, key_of
from .change_tracking import ChangeTracker
from .errors import CheckpointCorrupted, CheckpointException, CheckpointNotFound
from .fields import FieldSelector
from .keys import CheckpointKey, split_pathspec, validate_name
from .manifest import normalize_metadata, public_view
from .restore import apply_fields
from .retention import RetentionPolicy
from .rng import capture_rng_state, restore_rng_state
from .snapshot import commit_save, prepare_save, read_rng_state, read_snapshot
from .staging import STAGING_BUDGET_ENV, StagingArea
from .store import CheckpointStore

LOAD_POLICIES = ("fresh", "eager", "none")
#: Set to 0 to hash every tensor on every save instead of trusting torch's version counter.
TRACK_CHANGES_ENV = "METAFLOW_CHECKPOINT_TRACK_CHANGES"
DEFAULT_NAME = "checkpoint"


@dataclass(frozen=True)
class TaskIdentity:
    flow: str
    run_id: str
    step: str
    task_id: str
    attempt: int
    foreach_indices: Tuple[int, ...] = ()

    @property
    def pathspec(self) -> str:
        return "/".join((self.flow, self.run_id, self.step, self.task_id))


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
    ):
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
        self._tracker = ChangeTracker() if os.environ.get(TRACK_CHANGES_ENV, "1") != "0" else None
        self._staging: Optional[StagingArea] = None
        self._background: Optional[ThreadPoolExecutor] = None
        self._pending: Optional[Future] = None
        self.on_commit: List[Callable[[CheckpointArtifact, dict], None]] = []
        self.on_load: List[Callable[[CheckpointArtifact], None]] = []

    # -- task start ------------------------------------------------------------------

    def start(self) -> Optional[CheckpointArtifact]:
        """Find the checkpoint to resume from (per ``load_policy``); it is not loaded yet."""
        t = self._task
        if t.attempt == 0:
            self._next_version = 1
        else:
            self._task_keys_known = self._task_keys()
            self._next_version = max((k.version for k in self._task_keys_known), default=0) + 1
            if self._load_policy != "none":
                earlier = [k for k in self._task_keys_known if k.attempt < t.attempt]
                self._resume_point = self._newest_readable(earlier)
        if self._resume_point is None and self._load_policy == "eager":
            found = self._store.find_latest_before(
                t.flow, t.step, t.foreach_indices, self._started_at, t.run_id, self._accept_run
            )
            if found is not None:
                self._resume_point = CheckpointArtifact.from_manifest(self._store.read_manifest(found))
        return self._resume_point

    def _newest_readable(self, keys: List[CheckpointKey]) -> Optional[CheckpointArtifact]:
        for key in reversed(keys):
            artifact = _read_artifact(self._store, key)
            if artifact is not None:
                return artifact
        return None

    def _task_keys(self) -> List[CheckpointKey]:
        t = self._task
        return self._store.list_keys(t.flow, t.run_id, t.step, t.task_id)

    # -- public surface --------------------------------------------------------------

    @property
    def is_loaded(self) -> bool:
        """True when a checkpoint to resume from was found at task start."""
        return self._resume_point is not None

    @property
    def loaded(self) -> Optional[CheckpointArtifact]:
        """The checkpoint found at task start, or None."""
        return self._resume_point

    def save(
        self, name: str = DEFAULT_NAME, metadata: Optional[dict] = None, blocking: bool = True
    ) -> CheckpointArtifact:
        """Snapshot the step's attributes.

        ``blocking=True`` returns once the checkpoint is committed. ``blocking=False``
        returns once the state is captured in memory (changed tensors copied) and commits
        in the background; a failure there is raised by the next save(), wait(), or at
        task end. One save is in flight at most: a new one first waits for it.
        """
        self.wait()
        t = self._task
        validate_name(name, t.step)
        metadata = normalize_metadata(metadata, t.step)
        fields = self._selector.select(
            self._source.assigned(),
            self._source.available_names(),
            self._source.lookup,
            t.step,
        )
        if self._next_version is None:
            self._next_version = max((k.version for k in self._task_keys()), default=0) + 1
        key = CheckpointKey(t.flow, t.run_id, t.step, t.task_id, t.attempt, name, self._next_version)
        if not blocking and self._staging is None:
            self._staging = StagingArea()
        prepared = prepare_save(
            key,
            fields,
            metadata,
            parent=self._parent,
            rng_state=capture_rng_state() if self._rng else None,
            extra={"foreach_indices": list(t.foreach_indices)},
            tracker=self._tracker,
            staging=None if blocking else self._staging,
        )
        self._next_version += 1
        if blocking or not prepared.staged:
            if not blocking:
                print(
                    "@checkpoint: %s changed more bytes than the staging budget (%s=%d); "
                    "saved synchronously." % (key, STAGING_BUDGET_ENV, self._staging.budget),
                    file=sys.stderr,
                )
            return self._commit(prepared)
        if self._background is None:
            self._background = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-save")
        self._pending = self._background.submit(self._commit, prepared)
        return CheckpointArtifact.from_manifest(prepared.manifest)

    def _commit(self, prepared) -> CheckpointArtifact:
        manifest = commit_save(self._store, prepared, self._tracker)
        artifact = CheckpointArtifact.from_manifest(manifest)
        self._saved.append(artifact)
        self._task_keys_known.append(prepared.key)
        self._after_commit(prepared.key)
        for listener in self.on_commit:
            listener(artifact, manifest)
        return artifact

    def _after_commit(self, key: CheckpointKey) -> None:
        """Housekeeping that must never fail a committed save: the cross-run note, retention."""
        try:
            self._store.note_latest(key, self._task.foreach_indices)
            if self._retention.active:
                self._apply_retention(key.name)
        except Exception as ex:
            print(
                "@checkpoint: checkpoint %s is committed, but housekeeping after it failed: "
                "%s: %s" % (key, type(ex).__name__, ex),
                file=sys.stderr,
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

    def wait(self) -> None:
        """Block until the background save (if any) is committed; re-raise its failure."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def finish(self, raise_failure: bool = True) -> None:
        """At task end: commit the pending save; report (or raise) its failure."""
        try:
            self.wait()
        except Exception as ex:
            if raise_failure:
                raise
            print("@checkpoint: the last background save failed: %s" % ex, file=sys.stderr)
        finally:
            if self._background is not None:
                self._background.shutdown(wait=True)
                self._background = None

    def load(self, reference: Optional[Reference] = None) -> CheckpointArtifact:
        """Restore a checkpoint's fields onto the step (and RNG state, when captured)."""
        key = self._resolve(reference, for_what="load")
        manifest = self._store.read_manifest(key)
        values = read_snapshot(self._store, manifest)
        apply_fields(self._target, values, str(key))
        if self._rng:
            state = read_rng_state(self._store, manifest)
            if state:
                restore_rng_state(state)
        self._parent = str(key)
        artifact = CheckpointArtifact.from_manifest(manifest)
        for listener in self.on_load:
            listener(artifact)
        return artifact

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
        key = self._resolve(reference, for_what="inspect")
        return public_view(self._store.read_manifest(key))

    def list(
        self, name: Optional[str] = None, task: Any = None, attempt: Optional[int] = None
    ) -> List[CheckpointArtifact]:
        """Committed checkpoints of a task (default: this one), oldest first."""
        if task is None:
            flow, run_id, step, task_id = (
                self._task.flow,
                self._task.run_id,
                self._task.step,
                self._task.task_id,
            )
        else:
            flow, run_id, step, task_id = split_pathspec(getattr(task, "pathspec", task))
        return list_artifacts(self._store, flow, run_id, step, task_id, name, attempt)

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


def list_artifacts(
    store: CheckpointStore,
    flow: str,
    run_id: str,
    step: str,
    task_id: str,
    name: Optional[str] = None,
    attempt: Optional[int] = None,
) -> List[CheckpointArtifact]:
    """Committed checkpoints of one task, oldest first, skipping damaged manifests."""
    if name is not None:
        validate_name(name, step)
    if attempt is not None and (not isinstance(attempt, int) or attempt < 0):
        raise CheckpointException("list(attempt=...) must be an int >= 0; got %r." % (attempt,))
    keys = store.list_keys(flow, run_id, step, task_id, attempt)
    found = [_read_artifact(store, key) for key in keys if name is None or key.name == name]
    return [artifact for artifact in found if artifact is not None]


def list_run_artifacts(
    store: CheckpointStore,
    flow: str,
    run_id: str,
    name: Optional[str] = None,
    attempt: Optional[int] = None,
) -> List[CheckpointArtifact]:
    """Committed checkpoints of every task of a run, oldest first."""
    found = []
    for step, task_id in store.list_run_tasks(flow, run_id):
        found.extend(list_artifacts(store, flow, run_id, step, task_id, name, attempt))
    return sorted(found, key=lambda a: a.created_on)


def _read_artifact(store: CheckpointStore, key: CheckpointKey) -> Optional[CheckpointArtifact]:
    """The artifact of a committed checkpoint; None (with a warning) if it is damaged."""
    try:
        return CheckpointArtifact.from_manifest(store.read_manifest(key))
    except CheckpointCorrupted as ex:
        print("@checkpoint: skipping damaged checkpoint: %s" % ex, file=sys.stderr)
        return None
