import dataclasses

from metaflow import current
from metaflow.decorators import StepDecorator

from ..engine.errors import (
    CheckpointConfigError,
    CheckpointException,
    CheckpointSerializationError,
    TaskPreempted,
)
from ..engine.fields import FieldSelector, normalize_patterns
from ..engine.retention import RetentionPolicy
from ..engine.session import LOAD_POLICIES, AttributeSource, TaskIdentity
from .assignment_tracking import stop_tracking, track_assignments
from .cards import final_card
from .cards.attach import (
    LiveCardRefresh,
    attach_card,
    remove_cards_of_earlier_attempts,
    wait_for_orphan_renders,
)
from .gang_identity import gang_of_task
from .guidance import LeftOutNote, failure_note
from .log_routing import NoticesToMetaflow
from .metaflow_internals import foreach_indices, parent_artifact_names, publish_on_current
from .package_clash import clash_message
from . import retry_policy
from .run_visibility import runs_in_current_namespace
from .settings import settings
from .step_source import saves_in_background
from .store_binding import store_for_datastore
from .task_handoff import HandedTask, hand_down
from .task_folder import end_task_folder, start_task_folder, task_folder
from .task_status import FAILED, attempt_statuses, client_reading, record_loaded, record_process
from ..engine.notices import warn


#: Datastores with a backend of our own (listing by age, deletes): everything works there.
FULLY_SUPPORTED_DATASTORES = ("local", "s3")
#: Where Metaflow's spot-termination monitor (@kubernetes, @batch) writes its notice, when
#: ``current.spot_termination_notice`` does not say.
SPOT_NOTICE_FILE = "/tmp/spot_termination_notice"
SPOT_MONITORED = ("kubernetes", "batch")


