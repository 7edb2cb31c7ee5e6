"""Gang checkpoints, engine level: the nodes of a multi-node step as threads and processes
sharing one store, without a flow (test_gang_flow.py runs real @parallel gangs)."""

import os
import signal
import subprocess
import sys
import threading

import pytest
import torch

from conftest import REPO
from engine_helpers import State
from s3_server import any_store, s3_server  # noqa: F401  (fixtures)
from metaflow_extensions.implicit_checkpoint.engine.backends import LocalDirBackend
from metaflow_extensions.implicit_checkpoint.engine.gang import Gang, GangSaveFailed
from metaflow_extensions.implicit_checkpoint.engine.gc import collect_garbage
from metaflow_extensions.implicit_checkpoint.engine.session import (
    AttributeSource,
    CheckpointSession,
    TaskIdentity,
)
from metaflow_extensions.implicit_checkpoint.engine.gang_files import GangFiles
from metaflow_extensions.implicit_checkpoint.engine.store import CheckpointStore

NODE_TASKS = ("7", "7_node_1")


def node_session(root, node, state, attempt=0, timeout=60.0, num_nodes=2, directory=None):
    """The session of node ``node`` of a gang whose control task is 7, on its own store
    of ``root`` (a folder, or a function making a store: the any_store fixture) (with
    ``directory``: the node's task folder)."""
    task = TaskIdentity(
        "UnitFlow", "1", "train", NODE_TASKS[node], attempt,
        gang=Gang(node, num_nodes, "7", timeout),
    )
    session = CheckpointSession(
        root() if callable(root) else CheckpointStore(LocalDirBackend(str(root))),
        task,
        AttributeSource(lambda: dict(vars(state))),
        target=state,
        directory=directory,
    )
    session.start()
    return session


def in_thread(action):
    """Run ``action`` in a thread; return a function that joins it and gives its result
    (or raises its exception)."""
    outcome = {}

    def run():
        try:
            outcome["value"] = action()
        except BaseException as ex:  # noqa: B902 - handed to the joining test
            outcome["error"] = ex

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join(timeout=60):
        thread.join(timeout)
        assert not thread.is_alive(), "the node is still waiting after %d s" % timeout
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    return join


def node_states():
    replicated = torch.randn(256, 256)  # DDP-like: the same bytes on every node
    states = []
    for node in range(2):
        state = State()
        state.weights = replicated.clone()
        state.shard = torch.full((1000,), float(node))
        state.step = 0
        states.append(state)
    return states


def test_a_gang_save_is_one_checkpoint_with_a_part_per_node(any_store):
    states = node_states()
    sessions = [node_session(any_store, node, states[node]) for node in range(2)]
    for step in (1, 2):
        for state in states:
            state.step = step
            state.shard += 1
        joins = [in_thread(lambda s=s, step=step: s.save(metadata={"step": step})) for s in sessions]
        saved = [join() for join in joins]
        assert saved[0].key == saved[1].key  # one global checkpoint, the same for both

    for session in sessions:
        listed = session.list()
        assert [a.metadata["step"] for a in listed] == [1, 2]
        assert [a.key for a in listed] == [a.key for a in sessions[0].list()]
    artifact = sessions[0].list()[-1]
    assert artifact.pathspec == "UnitFlow/1/train/7"
    manifest = sessions[1].inspect(artifact)
    assert manifest["gang"]["num_nodes"] == 2
    assert [sorted(part["fields"]) for part in manifest["gang"]["parts"]] == [["shard", "step", "weights"]] * 2
    assert manifest["size"] == sum(part["size"] for part in manifest["gang"]["parts"])
    # The replicated weights are stored once: the second node's part reused them.
    weights_bytes = 256 * 256 * 4
    written = [part["bytes_written"] for part in manifest["gang"]["parts"]]
    assert sum(written) < 2 * weights_bytes
    for session in sessions:
        session.finish()

    # The restarted gang: each node loads its own part of the newest global checkpoint.
    fresh = [State(), State()]
    resumed = [node_session(any_store, node, fresh[node], attempt=1) for node in range(2)]
    for node, session in enumerate(resumed):
        assert session.loaded.key == artifact.key
        session.load()
        assert torch.equal(fresh[node].shard, torch.full((1000,), float(node) + 2))
        assert torch.equal(fresh[node].weights, states[0].weights)
        assert fresh[node].step == 2
        session.finish()


def test_background_gang_saves_commit_one_global_checkpoint_each(any_store):
    """save(blocking=False) on every node: each node's part is written in the background
    and the global checkpoint commits when the slower node's part is in."""
    states = node_states()
    sessions = [node_session(any_store, node, states[node]) for node in range(2)]
    expected = []
    for step in (1, 2, 3):
        for state in states:
            state.step = step
            state.shard += 1
        # Neither node waits for the other to return from save(): both go on at once.
        for session in sessions:
            session.save(metadata={"step": step}, blocking=False)
        expected.append([state.shard.clone() for state in states])
        for state in states:
            state.shard += 100  # training goes on while the parts are written
    for session in sessions:
        session.wait()
    listed = [session.list() for session in sessions]
    assert [a.metadata["step"] for a in listed[0]] == [1, 2, 3]
    assert [a.key for a in listed[0]] == [a.key for a in listed[1]]
    for session in sessions:
        session.finish()

    for version, artifact in enumerate(listed[0]):
        for node in range(2):
            loaded = State()
            reader = node_session(any_store, node, loaded, attempt=1)
            reader.load(artifact)
            assert torch.equal(loaded.shard, expected[version][node])
            assert loaded.step == version + 1
            reader.finish()


