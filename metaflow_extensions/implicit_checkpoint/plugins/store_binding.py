"""Building a CheckpointStore on the datastore a run uses."""

import os

from ..engine.backends import LocalDirBackend, MetaflowStorageBackend
from ..engine.store import CheckpointStore

#: Set to 0 to skip fsync on the local datastore (faster; a machine crash, not a
#: process crash, may then lose the newest checkpoints).
FSYNC_ENV = "METAFLOW_CHECKPOINT_FSYNC"


def store_for_datastore(flow_datastore) -> CheckpointStore:
    """The checkpoint store living under ``flow_datastore``'s root.

    On the local datastore the store writes the directory itself (atomic renames,
    fsync, reads straight into tensors); on S3, Azure or GCS it goes through Metaflow's
    storage layer with Metaflow's own credentials and endpoints.
    """
    if flow_datastore.TYPE == "local":
        backend = LocalDirBackend(flow_datastore.datastore_root)
    else:
        backend = MetaflowStorageBackend(flow_datastore._storage_impl)
    return CheckpointStore(backend, durable=os.environ.get(FSYNC_ENV, "1") != "0")
