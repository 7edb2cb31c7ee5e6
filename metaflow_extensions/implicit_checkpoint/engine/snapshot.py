"""Fields to a committed checkpoint, and back: the save and load pipelines.

Save, in two halves so the second can run in the background:
``prepare_save`` encodes every field into one object graph (codecs) and captures the
bytes of its storages (referenced live, or copied into a staging area) and of the files
of the task's folder (read, or copied into the staging area); ``commit_save`` cuts them
into blobs (layout), writes the blobs that do not exist yet (store) and commits the
manifest, written last. With opt-in change tracking, storages torch says are unchanged
point at blobs already stored.

Load: read the manifest and the graph → match it to the live objects (restore) → read
and verify the bytes of new storages → build every value → read the bytes that go
straight into live tensors → apply. Nothing live changes before every value is built.
A checkpoint's folder is staged (read and verified) before
the fields are loaded, and put in place after.
"""

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from .change_tracking import (
    ChangeTracker,
    Location,
    Observation,
    WriteHistory,
    fingerprint,
    fingerprint_of_stored,
    observe,
)
from .codecs import EncodedGraph, GraphBuilder, GraphEncoder, GraphReader, Ref, plain_preview
from .device_load import DEFAULT_BOUNCE_BYTES, DeviceRead, read_into_device
from .device_streams import DeviceOrdering, on_device, process_ordering
from .directory import FileEntry, FolderRestore, FolderScan, capture_files
from .errors import CheckpointCorrupted, CheckpointException
from .format_v1 import apply_v1, load_v1
from .keys import CheckpointKey
from .host_memory import address_space
from .layout import RNG_GROUP, PlannedBlob, is_chunked, plan_blobs
from .manifest import Manifest, StorageLayout, utc_now_iso
from .restore import apply_restore, build_values, live_value, plan_restore
from .staging import StagingArea, copy_device_storages, stream_to_host
from .store import BlobRead, CheckpointStore
from .tensors import DevicePlacement, StorageBuffer, is_tensor_like, to_raw

#: A graph document up to this size lives inside the manifest instead of a blob.
INLINE_BYTES = 4096


@dataclass
class PreparedSave:
    """A save whose state is captured (encoded, changed storages copied or referenced),
    ready to be hashed, written and committed, now or in the background."""

    key: CheckpointKey
    manifest: Manifest  # all but the storage layout and the bytes written
    graph: EncodedGraph
    changed: Dict[int, memoryview]  # storage index -> its bytes (live view or staged copy)
    reused: Dict[int, Location]  # storage index -> where its unchanged bytes already are
    verify: List[int]  # reused storages to re-hash before trusting them
    observations: Dict[int, Observation]
    staged: bool  # changed bytes are copies: the caller may go on mutating its tensors
    keepalive: List[Any] = field(default_factory=list)
    files: List[Tuple[FileEntry, memoryview]] = field(default_factory=list)  # the folder's files, read
    # Storage index -> its flat device tensor, for large device storages of a synchronous
    # save: their ``changed`` entry is a placeholder; commit_save streams their chunks
    # through pinned slots as it writes them.
    streamed: Dict[int, Any] = field(default_factory=dict)
    ordering: Optional[DeviceOrdering] = None  # whose streams copy them (None: this process's)


