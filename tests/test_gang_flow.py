"""Real @parallel gangs: 2 nodes training a DDP model over gloo, a node SIGKILLed after a
save and during one; the restarted gang resumes every node from the same global
checkpoint and ends bit-identical to a gang that never failed. On local disk: test_gang.py
runs the commit protocol on S3, test_torchrun.py a @torchrun gang on S3."""

import os
import sys

import pytest

from conftest import TEST_FLOWS, MetaflowWorld

pytestmark = pytest.mark.flow

FLOW = TEST_FLOWS / "gang_flow.py"

# Node 1 is started by node 0 as a bare `python`: the test's interpreter must come first.
VENV_PATH = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

NOTEBOOK = """
import hashlib
import json
from metaflow import Checkpoint, Run, namespace
namespace(None)
run = Run("GangFlow/%s")
train = {t.id: t for t in run["train"]}
control = next(i for i in train if "_node_" not in i)
node1 = next(i for i in train if "_node_" in i)
cp = Checkpoint()
in_run = cp.list(run=run.pathspec)
newest = in_run[-1]
manifest = cp.inspect(newest)
shards = [cp.load(newest, fields=["shard"], node=n)["shard"] for n in (0, 1)]
finals = run["join"].task.data.finals
print(json.dumps({
    "run_keys": [a.key for a in in_run],
    "control_keys": [a.key for a in cp.list(task=train[control])],
    "node1_keys": [a.key for a in cp.list(task=train[node1])],
    "parts": [sorted(p["fields"]) for p in manifest["gang"]["parts"]],
    "shards_bit_identical": [
        hashlib.sha256(shards[n].numpy().tobytes()).hexdigest() == finals[n]["shard"] for n in (0, 1)
    ],
    "listed_by_nodes": run["join"].task.data.listed,
}))
"""


def gang_world(world: MetaflowWorld) -> MetaflowWorld:
    world.env["PATH"] = VENV_PATH
    return world


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """A gang that never fails: what every resumed gang must end as."""
    root = tmp_path_factory.mktemp("reference") / "mf"
    root.mkdir()
    world = gang_world(MetaflowWorld(root))
    world.run_flow(FLOW)
    return world, world.latest_run_id("GangFlow")


def bit_identical(world, reference_run, run_id):
    """Per node and final value, whether this run ended exactly as the reference."""
    reference, mine = _finals_file(*reference_run), _finals_file(world, run_id)
    return world.python(
        """
        import json, torch
        a, b = torch.load(%r), torch.load(%r)

        def same(x, y):
            if isinstance(x, torch.Tensor):
                return x.dtype == y.dtype and torch.equal(x, y)
            if isinstance(x, (list, tuple)):
                return len(x) == len(y) and all(same(p, q) for p, q in zip(x, y))
            return x == y

        result = {str(r): {n: same(a[r][n], b[r][n]) for n in a[r]} for r in a}
        result["shards_differ"] = not same(a[0]["shard"], a[1]["shard"])
        print(json.dumps(result))
        """
        % (reference, mine)
    )


def _finals_file(world, run_id):
    """The join step's ``finals`` of a run, saved with torch.save to a file."""
    path = str(world.root / ("finals-%s.pt" % run_id))
    world.python(
        """
        import json, torch
        from metaflow import Run, namespace
        namespace(None)
        torch.save(Run("GangFlow/%s")["join"].task.data.finals, %r)
        print(json.dumps(%r))
        """
        % (run_id, path, path)
    )
    return path


def assert_all_identical(result):
    assert result.pop("shards_differ")  # each node's shard really is its own
    assert result == {
        rank: {name: True for name in ("weights", "momentum", "lr", "shard", "shard_ema", "rng")}
        for rank in ("0", "1")
    }


# Background saves (blocking=False): the flow's --background; test_gang.py tests them.
def test_node_killed_after_a_save_gang_resumes_bit_identical(world, reference_run):
    world = gang_world(world)
    proc = world.run_flow(FLOW, "--kill-node", "1", "--kill-after", "3")
    assert "Task is starting (retry)" in proc.stdout
    run_id = world.latest_run_id("GangFlow")
    key3 = "GangFlow/%s/train/" % run_id
    assert "node 0 resumed after epoch 3" in proc.stdout
    assert "node 1 resumed after epoch 3" in proc.stdout
    assert_all_identical(bit_identical(world, reference_run, run_id))

    view = world.python(NOTEBOOK % run_id)
    # One checkpoint per global save, listed once in the run and alike from every node.
    assert len(view["run_keys"]) == 5 and all(k.startswith(key3) for k in view["run_keys"])
    assert view["control_keys"] == view["run_keys"] == view["node1_keys"]
    assert [k.rsplit("/", 3)[-3] for k in view["run_keys"]] == ["0", "0", "0", "1", "1"]  # attempts
    listed = view["listed_by_nodes"]
    assert listed["0"] == listed["1"] and [row[1] for row in listed["0"]] == [1, 2, 3, 4, 5]
    fields = ["epoch", "model", "optimizer", "resumed_from", "scheduler", "shard", "shard_ema"]
    assert view["parts"] == [fields, fields]
    assert view["shards_bit_identical"] == [True, True]


def test_node_killed_during_a_large_save_gang_resumes_from_the_previous_global_checkpoint(world):
    world = gang_world(world)
    proc = world.run_flow(FLOW, "--kill-node", "1", "--kill-during", "4", "--shard-mb", "64")
    run_id = world.latest_run_id("GangFlow")
    # Node 0 was waiting for node 1's part: it failed at once, naming why.
    assert "node 1's process (pid" in proc.stdout and "is gone" in proc.stdout
    assert "was not committed" in proc.stdout
    assert "node 0 resumed after epoch 3" in proc.stdout
    assert "node 1 resumed after epoch 3" in proc.stdout
    view = world.python(NOTEBOOK % run_id)
    assert [k.rsplit("/", 3)[-3] for k in view["run_keys"]] == ["0", "0", "0", "1", "1"]
    assert view["shards_bit_identical"] == [True, True]
