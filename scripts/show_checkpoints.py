"""Print the checkpoints of a flow's newest run, per task (used by `make demo`).

Usage: python scripts/show_checkpoints.py FLOW_NAME
"""

import sys

from metaflow import Checkpoint, Flow, namespace


def main(flow_name: str) -> None:
    namespace(None)
    run = Flow(flow_name).latest_run
    client = Checkpoint()
    print("Run %s" % run.pathspec)
    print("%-8s %-8s %-12s %-10s %-28s %s" % ("attempt", "version", "name", "size", "created (UTC)", "metadata"))
    for artifact in client.list(run=run):
        print(
            "%-8d %-8d %-12s %-10d %-28s %s"
            % (artifact.attempt, artifact.version, artifact.name, artifact.size,
               artifact.created_on[:26], artifact.metadata)
        )
    newest = client.list(run=run)[-1]
    print("\nNewest checkpoint %s holds:" % newest.key)
    for field, info in client.inspect(newest)["fields"].items():
        print("  self.%-12s %-45s %-12s %d bytes" % (field, info["type"], info["codec"], info["size"]))


if __name__ == "__main__":
    main(sys.argv[1])
