"""The first attempt of `train` saves three checkpoints, then (with --damage) empties the
blob holding the newest one's weights, as a machine crash with fsync off can, and fails.
The retry must resume from the checkpoint before it."""

import numpy as np
from metaflow import FlowSpec, Parameter, checkpoint, current, retry, step


def weights_for(count: int) -> np.ndarray:
    return np.random.default_rng(count).random(200_000)


def empty_the_weights_blob(key: str) -> None:
    """What a crash can leave: the blob holding ``weights`` of checkpoint ``key`` is empty."""
    from metaflow_extensions.implicit_checkpoint.engine.integrity import fields_by_blob
    from metaflow_extensions.implicit_checkpoint.engine.keys import CheckpointKey
    from metaflow_extensions.implicit_checkpoint.plugins.store_binding import store_from_config

    store = store_from_config()
    manifest = store.read_manifest(CheckpointKey.parse(key))
    for digest, fields in fields_by_blob(manifest).items():
        if fields == ["weights"]:
            store.backend.write(store.blob_path(manifest.flow, digest), [b""], durable=True)


class DamagedBlobFlow(FlowSpec):
    damage = Parameter("damage", default=False, type=bool)

    @retry(times=1)
    @checkpoint
    @step
    def start(self):
        self.count = 0
        self.resumed_from = None
        if current.checkpoint.is_loaded:
            self.resumed_from = current.checkpoint.load().key
        while self.count < 3:
            self.count += 1
            self.weights = weights_for(self.count)
            saved = current.checkpoint.save(metadata={"count": self.count})
        if self.damage and current.retry_count == 0:
            empty_the_weights_blob(saved.key)
            raise RuntimeError("simulated crash after a damaged save")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    DamagedBlobFlow()