def prepare_save(
    key: CheckpointKey,
    fields: Mapping[str, Any],
    metadata: Dict[str, Any],
    parent: Optional[str] = None,
    rng_state: Optional[Dict[str, Any]] = None,
    extra: Optional[Dict[str, Any]] = None,
    tracker: Optional[ChangeTracker] = None,
    staging: Optional[StagingArea] = None,
    folder: Optional[FolderScan] = None,
    ordering: Optional[DeviceOrdering] = None,
) -> PreparedSave:
    """Capture the state of ``fields`` (and the files of ``folder``) now. With
    ``staging`` (and the changed bytes within its budget), changed storages and the
    files are copied into it, so the caller may go on mutating them; otherwise the
    storages' live memory is referenced until ``commit_save`` and the files are read
    into memory of their own. ``ordering``: the device streams device tensors are
    copied with (default: this process's, CUDA's with a GPU; tests pass a stand-in)."""
    graph = GraphEncoder(key.step).encode(fields, rng_state)
    by_change = _sort_by_change(graph, tracker)
    files = folder.files if folder is not None else []
    captured = _capture(graph, by_change.changed, files, staging, ordering)
    manifest = replace(
        _describe(key, graph, fields, metadata, parent, rng_state, folder, captured.files),
        **(extra or {}),
    )
    return PreparedSave(
        key,
        manifest,
        graph,
        captured.storages,
        by_change.reused,
        by_change.verify,
        by_change.observations,
        captured.staged,
        captured.keepalive,
        captured.files,
        captured.streamed,
        ordering,
    )


@dataclass
class _ByChange:
    """The storages of a graph sorted by what the change tracker knows of them."""

    changed: List[int] = field(default_factory=list)  # to capture and store
    reused: Dict[int, Location] = field(default_factory=dict)  # unchanged, already stored
    verify: List[int] = field(default_factory=list)  # reused, to re-hash before trusting
    observations: Dict[int, Observation] = field(default_factory=dict)


def _sort_by_change(graph: EncodedGraph, tracker: Optional[ChangeTracker]) -> _ByChange:
    """Without (enabled) change tracking every storage counts as changed."""
    table = graph.table
    result = _ByChange()
    for index, (source, spec) in enumerate(zip(table.sources, table.specs)):
        seen = observe(source, spec) if tracker is not None and tracker.enabled else None
        if seen is not None:
            result.observations[index] = seen
        known = tracker.unchanged(source, seen) if seen is not None else None
        if known is None:
            result.changed.append(index)
            continue
        result.reused[index] = known[0]
        if known[1]:
            result.verify.append(index)
    return result


@dataclass
class _Captured:
    storages: Dict[int, memoryview]  # storage index -> its bytes (live view or staged copy)
    files: List[Tuple[FileEntry, memoryview]]  # the folder's files that could be read
    staged: bool
    keepalive: List[Any]
    streamed: Dict[int, Any] = field(default_factory=dict)


def _capture(
    graph: EncodedGraph,
    changed: List[int],
    files: List[FileEntry],
    staging: Optional[StagingArea],
    ordering: Optional[DeviceOrdering] = None,
) -> _Captured:
    """Copy the changed storages and the files into ``staging`` when they fit in its
    budget; else reference the storages' live memory and read the files."""
    table = graph.table
    changed_bytes = sum(table.specs[i].nbytes for i in changed) + sum(f.size for f in files)
    if staging is not None and staging.fits(changed_bytes):
        views = staging.stage(
            [table.flat(i) for i in changed] + files,
            [table.specs[i].nbytes for i in changed] + [f.size for f in files],
        )
        read = [(f, v) for f, v in zip(files, views[len(changed) :]) if v is not None]
        return _Captured(dict(zip(changed, views)), read, True, [])
    storages, keepalive, streamed = {}, [], {}
    on_devices = [i for i in changed if on_device(table.flat(i), ordering)]
    # Large device storages are copied chunk by chunk while they are written
    # (commit_save); the small ones now, together, to pinned memory on a side stream.
    small = [i for i in on_devices if not is_chunked(table.specs[i].nbytes)]
    for index in on_devices:
        if index not in small:
            streamed[index] = table.flat(index)
            placeholder = address_space(table.specs[index].nbytes)
            storages[index] = memoryview(placeholder)[: table.specs[index].nbytes]
            keepalive.append(placeholder)
    if small:
        for index, host in zip(small, copy_device_storages([table.flat(i) for i in small], ordering)):
            storages[index], holder = to_raw(host)
            keepalive.append(holder)
    for index in changed:
        if index not in storages:
            storages[index], holder = to_raw(table.flat(index))
            keepalive.append(holder)
    return _Captured(storages, capture_files(files), False, keepalive, streamed)


