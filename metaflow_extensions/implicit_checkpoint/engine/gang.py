"""Gang checkpoints: one global checkpoint per save of a multi-node (``@parallel``) step.

Every node of a gang calls ``save()`` at the same points. Each node writes its own
*part*, a complete manifest of its own fields written after its blobs, under the gang's
checkpoint task (the control task, node 0). Node 0 waits until every node's part is
there, then commits the *global* manifest: one checkpoint, listed once, whose storage
section references the blobs of every part. A node killed mid-save leaves parts
without a global manifest: nothing is listed, and the previous global version stays
the newest. Commit order follows DCP and Orbax (a global metadata file after every
rank), but through the store alone: no collective of torch.distributed is needed.

The other nodes hold their save lease until they see the global manifest, so gc never
deletes a blob between a part being written and the global commit referencing it.

No node waits forever for a peer (``PeerWatch``): each node holds a marker while its
task runs, renewed like a lease. A wait fails as soon as a peer it waits for is gone:
its process no longer runs (a peer on this host), its marker was removed (its task
ended), or its marker was not renewed for ``PEER_SILENT`` seconds; and in any case
after the gang's timeout. The node that gives up writes an ``abort`` file beside the
parts, so the others stop waiting too.
"""

import os
import socket
import time
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence

from .errors import CheckpointException
from .integrity import fields_by_blob
from .keys import CheckpointKey
from .locks import RENEW
from .manifest import Manifest, StorageLayout, utc_now_iso
from .option_names import OptionNames
from .gang_files import GangFiles
from .store_paths import ABORT

#: Default of how long a node waits for the rest of its gang in one save (seconds).
DEFAULT_TIMEOUT = 1800.0
#: A peer whose marker was not renewed for this long is taken for dead (seconds).
PEER_SILENT = 4 * RENEW
#: Polling: first interval, longest interval, and how often peers are looked at (s).
POLL_FIRST, POLL_MAX, WATCH_EVERY = 0.005, 0.1, 1.0


class GangSaveFailed(CheckpointException):
    """A node of a gang could not complete a global checkpoint (a peer died or stalled)."""

    headline = "Gang checkpoint failed"

    def __init__(self, msg: str, why: str = ""):
        super().__init__(msg)
        self.why = why


@dataclass(frozen=True)
class Gang:
    """Where a task sits in a gang: its node, the gang's size, and its control task."""

    node_index: int
    num_nodes: int
    control_task_id: str
    timeout: float = DEFAULT_TIMEOUT
    #: What messages call the timeout (the plugins: the setting that sets it).
    timeout_name: str = OptionNames.gang_timeout

    def __post_init__(self):
        if not 0 <= self.node_index < self.num_nodes:
            raise CheckpointException(
                "Node index %r is outside a gang of %r nodes." % (self.node_index, self.num_nodes)
            )


class PeerWatch:
    """Tells whether the peers a node waits for are still alive, from their markers."""

    def __init__(self, store, key: CheckpointKey, gang: Gang):
        self._files = GangFiles(store)
        self._key = key
        self._gang = gang
        self._seen: Dict[int, tuple] = {}  # node -> (marker mtime, monotonic time it last moved)
        self._owner: Dict[int, tuple] = {}  # node -> (host, pid) its marker names

    def problem(self, nodes: Sequence[int]) -> Optional[str]:
        """Why one of ``nodes`` will never get there, or None while all may still."""
        markers, ended = self._files.node_markers(self._key, self._gang.num_nodes)
        now = time.monotonic()
        for node in nodes:
            if node in ended:
                return "node %d's task ended without this save" % node
            marker = markers.get(node)
            if marker is None:
                if node in self._seen:
                    return "node %d's marker is gone (its task ended)" % node
                continue  # not started yet: the timeout bounds that
            last = self._seen.get(node)
            if last is None or last[0] != marker.mtime:
                self._seen[node] = (marker.mtime, now)
            elif now - last[1] > PEER_SILENT:
                return "node %d has not renewed its marker for %.0f s" % (node, now - last[1])
            owner = self._owner.get(node)
            if owner is None:
                owner = self._owner[node] = self._files.node_marker_owner(marker.path)
            if owner is not None and owner[0] == socket.gethostname() and not _running(owner[1]):
                return "node %d's process (pid %d on this host) is gone" % (node, owner[1])
        return None


