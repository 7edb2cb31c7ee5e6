# Metaflow loads this extension's plugins while it initializes, and the plugins import
# the engine; importing metaflow first lets the engine also be imported on its own.
import metaflow  # noqa: F401