def _describe(
    key: CheckpointKey,
    graph: EncodedGraph,
    fields: Mapping[str, Any],
    metadata: Dict[str, Any],
    parent: Optional[str],
    rng_state: Optional[Dict[str, Any]],
    folder: Optional[FolderScan],
    read_files: List[Tuple[FileEntry, memoryview]],
) -> Manifest:
    """The manifest of a save, but for where its bytes are stored (commit_save adds it)."""
    manifest = Manifest(
        key=str(key),
        name=key.name,
        flow=key.flow,
        run_id=key.run_id,
        step=key.step,
        task_id=key.task_id,
        pathspec=key.pathspec,
        attempt=key.attempt,
        version=key.version,
        created_on=utc_now_iso(),
        metadata=metadata,
        fields=_public_fields(graph, fields),
        parent=parent,
        rng=sorted(rng_state) if rng_state else None,
        size=_field_data_size(graph),
    )
    if folder is not None:
        read = {id(f) for f, _ in read_files}
        manifest.files = {
            e.rel: e.public() for e in folder.entries if e.symlink is not None or id(e) in read
        }
        manifest.directories = folder.folders
    return manifest


@dataclass(frozen=True)
class CommitOutcome:
    """What ``commit_save`` did: the committed manifest, where every storage's bytes are
    now, and, when a storage changed behind torch's version counter, why the change
    tracker must stop trusting it (``teach_tracker``)."""

    manifest: Manifest
    locations: Dict[int, Location]
    counter_distrusted: Optional[str] = None


@dataclass(frozen=True)
class _WrittenBlobs:
    """The blobs of a save, as written: buffer ``i``'s bytes are at ``extents[i]``."""

    blobs: List[PlannedBlob]
    extents: list
    hashes: List[str]
    written: List[bool]
    order: List[int]  # the changed storages, in the order of their buffers
    graph_inline: bool

    def located(self, buffer_index: int) -> list:
        return [[self.hashes[b], offset, length] for b, offset, length in self.extents[buffer_index]]

    @property
    def bytes_written(self) -> int:
        return sum(blob.size for blob, wrote in zip(self.blobs, self.written) if wrote)


def commit_save(
    store: CheckpointStore,
    prepared: PreparedSave,
    commit: Optional[Callable[[CheckpointKey, Manifest], Manifest]] = None,
    history: Optional[WriteHistory] = None,
) -> CommitOutcome:
    """Hash and write what is not stored yet, then commit the manifest.

    ``history``: the task's chunks of its previous save, to pick each chunk's write path
    (updated with this save's). ``commit`` writes the finished manifest and returns the
    committed one; the default is ``store.commit``. A node of a gang commits its part
    and gets the global manifest. ``prepared`` is not changed: a save whose commit failed
    can be committed again.
    """
    changed, reused, distrusted, holders = _verify_reused(prepared)
    written = _write_blobs(store, prepared, changed, history if history is not None else WriteHistory())
    del holders  # the bytes they hold are written
    locations = _locations(prepared, changed, reused, written)
    manifest = _with_layout(prepared, locations, written)
    if commit is None:
        store.commit(prepared.key, manifest)
        committed = manifest
    else:
        committed = commit(prepared.key, manifest)
    return CommitOutcome(committed, locations, distrusted)


def teach_tracker(tracker: ChangeTracker, prepared: PreparedSave, outcome: CommitOutcome) -> None:
    """What the change tracker learns from a committed save: where each storage seen
    unchanged is stored, and whether its bytes were hashed in this save."""
    if outcome.counter_distrusted is not None:
        tracker.disable(outcome.counter_distrusted)
    if not tracker.enabled:
        return
    sources = prepared.graph.table.sources
    for index, seen in prepared.observations.items():
        verified = index not in prepared.reused or index in prepared.verify
        tracker.remember(sources[index], seen, outcome.locations[index], verified)
    tracker.keep_only(sources)