class GangMember:
    """One node's side of the gang commit protocol, for one task attempt."""

    def __init__(self, store, gang: Gang, flow: str, run_id: str, step: str, task_id: str, attempt: int):
        self.gang = gang
        self._store = store
        self._files = GangFiles(store)
        self._flow, self._run_id, self._step, self._task_id = flow, run_id, step, task_id
        self._attempt = attempt
        self._marker = None

    @property
    def commits(self) -> bool:
        """Whether this node writes the global manifest (node 0 does)."""
        return self.gang.node_index == 0

    def join(self) -> None:
        """At task start: point this node's task at the gang's checkpoints and hold the
        node's marker while the task runs."""
        g = self.gang
        if g.node_index != 0:
            self._files.write_pointer(self._flow, self._run_id, self._step, self._task_id, g)
        self._marker = self._files.hold_node_marker(
            self._flow, self._run_id, self._step, g.control_task_id, self._attempt, g.node_index
        )

    def leave(self) -> None:
        if self._marker is not None:
            self._files.end_node_marker(self._marker)
            self._marker = None

    def commit(self, key: CheckpointKey, part: Manifest) -> Manifest:
        """Write this node's part of checkpoint ``key``; return the global manifest once
        committed. Called under this node's save lease."""
        g = self.gang
        part = replace(part, gang={"node": g.node_index, "num_nodes": g.num_nodes})
        self._files.commit_part(key, g.node_index, part)
        watch = PeerWatch(self._store, key, g)
        try:
            if self.commits:
                parts = self._wait_for_parts(key, part, watch)
                manifest = global_manifest(parts)
                self._store.commit(key, manifest)
                return manifest
            self._wait_for_global(key, watch)
            return self._store.read_manifest(key)
        except GangSaveFailed as ex:
            self._files.abort(key, g.node_index, "node %d %s" % (g.node_index, ex.why))
            raise

    def _wait_for_parts(self, key: CheckpointKey, own: Manifest, watch: PeerWatch) -> List[Manifest]:
        others = [n for n in range(self.gang.num_nodes) if n != self.gang.node_index]

        def done():
            present = self._files.parts(key)
            if ABORT in present:
                self._fail(key, "another node gave up: %s" % self._files.abort_reason(key))
            missing = [n for n in others if n not in present]
            return None if missing else True, missing

        self._wait(key, done, watch, "the parts of node(s) %s")
        parts = {self.gang.node_index: own}
        for node in others:
            parts[node] = self._files.read_part(key, node)
            saved_by = (parts[node].gang or {}).get("num_nodes")
            if saved_by != self.gang.num_nodes:
                self._fail(key, "node %d saved as part of a gang of %r nodes, not %d" % (
                    node, saved_by, self.gang.num_nodes))
        return [parts[n] for n in range(self.gang.num_nodes)]

    def _wait_for_global(self, key: CheckpointKey, watch: PeerWatch) -> None:
        def done():
            if self._store.manifest_exists(key):
                return True, []
            if ABORT in self._files.parts(key):
                self._fail(key, "another node gave up: %s" % self._files.abort_reason(key))
            return None, [0]

        self._wait(key, done, watch, "node(s) %s to commit")

    def _wait(self, key, done, watch: PeerWatch, waiting_for: str) -> None:
        deadline = time.monotonic() + self.gang.timeout
        pause, next_watch = POLL_FIRST, time.monotonic() + WATCH_EVERY
        while True:
            finished, missing = done()
            if finished:
                return
            now = time.monotonic()
            if now >= next_watch:
                problem = watch.problem(missing)
                if problem is not None:
                    self._fail(key, "waiting for %s, %s" % (waiting_for % _nodes(missing), problem))
                next_watch = now + WATCH_EVERY
            if now >= deadline:
                self._fail(
                    key,
                    "waited %.0f s for %s (the gang timeout, %s)"
                    % (self.gang.timeout, waiting_for % _nodes(missing), self.gang.timeout_name),
                )
            time.sleep(pause)
            pause = min(pause * 2, POLL_MAX)

    def _fail(self, key: CheckpointKey, why: str) -> None:
        raise GangSaveFailed(
            "Checkpoint %s of the %d-node gang of step *%s* was not committed: %s. Every "
            "node must call save() at the same points with the same name; the gang's "
            "previous checkpoint stays the newest, and the restarted gang resumes from it."
            % (key, self.gang.num_nodes, key.step, why),
            why=why,
        )


def global_manifest(parts: List[Manifest]) -> Manifest:
    """The global manifest of a gang save from its parts (node order): node 0's public
    part (its fields and files are what the notebook client loads by default), totals
    over the parts, each part's fields (and files), and the blobs of them all."""
    blobs: Dict[str, int] = {}
    blob_fields: Dict[str, List[str]] = {}
    for node, part in enumerate(parts):
        blobs.update(part.storage.blobs)
        for digest, names in fields_by_blob(part).items():
            held = blob_fields.setdefault(digest, [])
            held.extend("%s (node %d)" % (name, node) for name in names)
    gang = {
        "num_nodes": len(parts),
        "parts": [
            dict(
                {
                    "node": node,
                    "fields": part.fields,
                    "size": part.size,
                    "bytes_written": part.bytes_written,
                    "metadata": part.metadata,
                },
                **({"files": part.files} if part.has_folder else {}),
            )
            for node, part in enumerate(parts)
        ],
    }
    return replace(
        parts[0],
        created_on=utc_now_iso(),
        size=sum(part.size for part in parts),
        bytes_written=sum(part.bytes_written for part in parts),
        bytes_referenced=sum(part.bytes_referenced for part in parts),
        gang=gang,
        storage=StorageLayout(blobs=blobs, blob_fields=blob_fields),
    )


def part_to_load(store, manifest: Manifest, node_index: Optional[int]) -> Manifest:
    """The manifest whose fields a node loads: the checkpoint itself, or for a gang
    checkpoint the part of ``node_index`` (None: node 0's)."""
    gang = manifest.gang
    if gang is None:
        return manifest
    node = 0 if node_index is None else node_index
    if not 0 <= node < gang["num_nodes"]:
        raise CheckpointException(
            "Checkpoint %s was saved by a gang of %d nodes; node %d has no part of it%s."
            % (
                manifest.key,
                gang["num_nodes"],
                node,
                " (did the gang grow since?)" if node >= gang["num_nodes"] else "",
            )
        )
    return GangFiles(store).read_part(CheckpointKey.parse(manifest.key), node)


def _nodes(nodes: Sequence[int]) -> str:
    return ", ".join(str(n) for n in nodes)


def _running(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (a zombie, killed but not yet reaped
    by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
