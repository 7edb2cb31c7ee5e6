"""Every private Metaflow API this extension touches, in one place.

Metaflow offers no public way to do these. Each is used as Metaflow 2.15.21 to 2.19
define it (``make test`` runs the example flow and the quick start on both ends); when
Metaflow changes one of them, this is the module to change.
"""

from types import SimpleNamespace
from typing import Any, Callable, List, Optional, Tuple

from metaflow import current

# Metaflow's CLI is built with its vendored click: an extension's commands must use it too.
from metaflow._vendor import click  # noqa: F401


def parent_artifact_names(flow: Any) -> list:
    """Names of the artifacts the task's parent steps left (readable on ``self``)."""
    parents = flow._datastore
    return [name for name, _ in parents.items()] if parents else []


def foreach_indices(flow: Any) -> Tuple[int, ...]:
    """The task's position in every enclosing foreach, outermost first."""
    return tuple(frame.index for frame in getattr(flow, "_foreach_stack", []) or [])


def num_parallel(flow: Any) -> int:
    """The size of a ``@parallel`` step's gang, as ``self.next(..., num_parallel=N)`` set it
    (0 when the flow object does not know it)."""
    return int(getattr(getattr(flow, "_parallel_ubf_iter", None), "num_parallel", 0) or 0)


def publish_on_current(name: str, value: Any) -> None:
    """Make ``current.<name>`` return ``value`` for the rest of the task."""
    current._update_env({name: value})


def placeholder_on_current(name: str, error: Callable[[], Exception]) -> None:
    """Until a task publishes ``current.<name>``, reading it raises ``error()`` (an
    AttributeError, so ``name in current`` stays False). ``current`` resolves attributes
    on its class: ``_update_env`` sets one property per name there, replacing this one.
    A property another package put there first is left alone."""
    cls = type(current)
    if name not in cls.__dict__:

        def fget(_self):
            raise error()

        setattr(cls, name, property(fget=fget))


def step_decorators_named(name: str) -> list:
    """The class paths every installed extension (and Metaflow) registers for the step
    decorator ``name``, in load order: Metaflow uses the last one."""
    from metaflow.extension_support import plugins

    return [path for plugin, path in getattr(plugins, "_all_step_decorators", []) if plugin == name]


def storage_of(datastore: Any) -> Any:
    """The storage object behind a flow or card datastore (``save_bytes``, ``load_bytes``,
    ``list_content``, ... relative to its ``datastore_root``)."""
    if hasattr(datastore, "_storage_impl"):
        return datastore._storage_impl
    return datastore._backend  # a CardDatastore


def storage_like(flow_datastore: Any, root: str) -> Any:
    """A storage of the same kind as the flow datastore's, on another root."""
    return type(flow_datastore._storage_impl)(root)


def datastore_shell(flow_datastore: Any, root: str) -> Any:
    """What Metaflow's card datastore takes as a flow datastore: a storage on ``root``
    and the flow's name (its card CLI builds the same)."""
    return SimpleNamespace(_storage_impl=storage_like(flow_datastore, root), flow_name=flow_datastore.flow_name)


def attach_step_decorators(step_function: Any, specs: list) -> None:
    """Add decorators to a step as ``--with`` does (``["card:type=...,id=..."]``)."""
    from metaflow.decorators import _attach_decorators_to_step

    _attach_decorators_to_step(step_function, specs)


def card_of_this_task(card_type: str, card_id: str) -> Tuple[Optional[str], Optional[Any]]:
    """``(uuid, runtime handle)`` of this task's card of ``card_type`` and ``card_id``, or
    ``(None, None)``. ``current.card[id]`` only finds cards that take user components,
    which the checkpoint card does not, so its registry is searched."""
    try:
        collector = current.card
        for uuid, meta in collector._cards_meta.items():
            if meta["type"] == card_type and meta["card_id"] == card_id:
                return uuid, collector._card_component_store.get(uuid)
    except AttributeError:  # no card collector in this task
        pass
    return None, None


