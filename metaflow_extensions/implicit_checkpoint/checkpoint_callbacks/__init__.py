"""Framework callbacks that save a checkpoint whenever the framework saves its own:
``from metaflow.checkpoint_callbacks import HuggingFaceCheckpointCallback`` (a
``transformers.TrainerCallback``) and ``LightningModelCheckpoint`` (a Lightning
``ModelCheckpoint``).

Each is imported on first use, so this package needs neither transformers nor lightning:
only the one you use must be installed.
"""

from importlib import import_module

_WHERE = {
    "HuggingFaceCheckpointCallback": ".huggingface",
    "LightningModelCheckpoint": ".lightning",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError("metaflow.checkpoint_callbacks has no %r; it has %s." % (name, ", ".join(__all__)))
    return getattr(import_module(module, __name__), name)


def __dir__():
    return __all__
