"""@checkpoint in the branches of a foreach, in real flows: load_policy="eager" resumes each
branch from the checkpoint of the same foreach index in the earlier run (not from a
sibling's, even a newer one), and data the siblings share is stored once."""

import pytest

from conftest import TEST_FLOWS
from engine_helpers import blob_bytes_on_disk

pytestmark = pytest.mark.flow

FLOW = TEST_FLOWS / "foreach_flow.py"

BRANCHES = """
import json
from metaflow import Flow, namespace
namespace(None)
run = Flow("ForeachFlow")[%r]
print(json.dumps(sorted(
    [t.index, t.data.shard, t.data.resumed_from, t.data.resumed_shard, t.data.rounds,
     t.pathspec.split("/", 1)[1]]
    for t in run["train"]
)))
"""

BASE_BYTES = 8 * 1024 * 1024


def test_eager_resumes_each_branch_from_its_own_index_and_siblings_share_blobs(world):
    # One branch at a time: the newest checkpoint of the step is then always the last
    # branch's, which a resume that ignored the foreach index would pick for every branch.
    world.run_flow(FLOW, "--max-workers", "1")
    run1 = world.latest_run_id("ForeachFlow")
    first = world.python(BRANCHES % run1)
    assert [(b[0], b[1], b[2], b[4]) for b in first] == [(0, 10, None, 1), (1, 20, None, 1), (2, 30, None, 1)]

    # Three siblings saved the same 8 MiB: stored once.
    stored = blob_bytes_on_disk(world.datastore_root)
    assert BASE_BYTES <= stored < 1.5 * BASE_BYTES

    world.run_flow(FLOW, "--max-workers", "1")
    run2 = world.latest_run_id("ForeachFlow")
    second = world.python(BRANCHES % run2)
    run1_tasks = {b[0]: b[5] for b in first}
    for index, value, resumed_from, resumed_shard, rounds, _ in second:
        assert resumed_shard == value, second  # its own branch's data, not a sibling's
        assert "/%s/" % run1_tasks[index] in "/%s/" % resumed_from.split("/", 1)[1], (index, resumed_from)
        assert rounds == 2
    # The second run changed nothing but metadata: still one copy of the shared data.
    assert blob_bytes_on_disk(world.datastore_root) < 1.5 * BASE_BYTES