class CheckpointDecorator(StepDecorator):
    """
    Makes a step crash-safe: `current.checkpoint.save()` snapshots the step's own
    attributes (`self.model`, `self.epoch`, ...) and the files in the task's folder
    `current.checkpoint.directory` into the datastore, and after a crash the next
    attempt (with `@retry`) finds the newest committed checkpoint, so that
    `current.checkpoint.load()` puts every attribute back on `self` and every file
    back in the folder.

    ```
    @retry(times=3)
    @checkpoint
    @step
    def train(self):
        self.model = Net()
        self.optimizer = torch.optim.Adam(self.model.parameters())
        self.epoch = 0
        if current.checkpoint.is_loaded:
            current.checkpoint.load()
        while self.epoch < 10:
            ...
            self.epoch += 1
            current.checkpoint.save(metadata={"loss": loss})
    ```

    Parameters
    ----------
    include : List[str], optional, default None
        Capture only the attributes matching these names or fnmatch patterns
        (an included parent artifact is captured too).
    exclude : List[str], optional, default None
        Never capture attributes matching these names or patterns.
        Mutually exclusive with `include`.
    load_policy : str, default "fresh"
        "fresh": on a retry, resume from the newest checkpoint of this task's earlier
        attempts. "eager": like "fresh"; if there is none, the newest checkpoint of the
        same flow, step and foreach index from earlier runs. "none": never resume.
        With "fresh" or "eager", a step re-executed by `python flow.py resume` counts
        the origin run's same task as an earlier attempt and continues from it.
    keep_last : int, optional, default None
        Per checkpoint name, keep only the newest N checkpoints (None keeps all).
    keep_best : int, optional, default None
        Per checkpoint name, also keep the best N by `best_metric`.
    best_metric : str, optional, default None
        The metadata key that `keep_best` ranks by.
    best_mode : str, default "min"
        "min" or "max": whether a lower or a higher `best_metric` is better.
    rng : bool, default True
        Save captures the Python, numpy and torch random generator states; load
        restores them, so a resumed run is bit-identical to an uninterrupted one. A
        retry then repeats the failed attempt's random draws: a failure caused by a
        random draw happens again (the task log says so). False draws anew.
    card : bool, default True
        Attach the live checkpoint card to this step.
    """

    name = "checkpoint"
    defaults = {
        "include": None,
        "exclude": None,
        "load_policy": "fresh",
        "keep_last": None,
        "keep_best": None,
        "best_metric": None,
        "best_mode": "min",
        "rng": True,
        "card": True,
    }

    def step_init(self, flow, graph, step_name, decorators, environment, flow_datastore, logger):
        self._step_name = step_name
        self._flow_datastore = flow_datastore
        self._notices = NoticesToMetaflow(logger)
        clash = clash_message()
        if clash:
            raise CheckpointConfigError("@checkpoint on step *%s*: %s" % (step_name, clash))
        # With @catch, the last attempt of an error no retry fixes must still run (and
        # fail at once) for @catch to catch it: no exit code that stops retries then.
        self._has_catch = any(deco.name == "catch" for deco in decorators)
        self._spot_monitored = any(deco.name in SPOT_MONITORED for deco in decorators)
        attrs = self.attributes
        self._selector = self._field_selector(step_name)
        if attrs["load_policy"] not in LOAD_POLICIES:
            raise CheckpointConfigError(
                "@checkpoint(load_policy=%r) on step *%s*: load_policy must be one of %s."
                % (attrs["load_policy"], step_name, ", ".join(map(repr, LOAD_POLICIES)))
            )
        self._retention = self._retention_policy(step_name)
        needs_listing = attrs["load_policy"] == "eager" or self._retention.active
        if needs_listing and flow_datastore.TYPE not in FULLY_SUPPORTED_DATASTORES:
            raise CheckpointConfigError(
                "@checkpoint on step *%s*: load_policy='eager', keep_last and keep_best need "
                "to list and delete checkpoint files by age, which Metaflow's %r datastore "
                "does not offer. Use them with the local or S3 datastore, or drop them here "
                "(saving, resuming after a retry and loading work on every datastore)."
                % (step_name, flow_datastore.TYPE)
            )
        node = graph[step_name] if graph is not None else None
        self._parallel = bool(getattr(node, "parallel_step", False))
        settings()  # a malformed METAFLOW_CHECKPOINT_* setting fails here, before any task
        self._rng = self._flag(attrs["rng"], "rng")
        self._card = self._flag(attrs["card"], "card")
        self._card_id = attach_card(flow, step_name, decorators, wanted=self._card)

    def _field_selector(self, step_name: str) -> FieldSelector:
        """What saves capture: ``include`` or ``exclude`` (not both), checked."""
        include = normalize_patterns(self.attributes["include"], "include", step_name)
        exclude = normalize_patterns(self.attributes["exclude"], "exclude", step_name)
        if include is not None and exclude is not None:
            raise CheckpointConfigError(
                "@checkpoint on step *%s*: include and exclude are mutually exclusive. "
                "Pass include=[...] to capture only those attributes, or exclude=[...] "
                "to capture everything else, not both." % step_name
            )
        return FieldSelector(include, exclude)

    def _retention_policy(self, step_name: str) -> RetentionPolicy:
        """``keep_last``, ``keep_best``, ``best_metric`` and ``best_mode``, checked."""
        attrs = self.attributes
        keep_last = self._count(attrs["keep_last"], "keep_last")
        keep_best = self._count(attrs["keep_best"], "keep_best")
        best_metric = attrs["best_metric"]
        if best_metric is not None and (not isinstance(best_metric, str) or not best_metric):
            raise CheckpointConfigError(
                "@checkpoint(best_metric=%r) on step *%s*: best_metric is the name of a "
                "metadata key, e.g. best_metric=\"val_loss\"." % (best_metric, step_name)
            )
        if keep_best is not None and best_metric is None:
            raise CheckpointConfigError(
                "@checkpoint(keep_best=%d) on step *%s* needs best_metric: the metadata "
                "key to rank checkpoints by, e.g. best_metric=\"val_loss\"."
                % (keep_best, step_name)
            )
        if attrs["best_mode"] not in ("min", "max"):
            raise CheckpointConfigError(
                "@checkpoint(best_mode=%r) on step *%s*: best_mode must be 'min' (lower "
                "is better) or 'max'." % (attrs["best_mode"], step_name)
            )
        return RetentionPolicy(keep_last, keep_best, best_metric, attrs["best_mode"])

    def _count(self, value, argument):
        if value is None or value == "None":
            return None
        try:
            number = int(value)
            valid = number >= 1 and float(value) == number and not isinstance(value, bool)
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise CheckpointConfigError(
                "@checkpoint(%s=%r) on step *%s*: %s must be a positive whole number "
                "(or None to keep every checkpoint)."
                % (argument, value, self._step_name, argument)
            )
        return number

    def _flag(self, value, argument):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise CheckpointConfigError(
            "@checkpoint(%s=%r) on step *%s*: %s must be True or False."
            % (argument, value, self._step_name, argument)
        )

    def task_pre_step(
        self,
        step_name,
        task_datastore,
        metadata,
        run_id,
        task_id,
        flow,
        graph,
        retry_count,
        max_user_code_retries,
        ubf_context,
        inputs,
    ):
        attempt = int(retry_count)
        self._flow = flow
        self._pathspec = "/".join((flow.name, str(run_id), step_name, str(task_id)))
        self._metadata = metadata
        self._run_id, self._task_id, self._attempt = str(run_id), str(task_id), attempt
        self._notices.start()
        record_process(metadata, str(run_id), step_name, str(task_id), attempt)
        if attempt > 0:
            self._fail_if_retries_were_stopped(metadata, attempt)
        log = track_assignments(flow)
        task = TaskIdentity(
            flow=flow.name,
            run_id=str(run_id),
            step=step_name,
            task_id=str(task_id),
            attempt=attempt,
            foreach_indices=foreach_indices(flow),
            origin_run_id=current.origin_run_id,
            gang=gang_of_task(flow, ubf_context, str(task_id), step_name) if self._parallel else None,
        )
        store = store_for_datastore(self._flow_datastore)
        self._folder = task_folder(
            self._flow_datastore.datastore_root, flow.name, str(run_id), step_name, str(task_id)
        )
        start_task_folder(self._folder)
        self._session = self._open_session(flow, task, log, store, int(max_user_code_retries))
        hand_down(
            HandedTask(
                task,
                self.attributes["load_policy"],
                self._flow_datastore.TYPE,
                self._flow_datastore.datastore_root,
            )
        )
        self._follow_session(step_name, log, metadata)
        if self._card_id:
            self._attach_card(getattr(flow, step_name).decorators, store, metadata)
        publish_on_current("checkpoint", self._session)

    def _fail_if_retries_were_stopped(self, metadata, attempt: int) -> None:
        """Where the scheduler retried an attempt that stopped retries (see
        retry_policy.py), fail at once, before the step's own work."""
        try:
            with client_reading(metadata):
                found = retry_policy.recorded(self._pathspec, attempt - 1)
        except Exception as ex:  # unreadable metadata: run the retry as usual
            warn("@checkpoint: could not read how attempt %d ended: %s" % (attempt - 1, ex))
            found = None
        if found is not None:
            raise retry_policy.fail_at_once(found, attempt)

    def _open_session(self, flow, task: TaskIdentity, log, store, max_user_code_retries: int):
        """The task's checkpoint session, started: it found what the attempt resumes from."""
        source = AttributeSource(
            assigned=lambda: log.assigned_values(flow),
            available_names=lambda: parent_artifact_names(flow),
            lookup=lambda name: getattr(flow, name),
        )
        session = retry_policy.StepCheckpointSession(
            store,
            task,
            source,
            target=flow,
            selector=self._selector,
            rng=self._rng,
            load_policy=self.attributes["load_policy"],
            retention=self._retention,
            accept_run=runs_in_current_namespace(flow.name),
            directory=self._folder,
            options=dataclasses.replace(settings().session, stop_notice_file=self._notice_file()),
            after_preemption=retry_policy.after_preemption(task.attempt, max_user_code_retries),
            saves_in_background=saves_in_background(getattr(type(flow), task.step, None)),
        )
        session.start()
        return session

    def _follow_session(self, step_name: str, log, metadata) -> None:
        """What the task notes of each load and commit: fields left out, the loaded
        checkpoint in the task's metadata, randomness a retry replays."""
        session, flow, attempt = self._session, self._flow, self._attempt
        left_out = LeftOutNote(step_name, self._selector, lambda: log.assigned_values(flow))
        session.on_commit.append(left_out.on_commit)
        session.on_load.append(left_out.on_load)
        session.on_load.append(
            lambda artifact: record_loaded(
                metadata, self._run_id, step_name, self._task_id, attempt, artifact.key
            )
        )
        if self._rng and attempt > 0:
            session.on_load.append(
                lambda artifact: _note_replayed_randomness(artifact, self._pathspec, attempt, metadata)
            )

    def _attach_card(self, decorators, store, metadata) -> None:
        """The checkpoint card: earlier attempts' removed, refreshed at each commit, and
        rendered in this process at task end."""
        if self._attempt > 0:
            self._remove_cards_of_earlier_attempts()
        self._session.on_commit.append(LiveCardRefresh(self._card_id, self._attempt))
        final_card.install(
            decorators,
            self._card_id,
            flow_datastore=self._flow_datastore,
            store=store,
            pathspec=self._pathspec,
            attempt=self._attempt,
            metadata_provider=metadata,
        )

    def _notice_file(self):
        """The spot-termination notice file of this task, or None where there is none."""
        announced = getattr(current, "spot_termination_notice", None)
        if announced:
            return announced
        return SPOT_NOTICE_FILE if self._spot_monitored else None

    def task_post_step(self, step_name, flow, graph, retry_count, max_user_code_retries):
        # A background save still in flight is committed before the task ends; if it
        # failed, the task fails.
        self._session.finish(raise_failure=True)

    def task_exception(
        self, exception, step_name, flow, graph, retry_count, max_user_code_retries
    ):
        # Commit what is in flight; the step's own exception is the one to report.
        session = getattr(self, "_session", None)
        if session is not None:
            session.finish(raise_failure=False)
        _leave_out_unpicklable(exception, flow)
        if isinstance(exception, TaskPreempted) and session is not None:
            _leave_out_checkpointed(session, exception, flow)
        why = retry_policy.why_not_retryable(exception)
        retries_left = int(retry_count) < int(max_user_code_retries)
        if why and retries_left:
            try:
                retry_policy.record(
                    self._metadata, self._run_id, step_name, self._task_id, int(retry_count), exception
                )
            except Exception as ex:  # without the record a retry runs the step again
                warn("@checkpoint: could not record that no retry fixes this error: %s" % ex)
            if not self._has_catch:
                retry_policy.exit_without_retry()
        if not self._has_catch and (not retries_left or why):
            note = failure_note(
                step_name,
                _newest_key(session) if session is not None else None,
                int(max_user_code_retries),
                int(max_user_code_retries) - int(retry_count),
                why,
                self.attributes["load_policy"],
            )
            if note:
                warn(note)

    def _remove_cards_of_earlier_attempts(self):
        remove_cards_of_earlier_attempts(self._flow_datastore, self._pathspec, self._card_id)

    def task_finished(
        self, step_name, flow, graph, is_task_ok, retry_count, max_user_code_retries
    ):
        if is_task_ok:  # another decorator handled the exception: retries as usual
            retry_policy.cancel_exit_without_retry()
        if self._card_id and int(retry_count) > 0:
            wait_for_orphan_renders(self._pathspec, self._card_id)
            self._remove_cards_of_earlier_attempts()
        if getattr(self, "_folder", None) is not None:
            end_task_folder(self._folder)
        stop_tracking(flow)
        self._notices.stop()