def _write_blobs(
    store: CheckpointStore, prepared: PreparedSave, changed: Dict[int, memoryview], history: WriteHistory
) -> _WrittenBlobs:
    """Cut every buffer to store into blobs and write those not stored yet: changed
    storages first, then the folder's files (packed per folder), then the graph if too
    big to inline."""
    graph, table = prepared.graph, prepared.graph.table
    order = sorted(changed)
    buffers: List[memoryview] = [changed[i] for i in order] + [data for _, data in prepared.files]
    sources = [(id(table.sources[i]), getattr(table.sources[i], "_version", None)) for i in order]
    sources += [None] * len(prepared.files)
    # The RNG state is packed apart: it differs between runs (and epochs) whose tensors do
    # not, and would make their packs of small tensors differ too.
    rng = set(graph.rng_storages)
    groups = [RNG_GROUP if i in rng else None for i in order] + [("folder", entry.group) for entry, _ in prepared.files]
    blobs, extents = plan_blobs(buffers, sources, groups)
    graph_inline = len(graph.document) <= INLINE_BYTES
    if not graph_inline:
        # A blob of its own: every load reads it first, and alone.
        blobs.append(PlannedBlob([memoryview(graph.document)], len(graph.document)))
        extents.append([(len(blobs) - 1, 0, len(graph.document))])
    hashes, written = _put_blobs(
        store, prepared, blobs, extents, order, [history.probably_changed(blob) for blob in blobs]
    )
    history.remember(blobs, written)
    return _WrittenBlobs(blobs, extents, hashes, written, order, graph_inline)


def _locations(
    prepared: PreparedSave, changed: Dict[int, memoryview], reused: Dict[int, Location], written: _WrittenBlobs
) -> Dict[int, Location]:
    """Where every storage's bytes are: reused ones where they were, the others in the
    blobs just written."""
    blob_sizes = {digest: blob.size for digest, blob in zip(written.hashes, written.blobs)}
    locations: Dict[int, Location] = dict(reused)
    for position, index in enumerate(written.order):
        where = written.located(position)
        locations[index] = Location(
            tuple(map(tuple, where)),
            tuple((digest, blob_sizes[digest]) for digest, _, _ in where),
            fingerprint_of_stored([digest for digest, _, _ in where], changed[index]),
        )
    return locations


def _with_layout(prepared: PreparedSave, locations: Dict[int, Location], written: _WrittenBlobs) -> Manifest:
    """The prepared manifest, with where its bytes are stored and what this save wrote."""
    graph, table = prepared.graph, prepared.graph.table
    blob_sizes = {digest: blob.size for digest, blob in zip(written.hashes, written.blobs)}
    for location in locations.values():
        blob_sizes.update(location.blob_sizes)
    changed_count = len(written.order)
    file_extents = {
        entry.rel: written.located(changed_count + position)
        for position, (entry, _) in enumerate(prepared.files)
    }
    layout = StorageLayout(
        blobs=blob_sizes,
        tensors=[StorageLayout.storage_entry(spec, locations[i].extents) for i, spec in enumerate(table.specs)],
        graph=graph.document if written.graph_inline else written.located(changed_count + len(prepared.files)),
        fields={name: {"tensors": list(info.storages)} for name, info in graph.fields.items()},
        rng={"tensors": list(graph.rng_storages)} if prepared.manifest.rng else None,
        files=file_extents if prepared.manifest.has_folder else None,
    )
    return prepared.manifest.with_storage(
        layout,
        bytes_written=written.bytes_written,
        # Blob bytes this checkpoint uses (RNG state and files included); written <=
        # referenced, and the difference is what dedup saved.
        bytes_referenced=(
            sum(length for location in locations.values() for _, _, length in location.extents)
            + sum(len(data) for _, data in prepared.files)
            + (0 if written.graph_inline else len(graph.document))
        ),
    )


