"""The files only gang saves (gang.py) write: each node's part, the abort notes, the
node markers and the pointer from a node's task to its gang's control task.

Where they live is in store_paths; how a part is checked and committed is the store's
(``CheckpointStore.write_checked_manifest``), so a part is held to the same checks as a
commit.
"""

from typing import Dict, List, Optional, Protocol, Tuple

from . import store_paths as paths
from .backends import StorageBackend, StoredFile
from .keys import CheckpointKey
from .locks import Locks, Marker, marker_owner
from .manifest import Manifest


class ManifestStore(Protocol):
    """What gang files need of the store (store.CheckpointStore): its backend and locks,
    and its checked manifest writes and cached reads."""

    backend: StorageBackend
    locks: Locks

    def write_checked_manifest(self, key: CheckpointKey, manifest: Manifest, path: str) -> None: ...

    def read_manifest_file(self, path: str, label: str, missing: str) -> Manifest: ...


def read_gang_pointer(backend: StorageBackend, flow: str, run_id: str, step: str, task_id: str) -> Optional[str]:
    """The control task of the gang ``task_id`` is a node of, or None."""
    try:
        text = backend.read(paths.gang_pointer_path(flow, run_id, step, task_id)).decode()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    control = text.split()[0] if text.split() else None
    return control if control != task_id else None


class GangFiles:
    """A gang's files in one store."""

    def __init__(self, store: ManifestStore):
        self._store = store
        self._backend = store.backend

    # -- parts -----------------------------------------------------------------------

    def commit_part(self, key: CheckpointKey, node: int, manifest: Manifest) -> None:
        """Write one node's part of gang checkpoint ``key``, checked as a commit is; the
        checkpoint exists only once node 0 commits the global manifest."""
        self._store.write_checked_manifest(key, manifest, paths.part_path(key, node))

    def read_part(self, key: CheckpointKey, node: int) -> Manifest:
        return self._store.read_manifest_file(
            paths.part_path(key, node),
            "%s (node %d's part)" % (key, node),
            "Checkpoint %s has no part of node %d" % (key, node),
        )

    def parts(self, key: CheckpointKey) -> set:
        """The nodes whose part of ``key`` is written, and ``ABORT`` if a node gave up."""
        found = set()
        for name, is_dir in self._backend.list_dir(paths.parts_dir(key)):
            if is_dir:
                continue
            if name.startswith(paths.ABORT):
                found.add(paths.ABORT)
            elif paths.part_node(name) is not None:
                found.add(paths.part_node(name))
        return found

    def abort(self, key: CheckpointKey, node: int, reason: str) -> None:
        """Tell the other nodes that ``node`` gave up on checkpoint ``key``."""
        try:
            self._backend.write(paths.abort_path(key, node), [reason.encode()], durable=False)
        except Exception:
            pass  # the others find out from this node's marker, or their timeout

    def abort_reason(self, key: CheckpointKey) -> str:
        folder = paths.parts_dir(key)
        for name, is_dir in sorted(self._backend.list_dir(folder)):
            if not is_dir and name.startswith(paths.ABORT):
                try:
                    return self._backend.read("%s/%s" % (folder, name)).decode(errors="replace")
                except FileNotFoundError:
                    continue
        return "no reason given"

    def files_without_commit(self, flow: str, committed: set, cutoff: float) -> List[str]:
        """Parts (and abort notes) of gang saves that never committed (a node died), last
        modified before ``cutoff``: ``committed`` holds the keys of the committed
        checkpoints (text), read under the deleter's lock."""
        found = []
        for entry in self._backend.walk_files(paths.tasks_dir(flow)):
            if entry.mtime >= cutoff:
                continue
            listed = paths.parse_task_file(flow, entry.path)
            if listed is not None and listed.kind == paths.PART and str(listed.key) not in committed:
                found.append(entry.path)
        return found

    # -- node markers ----------------------------------------------------------------

    def hold_node_marker(
        self, flow: str, run_id: str, step: str, control_task_id: str, attempt: int, node: int
    ) -> Marker:
        """The marker that tells a gang's other nodes this node's task is alive."""
        path = "%s/%d" % (paths.nodes_dir(flow, run_id, step, control_task_id, attempt), node)
        return self._store.locks.hold(path, "node %d" % node)

    def end_node_marker(self, marker: Marker) -> None:
        """At the end of a node's task: its marker is replaced by one saying it ended."""
        self._backend.write(marker.path + paths.ENDED_SUFFIX, [b""], durable=False)
        self._store.locks.release(marker)

    def node_markers(self, key: CheckpointKey, num_nodes: int) -> Tuple[Dict[int, StoredFile], set]:
        """The markers of the gang saving ``key``: those of live nodes, by node, and the
        nodes whose task ended."""
        top = paths.nodes_dir(key.flow, key.run_id, key.step, key.task_id, key.attempt)
        live, ended = {}, set()
        for entry in self._backend.walk_files(top):
            name = entry.path.rsplit("/", 1)[-1]
            node, _, suffix = name.partition(".")
            if node.isdigit() and int(node) < num_nodes:
                if not suffix:
                    live[int(node)] = entry
                elif "." + suffix == paths.ENDED_SUFFIX:
                    ended.add(int(node))
        return live, ended

    def node_marker_owner(self, path: str) -> Optional[Tuple[str, int]]:
        """``(host, pid)`` of the process holding a node marker, or None."""
        try:
            return marker_owner(self._backend.read(path).decode(errors="replace"))
        except FileNotFoundError:
            return None

    # -- a node's pointer to its gang ------------------------------------------------

    def write_pointer(self, flow: str, run_id: str, step: str, task_id: str, gang) -> None:
        """Note that task ``task_id`` is node ``gang.node_index`` of the gang whose
        checkpoints are kept under its control task."""
        text = "%s %d %d" % (gang.control_task_id, gang.node_index, gang.num_nodes)
        self._backend.write(
            paths.gang_pointer_path(flow, run_id, step, task_id), [text.encode()], durable=False
        )