def test_a_node_whose_peer_never_saves_fails_after_the_gang_timeout(tmp_path):
    states = node_states()
    node0 = node_session(tmp_path, 0, states[0], timeout=1.0)
    node1 = node_session(tmp_path, 1, states[1], timeout=1.0)
    with pytest.raises(GangSaveFailed) as failure:
        node0.save()
    message = str(failure.value)
    assert "the parts of node(s) 1" in message and "(the gang timeout, Gang.timeout)" in message
    assert "previous checkpoint stays the newest" in message
    assert node0.list() == [] and node1.list() == []
    # The waiting node left word for the others: node 1's save of that point fails at once.
    with pytest.raises(GangSaveFailed, match="another node gave up: node 0 waited"):
        in_thread(node1.save)(timeout=30)


@pytest.mark.flow
def test_a_node_whose_peer_process_died_fails_without_waiting_out_the_timeout(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable, "-c",
            "import sys, time; sys.path.insert(0, %r); sys.path.insert(0, %r)\n"
            "from test_gang import node_session, State\n"
            "node_session(%r, 1, State())\n"
            "print('joined', flush=True); time.sleep(600)"
            % (str(REPO / "tests"), str(REPO), str(tmp_path)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "joined"
    os.kill(holder.pid, signal.SIGKILL)  # node 1 dies; its marker stays behind
    holder.wait()
    state = node_states()[0]
    node0 = node_session(tmp_path, 0, state, timeout=600)
    with pytest.raises(GangSaveFailed, match=r"node 1's process \(pid %d on this host\) is gone" % holder.pid):
        in_thread(node0.save)(timeout=30)
    assert node0.list() == []


def test_a_node_whose_peer_ended_its_task_fails_at_once(tmp_path):
    states = node_states()
    node0 = node_session(tmp_path, 0, states[0], timeout=600)
    node1 = node_session(tmp_path, 1, states[1], timeout=600)
    node1.finish()  # node 1's step returned without this save
    with pytest.raises(GangSaveFailed, match="node 1's task ended"):
        in_thread(node0.save)(timeout=30)


def test_gc_never_deletes_a_part_waiting_for_the_global_commit(tmp_path):
    states = node_states()
    node0 = node_session(tmp_path, 0, states[0])
    node1 = node_session(tmp_path, 1, states[1])
    waiting = in_thread(node1.save)  # node 1 writes its part, then waits for node 0
    store = CheckpointStore(LocalDirBackend(str(tmp_path)))
    while not GangFiles(store).parts(_first_key()):
        pass
    report = collect_garbage(store, "UnitFlow", grace=0, wait=1.0)
    assert report.busy and not report.deleted_blobs  # node 1's lease holds gc off
    node0.save()
    waiting()
    fresh = State()
    resumed = node_session(tmp_path, 1, fresh, attempt=1)
    resumed.load()
    assert torch.equal(fresh.shard, states[1].shard)


def _first_key():
    from metaflow_extensions.implicit_checkpoint.engine.keys import CheckpointKey

    return CheckpointKey("UnitFlow", "1", "train", "7", 0, "checkpoint", 1)


def test_gc_removes_the_parts_of_a_gang_save_that_never_committed(tmp_path):
    states = node_states()
    node0 = node_session(tmp_path, 0, states[0], timeout=600)
    node1 = node_session(tmp_path, 1, states[1], timeout=1.0)
    joins = [in_thread(node0.save), in_thread(node1.save)]  # the global checkpoint 1
    for join in joins:
        join()
    node1.finish()  # node 1's task ends; node 0 saves once more, alone
    with pytest.raises(GangSaveFailed):
        in_thread(node0.save)(timeout=30)
    store = CheckpointStore(LocalDirBackend(str(tmp_path)))
    parts = [p for p in tmp_path.rglob("*.part")]
    assert len(parts) == 3  # two of checkpoint 1, node 0's of the one that failed
    report = collect_garbage(store, "UnitFlow", grace=0)
    assert sorted(p.name for p in tmp_path.rglob("*.part")) == ["0.part", "1.part"]
    assert report.deleted_temp_files >= 1
    fresh = State()
    resumed = node_session(tmp_path, 0, fresh, attempt=1)
    resumed.load()
    assert torch.equal(fresh.shard, states[0].shard)


def test_each_node_restores_its_own_folder_from_its_part(tmp_path):
    folders = [tmp_path / ("folder%d" % node) for node in range(2)]
    for node, folder in enumerate(folders):
        (folder / "ckpt").mkdir(parents=True)
        (folder / "ckpt" / "shard.bin").write_bytes(bytes([node]) * 100_000)
    states = node_states()
    sessions = [node_session(tmp_path, n, states[n], directory=str(folders[n])) for n in range(2)]
    joins = [in_thread(sessions[n].save) for n in range(2)]
    saved = [join() for join in joins]
    assert saved[0].key == saved[1].key
    assert set(saved[0].implicit_manifest["files"]) == {"ckpt/shard.bin"}  # node 0's
    for session in sessions:
        session.finish()

    restored = [tmp_path / ("restored%d" % node) for node in range(2)]
    retries = [node_session(tmp_path, n, State(), attempt=1, directory=str(restored[n])) for n in range(2)]
    for node, session in enumerate(retries):
        session.load()
        assert (restored[node] / "ckpt" / "shard.bin").read_bytes() == bytes([node]) * 100_000
        session.finish()