def _newest_key(session):
    """The key of the task's newest checkpoint (None when it has none)."""
    try:
        return session.inspect()["key"]
    except CheckpointException:
        return None


def _leave_out_unpicklable(exception, flow) -> None:
    """After save() failed on an attribute that cannot be pickled, take it off the flow.

    Metaflow stores every public attribute when the step ends, even a failed one, and
    its own failure to pickle it ("Cannot pickle dump artifact named ...") would replace
    our error, which says what to do. Without it, the failed attempt's other artifacts
    are stored and our error is the task's."""
    name = getattr(exception, "field", None)
    if (
        isinstance(exception, CheckpointSerializationError)
        and exception.__cause__ is not None  # raised from the pickling error itself
        and name
        and name in vars(flow)
    ):
        try:
            delattr(flow, name)
        except Exception:
            pass


def _leave_out_checkpointed(session, exception: TaskPreempted, flow) -> None:
    """A preempted attempt does not store again, as Metaflow artifacts, what its checkpoint
    holds: the machine is going away (a model pickled to the datastore may outlast its
    grace), a retry never reads a failed attempt's artifacts, and a live object the
    checkpoint saved through its state dict only (a ``StatefulDataLoader`` mid-epoch)
    cannot be pickled, so Metaflow's error would replace ours."""
    try:
        fields = session.inspect(exception.key)["fields"]
    except CheckpointException as ex:  # the artifacts are stored as usual, the loader may fail
        warn("@checkpoint: could not read the fields of %s: %s" % (exception.key, ex))
        return
    for name in fields:
        if name in vars(flow):
            try:
                delattr(flow, name)
            except Exception:
                pass


def _note_replayed_randomness(artifact, pathspec: str, attempt: int, metadata_provider) -> None:
    """After an exception, say in the task log that the retry replays the random draws."""
    if not artifact.implicit_manifest.get("rng"):
        return
    try:
        with client_reading(metadata_provider):
            statuses = attempt_statuses(pathspec)
    except Exception:  # the note is a courtesy: never fail a load over it
        return
    if len(statuses) >= attempt and statuses[attempt - 1] == FAILED:
        warn(
            "@checkpoint: attempt %d failed with an exception, and this retry restored the "
            "random generators saved with %s: it draws the same random numbers again, so a "
            "failure caused by a random draw repeats (bit-identical resume; "
            "@checkpoint(rng=False) draws anew)." % (attempt - 1, artifact.key)
        )
