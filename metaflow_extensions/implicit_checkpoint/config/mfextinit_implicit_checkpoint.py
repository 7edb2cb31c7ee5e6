# The extension's settings, read as Metaflow reads its own: each is the environment
# variable METAFLOW_<NAME> or the same key in Metaflow's config file, else the default.
# Metaflow merges these names into metaflow.metaflow_config; plugins/settings.py checks
# and types them. The README's "Settings" table lists them.
from metaflow.metaflow_config_funcs import from_conf

CHECKPOINT_FSYNC = from_conf("CHECKPOINT_FSYNC", "1")
CHECKPOINT_STAGING_BYTES = from_conf("CHECKPOINT_STAGING_BYTES", str(8 * 1024**3))
CHECKPOINT_TRACK_CHANGES = from_conf("CHECKPOINT_TRACK_CHANGES", "0")
CHECKPOINT_SIGTERM_WAIT = from_conf("CHECKPOINT_SIGTERM_WAIT", "20")
CHECKPOINT_PREEMPTION_GRACE = from_conf("CHECKPOINT_PREEMPTION_GRACE", "10")
CHECKPOINT_MTBF = from_conf("CHECKPOINT_MTBF", "7200")
CHECKPOINT_GANG_TIMEOUT = from_conf("CHECKPOINT_GANG_TIMEOUT", "1800")
CHECKPOINT_DIRECTORY_ROOT = from_conf("CHECKPOINT_DIRECTORY_ROOT", "")