def _put_blobs(
    store: CheckpointStore,
    prepared: PreparedSave,
    blobs: List[PlannedBlob],
    extents: list,
    order: List[int],
    one_pass: List[bool],
) -> Tuple[List[str], List[bool]]:
    """``store.put_blobs`` of every blob; the chunks of streamed device storages go a
    slot at a time, each copied to pinned memory while the one before is written."""
    flow = prepared.key.flow
    if not prepared.streamed:
        return store.put_blobs(flow, blobs, one_pass, background=prepared.staged)
    chunk_blobs, sources = [], []
    for position, index in enumerate(order):
        device = prepared.streamed.get(index)
        if device is None:
            continue
        start = 0
        for blob_index, _, length in extents[position]:  # a chunked buffer: a blob per chunk
            chunk_blobs.append(blob_index)
            sources.append(device[start : start + length])
            start += length
    hashes: List[Optional[str]] = [None] * len(blobs)
    written: List[bool] = [False] * len(blobs)

    def put(indices: List[int]) -> None:
        digests, wrote = store.put_blobs(
            flow, [blobs[i] for i in indices], [one_pass[i] for i in indices], background=prepared.staged
        )
        for i, digest, w in zip(indices, digests, wrote):
            hashes[i], written[i] = digest, w

    streamed_blobs = set(chunk_blobs)
    others = [i for i in range(len(blobs)) if i not in streamed_blobs]
    if others:
        put(others)
    for group, views in stream_to_host(sources, DEFAULT_BOUNCE_BYTES // 2, prepared.ordering):
        for position, view in zip(group, views):
            blobs[chunk_blobs[position]].parts = [view]
        put([chunk_blobs[position] for position in group])
    return hashes, written


def _verify_reused(prepared: PreparedSave):
    """Re-hash the reused storages due for it. Returns the storages to write (with the
    live bytes of any that changed behind torch's version counter), those still reused,
    why the counter is no longer to be trusted (or None), and what holds the bytes read."""
    table = prepared.graph.table
    changed, reused = dict(prepared.changed), dict(prepared.reused)
    distrusted, holders = None, []
    for index in prepared.verify:
        if observe(table.sources[index], table.specs[index]) != prepared.observations[index]:
            continue  # written to since the save began: its old bytes stand
        data, holder = to_raw(table.flat(index))
        if fingerprint(data) != reused[index].fingerprint:
            holders.append(holder)
            changed[index] = data
            del reused[index]
            distrusted = (
                "a %s in checkpoint %s changed without torch noticing (written through "
                ".data or a numpy view?); its current bytes are saved"
                % (table.specs[index].describe(), prepared.key)
            )
    return changed, reused, distrusted, holders


def _field_data_size(graph: EncodedGraph) -> int:
    """Bytes of field data, each shared storage counted once, RNG state not counted."""
    storages = set().union(*(info.storages for info in graph.fields.values()))
    return len(graph.document) + sum(graph.table.specs[i].nbytes for i in storages)


def _public_fields(graph: EncodedGraph, values: Mapping[str, Any]) -> Dict[str, dict]:
    """Per field, what ``inspect()`` shows: type, codec, size, and small values inline."""
    public, owner_of_root = {}, {}
    for name, info in graph.fields.items():
        value = values[name]
        # "filename": the field and its codec, for tools written for metaflow-checkpoint,
        # whose fields are files ("model.pkl"); here it names no file.
        entry = {
            "type": info.type,
            "codec": info.codec,
            "size": info.size,
            "filename": "%s.%s" % (name, info.codec),
        }
        if info.storages:
            entry["tensors"] = len(info.storages)
        if is_tensor_like(value):
            entry["dtype"] = str(value.dtype).replace("torch.", "")
            entry["shape"] = list(value.shape)
        show, preview = plain_preview(value)
        if show:
            entry["value"] = preview
        if isinstance(info.root, Ref):
            if info.root.index in owner_of_root:
                entry["alias_of"] = owner_of_root[info.root.index]
            owner_of_root.setdefault(info.root.index, name)
        public[name] = entry
    return public


# -- load ---------------------------------------------------------------------------------


def load_snapshot(
    store: CheckpointStore,
    manifest: Manifest,
    fields: Optional[Iterable[str]] = None,
    target: Any = None,
    allow_pickle: bool = True,
    with_rng: bool = False,
    folder: Optional[str] = None,
    map_location: Any = None,
) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    """Load a committed checkpoint (all fields, or only ``fields``), verified.

    With ``target``, live objects it holds are restored in place and the fields are
    set on it, all or nothing. With ``folder``, the checkpoint's files are put there
    (staged and verified before any field is loaded, moved in place after). Returns the
    values and, with ``with_rng``, the RNG state. ``map_location``: the device of the
    tensors no live tensor receives (tensors.DevicePlacement); live ones keep theirs.
    """
    placement = DevicePlacement(map_location)
    restore = _stage_folder_restore(store, manifest, folder) if folder is not None else None
    try:
        loaded = _load_fields(store, manifest, fields, target, allow_pickle, with_rng, placement)
    except BaseException:
        if restore is not None:
            restore.discard()
        raise
    if restore is not None:
        restore.apply()
    return loaded


def _load_fields(store, manifest: Manifest, fields, target, allow_pickle, with_rng, placement):
    key = manifest.key
    storage = manifest.storage
    stored = storage.fields
    wanted = list(stored) if fields is None else list(fields)
    missing = [name for name in wanted if name not in stored]
    if missing:
        raise CheckpointException(
            "Checkpoint %s has no field(s) %s. Its fields are: %s."
            % (key, ", ".join(map(repr, missing)), ", ".join(sorted(stored)) or "none")
        )
    if manifest.format_version == 1:
        values, rng_state = load_v1(
            lambda requests: _read_extents(store, manifest, requests),
            manifest, wanted, allow_pickle, with_rng,
        )
        if target is not None:
            apply_v1(target, values)
        return values, rng_state
    specs = storage.storage_specs()
    reader = GraphReader(_read_graph(store, manifest), specs, key)
    absent = [name for name in wanted if name not in reader.fields]
    if absent:
        raise CheckpointCorrupted(
            "Checkpoint %s: its object graph has no field(s) %s that its manifest lists. "
            "The checkpoint was altered or damaged; load an earlier one."
            % (key, ", ".join(map(repr, absent))),
            key=key,
        )
    live = {name: live_value(target, name) for name in wanted} if target is not None else {}
    plan = plan_restore(reader, specs, live, key)
    labels = _storage_labels(manifest, wanted, with_rng)
    _check_claims(store, manifest, [(storage.extents_of(i), label) for i, label in sorted(labels.items())])
    buffers = {
        i: StorageBuffer(specs[i], live=plan.direct.get(i), device=placement.device_for(specs[i]))
        for i in sorted(labels)
    }
    _read_storages(store, manifest, {i: b for i, b in buffers.items() if b.live is None}, labels)

    builder = GraphBuilder(reader, buffers, plan.live, allow_pickle, key)
    values, calls, copies = build_values(builder, reader, wanted, plan)
    rng_state = None
    if with_rng and storage.rng:
        rng_state = builder.build(reader.rng, "the RNG state")

    try:
        _read_storages(store, manifest, {i: b for i, b in buffers.items() if b.live is not None}, labels)
    except CheckpointException as ex:
        raise CheckpointCorrupted(
            "%s Loading had begun reading into live tensors (%s), which may now hold "
            "partly restored values." % (ex, ", ".join(sorted({w for _, _, w in calls}))),
            key=key,
        ) from ex
    apply_restore(target, values, calls, copies, key)
    return values, rng_state


def _storage_labels(manifest: Manifest, wanted: List[str], with_rng: bool) -> Dict[int, str]:
    """Every storage a load reads, and what it belongs to, for errors: the first wanted
    field that uses it, else the RNG state."""
    storage = manifest.storage
    labels: Dict[int, str] = {}
    for name in wanted:
        for index in storage.fields[name]["tensors"]:
            labels.setdefault(index, "field %r" % name)
    if with_rng and storage.rng:
        for index in storage.rng["tensors"]:
            labels.setdefault(index, "the RNG state")
    return labels


def _stage_folder_restore(store: CheckpointStore, manifest: Manifest, root: str) -> Optional[FolderRestore]:
    """Read and verify the files of a checkpoint's folder into a staging folder beside
    ``root``; ``apply()`` the result to make ``root`` that folder. None for a checkpoint
    saved without a folder (it leaves ``root`` alone)."""
    if not manifest.has_folder:
        return None
    restore = FolderRestore(
        root,
        manifest.files,
        manifest.directories,
        manifest.storage.files,
        manifest.key,
        blob_sizes=manifest.storage.blobs,
    )
    restore.stage(lambda requests: _read_extents(store, manifest, requests))
    return restore


def _read_graph(store: CheckpointStore, manifest: Manifest) -> bytes:
    where = manifest.storage.graph
    if isinstance(where, (bytes, bytearray)):
        return bytes(where)
    _check_claims(store, manifest, [(where, "the object graph")])
    buffer = bytearray(sum(length for _, _, length in where))
    _read_extents(store, manifest, [(where, memoryview(buffer), "the object graph")])
    return bytes(buffer)


def _read_storages(
    store: CheckpointStore,
    manifest: Manifest,
    buffers: Mapping[int, StorageBuffer],
    labels: Mapping[int, str],
) -> None:
    storage = manifest.storage
    _read_extents(
        store,
        manifest,
        [
            (storage.extents_of(i), buffer.buffer, labels.get(i, "the RNG state"))
            for i, buffer in buffers.items()
            if buffer.on_host
        ],
    )
    into_devices = [
        DeviceRead(storage.extents_of(i), buffer.device_bytes, labels.get(i, "the RNG state"))
        for i, buffer in buffers.items()
        if not buffer.on_host
    ]
    if into_devices:
        read_into_device(
            lambda reads: store.read_blobs(manifest.flow, reads, manifest.key),
            manifest.storage.blobs,
            into_devices,
            process_ordering(),
        )


def _check_claims(store: CheckpointStore, manifest: Manifest, wanted: List[Tuple[list, str]]) -> None:
    """The blobs of these ``(extents, label)`` are stored with the sizes the manifest
    claims, checked before anything is allocated for them."""
    blobs = manifest.storage.blobs
    problems = store.claimed_size_problems(
        manifest.flow, {digest: blobs[digest] for extents, _ in wanted for digest, _, _ in extents}
    )
    for extents, label in wanted:
        for digest, _, _ in extents:
            if digest in problems:
                raise CheckpointCorrupted(
                    "Checkpoint %s: the data of %s is missing or damaged (blob %s %s). Load "
                    "an earlier checkpoint; `checkpoint verify` lists what is damaged."
                    % (manifest.key, label, digest, problems[digest]),
                    key=manifest.key,
                    field=label,
                )


def _read_extents(store: CheckpointStore, manifest: Manifest, wanted: List[tuple]) -> None:
    """Read ``(extents, destination, label)`` requests, one BlobRead per blob."""
    blob_sizes = manifest.storage.blobs
    reads: Dict[str, BlobRead] = {}
    for extents, destination, label in wanted:
        position = 0
        for digest, offset, length in extents:
            request = reads.get(digest)
            if request is None:
                request = reads[digest] = BlobRead(digest, blob_sizes[digest], [], label)
            request.targets.append((offset, destination[position : position + length]))
            position += length
    if reads:
        store.read_blobs(manifest.flow, list(reads.values()), manifest.key)
