"""Metaflow settings the checkpoint store follows, observed through real flows:
METAFLOW_CHECKPOINT_FSYNC=0 (no fsync of checkpoint files), METAFLOW_S3_RETRY_COUNT
(how many times a failing S3 request is retried) and METAFLOW_S3_SERVER_SIDE_ENCRYPTION
(every checkpoint object encrypted at rest, on the moto server)."""

import pytest
from conftest import TEST_FLOWS
from s3_fault_proxy import FaultProxy
from s3_server import S3World, s3_server, s3_world  # noqa: F401  (fixtures)

pytestmark = pytest.mark.flow

#: The flow counts the fsync / fdatasync calls made on checkpoint files in its task process.
FSYNC_FLOW = TEST_FLOWS / "settings_flow.py"

NEWEST = """
import json
from metaflow import Checkpoint, Flow, namespace
namespace(None)
task = Flow("SettingsFlow").latest_run["start"].task
newest = Checkpoint().list(task=task)[-1]
print(json.dumps({"synced": task.data.synced, "key": newest.key,
                  "weights": Checkpoint().load(newest, fields=["weights"])["weights"][-1]}))
"""


def test_fsync_zero_turns_off_every_fsync_of_checkpoint_files(world):
    flow = FSYNC_FLOW
    world.run_flow(flow)
    durable = world.python(NEWEST)
    assert durable["synced"] > 0 and durable["weights"] == 4999

    world.env["METAFLOW_CHECKPOINT_FSYNC"] = "0"
    world.run_flow(flow)
    fast = world.python(NEWEST)
    assert fast["key"] != durable["key"]
    assert fast["synced"] == 0 and fast["weights"] == 4999


@pytest.mark.s3
def test_server_side_encryption_setting_encrypts_every_checkpoint_object(s3_world):
    s3_world.env["METAFLOW_S3_SERVER_SIDE_ENCRYPTION"] = "AES256"
    s3_world.run_flow(FSYNC_FLOW)
    keys = s3_world.checkpoint_keys()
    assert any("/blobs/" in k for k in keys) and any(k.endswith(".manifest") for k in keys)
    client = s3_world.server.client()
    prefix = s3_world.s3_root[len("s3://%s/" % s3_world.server.bucket):]
    encryption = {
        k: client.head_object(Bucket=s3_world.server.bucket, Key="%s/%s" % (prefix, k)).get("ServerSideEncryption")
        for k in keys
    }
    assert set(encryption.values()) == {"AES256"}, encryption


@pytest.mark.s3
def test_s3_retry_count_is_how_often_a_failing_request_is_retried(s3_server, tmp_path):
    flow = FSYNC_FLOW
    host = s3_server.endpoint.split("://")[1]
    # Every checkpoint request fails twice in a row, then goes through: it takes 3 tries.
    with FaultProxy(host, share=1.0, faults=("503",), max_consecutive=2, only="_implicit_checkpoints") as proxy:
        outcomes = {}
        for retries in ("1", "2"):
            root = tmp_path / ("retries-" + retries)
            root.mkdir()
            world = S3World(root, s3_server, endpoint=proxy.endpoint)
            world.env["METAFLOW_S3_RETRY_COUNT"] = retries
            outcomes[retries] = world.run_flow(flow, check=False)
    too_few = outcomes["1"]
    assert too_few.returncode != 0
    assert "SlowDown" in too_few.stdout or "503" in too_few.stdout, too_few.stdout[-3000:]
    assert outcomes["2"].returncode == 0, outcomes["2"].stdout[-3000:]
    assert proxy.failures["503"] > 0


def test_settings_come_from_metaflows_config_file_and_a_bad_one_fails_before_any_task(world):
    flow = FSYNC_FLOW
    # Metaflow's own config file (METAFLOW_HOME/config.json) carries the setting too.
    (world.root / "config.json").write_text('{"METAFLOW_CHECKPOINT_FSYNC": "0"}')
    world.run_flow(flow)
    assert world.python(NEWEST)["synced"] == 0

    world.env["METAFLOW_CHECKPOINT_GANG_TIMEOUT"] = "soon"
    proc = world.run_flow(flow, check=False)
    assert proc.returncode != 0 and "Task is starting" not in proc.stdout
    assert "METAFLOW_CHECKPOINT_GANG_TIMEOUT='soon' is not valid" in proc.stdout


def test_the_engines_messages_name_the_settings_a_flow_sets(tmp_path, caplog):
    """The engine knows its options by their own names; in a flow, its messages name the
    METAFLOW_CHECKPOINT_* setting to change instead."""
    from dataclasses import replace

    import numpy as np
    from engine_helpers import State, local_store, make_session
    from metaflow_extensions.implicit_checkpoint.engine.gang import Gang
    from metaflow_extensions.implicit_checkpoint.plugins.settings import SETTING_NAMES, settings

    options = replace(settings().session, staging_bytes=1000)
    state = State()
    state.weights = np.zeros(10_000)
    session = make_session(local_store(tmp_path), state, options=options)
    with caplog.at_level("WARNING"):
        session.save(blocking=False)  # more bytes than the staging budget: saved synchronously
    session.finish()
    assert "METAFLOW_CHECKPOINT_STAGING_BYTES=1000" in caplog.text
    assert options.names.sigterm_wait == "METAFLOW_CHECKPOINT_SIGTERM_WAIT"
    assert options.names.preemption_grace == "METAFLOW_CHECKPOINT_PREEMPTION_GRACE"
    assert Gang(0, 2, "1").timeout_name == "Gang.timeout"
    assert SETTING_NAMES.gang_timeout == "METAFLOW_CHECKPOINT_GANG_TIMEOUT"
