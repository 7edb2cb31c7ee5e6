"""The checkpoint engine: saves, loads and stores checkpoints; knows nothing of Metaflow.

Metaflow loads this extension's plugins while it initializes, and the plugins import the
engine: when Metaflow is installed, it is imported first, so that importing the engine
on its own does not enter Metaflow's initialization halfway. The engine runs without it.
"""

try:
    import metaflow  # noqa: F401
except ImportError:
    pass
