"""Building a CheckpointStore on the datastore a run uses."""

import os

from ..engine.backends import LocalDirBackend, MetaflowStorageBackend
from ..engine.store import CheckpointStore

#: Set to 0 to skip fsync on the local datastore (faster; a machine crash, not a
#: process crash, may then lose the newest checkpoints).
FSYNC_ENV = "METAFLOW_CHECKPOINT_FSYNC"


def store_for_datastore(flow_datastore) -> CheckpointStore:
    """The checkpoint store living under a run's ``flow_datastore`` root."""
    return _store_for_storage(flow_datastore._storage_impl)


def _store_for_storage(storage_impl) -> CheckpointStore:
    # On the local datastore the store writes the directory itself (atomic renames,
    # fsync, reads straight into tensors); on S3, Azure or GCS it goes through
    # Metaflow's storage layer, with Metaflow's own credentials and endpoints.
    if storage_impl.TYPE == "local":
        backend = LocalDirBackend(storage_impl.datastore_root)
    else:
        backend = MetaflowStorageBackend(storage_impl)
    return CheckpointStore(backend, durable=os.environ.get(FSYNC_ENV, "1") != "0")


def store_from_config(datastore_type: str = None, datastore_root: str = None) -> CheckpointStore:
    """The checkpoint store of the datastore Metaflow is configured with in this process.

    ``datastore_type`` ("local", "s3", ...) and ``datastore_root`` override the
    configuration (METAFLOW_DEFAULT_DATASTORE, METAFLOW_DATASTORE_SYSROOT_*).
    """
    from metaflow.metaflow_config import DEFAULT_DATASTORE
    from metaflow.plugins import DATASTORES

    from ..engine.errors import CheckpointException

    wanted = datastore_type or DEFAULT_DATASTORE
    impls = [impl for impl in DATASTORES if impl.TYPE == wanted]
    if not impls:
        raise CheckpointException(
            "Unknown datastore %r; this Metaflow knows %s."
            % (wanted, ", ".join(sorted(impl.TYPE for impl in DATASTORES)))
        )
    impl = impls[0]
    root = datastore_root or impl.get_datastore_root_from_config(lambda *_: None, create_on_absent=False)
    if not root:
        raise CheckpointException(
            "No %s datastore is configured here (for local runs, run from the directory "
            "that holds .metaflow, or set METAFLOW_DATASTORE_SYSROOT_LOCAL)." % wanted
        )
    return _store_for_storage(impl(root))