def s3_client(params: dict):
    """A boto3 S3 client as Metaflow's S3 datastore builds its own (its AWS client
    provider, credentials and session settings), with ``params`` for the client."""
    from metaflow.plugins.datatools.s3.s3util import get_s3_client

    client, _ = get_s3_client(s3_client_params=params)
    return client


def stop_card_render(card_uuid: str) -> None:
    """End the background render of card ``card_uuid`` that Metaflow started from this
    process, if one is still running."""
    try:
        from metaflow.plugins.cards.card_creator import CardProcessManager
    except ImportError:
        return
    entry = CardProcessManager.async_card_processes.pop(card_uuid, None)
    if entry is not None and entry["proc"].poll() is None:
        entry["proc"].kill()
        entry["proc"].wait()


def card_info_to_register(card_creator: Any, card_uuid: str) -> Optional[dict]:
    """The ``card-info`` metadata ``card create`` would register for this card now, or None
    when it is registered already (Metaflow's card creator keeps track)."""
    should_save = getattr(card_creator, "_should_save_metadata", None)
    if should_save is None:
        return None
    save, info = should_save(card_uuid)
    return info if save else None


def register_task_metadata(
    metadata_provider: Any, pathspec_parts: Tuple[str, str, str], attempt: int, field: str, value: str,
    kind: str = "checkpoint",
) -> None:
    """Register one metadata entry ``field = value`` of type ``kind`` for attempt
    ``attempt`` of the task ``(run_id, step, task_id)``."""
    from metaflow.metadata_provider import MetaDatum

    run_id, step, task_id = pathspec_parts
    metadata_provider.register_metadata(
        run_id, step, task_id,
        [MetaDatum(field=field, value=value, type=kind, tags=["attempt_id:%d" % attempt])],
    )


def configured_datastore() -> str:
    """The datastore type Metaflow is configured with (METAFLOW_DEFAULT_DATASTORE)."""
    from metaflow.metaflow_config import DEFAULT_DATASTORE

    return DEFAULT_DATASTORE


def datastore_implementations() -> List[Any]:
    """Metaflow's datastore classes (``TYPE``, ``get_datastore_root_from_config``)."""
    from metaflow.plugins import DATASTORES

    return list(DATASTORES)


def s3_settings() -> SimpleNamespace:
    """Metaflow's S3 settings: ``client_params`` (boto3 client arguments, e.g. the
    endpoint), ``retry_count`` and ``server_side_encryption``."""
    from metaflow.metaflow_config import (
        DATATOOLS_CLIENT_PARAMS,
        S3_RETRY_COUNT,
        S3_SERVER_SIDE_ENCRYPTION,
    )

    return SimpleNamespace(
        client_params=dict(DATATOOLS_CLIENT_PARAMS),
        retry_count=int(S3_RETRY_COUNT),
        server_side_encryption=S3_SERVER_SIDE_ENCRYPTION,
    )


def card_datastore(flow_datastore: Any, pathspec: str) -> Any:
    """Metaflow's ``CardDatastore`` of the task ``pathspec``.

    Cards live under a root of their own (``CardDatastore.get_storage_root``), beside
    the flow's datastore; Metaflow's card CLI points a storage of the same kind there.
    """
    from metaflow.plugins.cards.card_datastore import CardDatastore

    card_root = CardDatastore.get_storage_root(flow_datastore.TYPE)
    return CardDatastore(datastore_shell(flow_datastore, card_root), pathspec)


def stored_card_files(cards: Any, card_type: str, card_id: str) -> List[str]:
    """The paths of every stored card and card-data file of ``card_type`` / ``card_id`` in
    the card datastore ``cards`` ([] when the task has none)."""
    from metaflow.plugins.cards.exception import CardNotPresentException

    try:
        found = cards.extract_card_paths(card_type=card_type, card_id=card_id)
    except CardNotPresentException:  # Metaflow's way to say: the task has no card yet
        found = []
    return found + cards.extract_data_paths(card_type=card_type, card_id=card_id)


def render_template(template: str, data: Any, partials: Optional[dict] = None) -> str:
    """A mustache ``template`` rendered with ``data`` by the renderer Metaflow's cards use."""
    from metaflow.plugins.cards.card_modules import chevron

    return chevron.render(template, data, partials_dict=partials or {})
