"""Building a CheckpointStore on the datastore a run uses."""

from typing import Optional

from ..engine.backends import LocalDirBackend, StorageBackend
from ..engine.store import CheckpointStore
from .metaflow_internals import configured_datastore, datastore_implementations, s3_client, s3_settings, storage_of
from .metaflow_storage import MetaflowStorageBackend
from .settings import settings

def store_for_datastore(flow_datastore) -> CheckpointStore:
    """The checkpoint store living under a run's ``flow_datastore`` root."""
    return _store_for_storage(storage_of(flow_datastore))


#: Blobs a store on S3 reads or writes at once (each may fan out into parallel parts).
S3_BLOB_WORKERS = 8


def _store_for_storage(storage_impl) -> CheckpointStore:
    # On the local datastore the store writes the directory itself (atomic renames,
    # fsync, reads straight into tensors); on S3 it talks to S3 itself (parallel,
    # streaming, retried); on Azure or GCS it goes through Metaflow's storage layer.
    # All of them live under the datastore root, with Metaflow's own credentials.
    durable = settings().fsync
    workers = S3_BLOB_WORKERS if storage_impl.TYPE == "s3" else 4
    return CheckpointStore(backend_for_storage(storage_impl), durable=durable, workers=workers)


def backend_for_storage(storage_impl) -> StorageBackend:
    """Our backend on the root of one of Metaflow's datastore storages."""
    if storage_impl.TYPE == "local":
        return LocalDirBackend(storage_impl.datastore_root)
    if storage_impl.TYPE == "s3":
        return s3_backend(storage_impl.datastore_root)
    return MetaflowStorageBackend(storage_impl)


def s3_backend(datastore_root: str, client_params: Optional[dict] = None):
    """An S3Backend on ``datastore_root`` with a boto3 client built as Metaflow's S3
    datastore builds its own: Metaflow's AWS client provider, credentials and session
    variables, METAFLOW_S3_ENDPOINT_URL and the other client options, server-side
    encryption, and METAFLOW_S3_RETRY_COUNT retries.

    Metaflow's S3 datastore stages every object in a temp file and batches requests
    through subprocesses (see engine/s3_backend.py for what that cost); the backend
    makes the requests itself with this client. ``client_params`` (boto3 client
    arguments, e.g. ``endpoint_url``) are applied on top of Metaflow's.
    """
    from ..engine.s3_backend import RetryPolicy, S3Backend, client_config

    settings = s3_settings()
    params = dict(settings.client_params, **(client_params or {}))
    params["config"] = client_config(params.get("config"))
    return S3Backend(
        s3_client(params),
        datastore_root,
        retry=RetryPolicy(attempts=settings.retry_count + 1),
        encryption=settings.server_side_encryption,
    )


def store_from_config(datastore_type: str = None, datastore_root: str = None) -> CheckpointStore:
    """The checkpoint store of the datastore Metaflow is configured with in this process.

    ``datastore_type`` ("local", "s3", ...) and ``datastore_root`` override the
    configuration (METAFLOW_DEFAULT_DATASTORE, METAFLOW_DATASTORE_SYSROOT_*).
    """
    from ..engine.errors import CheckpointException

    wanted = datastore_type or configured_datastore()
    known = datastore_implementations()
    impls = [impl for impl in known if impl.TYPE == wanted]
    if not impls:
        raise CheckpointException(
            "Unknown datastore %r; this Metaflow knows %s."
            % (wanted, ", ".join(sorted(impl.TYPE for impl in known)))
        )
    impl = impls[0]
    root = datastore_root or impl.get_datastore_root_from_config(lambda *_: None, create_on_absent=False)
    if not root:
        raise CheckpointException(
            "No %s datastore is configured here (for local runs, run from the directory "
            "that holds .metaflow, or set METAFLOW_DATASTORE_SYSROOT_LOCAL)." % wanted
        )
    return _store_for_storage(impl(root))
