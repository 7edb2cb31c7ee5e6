"""A plain folder in current.checkpoint.directory through saves, a SIGKILL and the retry.

Attempt 0 fills the folder (a 50 MB file, small files, a nested folder, an empty folder,
a symbolic link, a read-only file), saves, deletes a file and changes another, saves in
the background and rewrites a file right after, then is killed. What the folder held at
each save is written to --witness; the retry loads and records what it finds.
"""

import json
import os
import signal
import time

import numpy as np
from metaflow import FlowSpec, Parameter, checkpoint, current, retry, step

from folder_listing import listing


class FolderFlow(FlowSpec):
    witness = Parameter("witness", default="")

    @step
    def start(self):
        self.next(self.train)

    @retry(times=1)
    @checkpoint
    @step
    def train(self):
        folder = current.checkpoint.directory
        self.empty_at_start = os.listdir(folder) == []
        if current.retry_count == 0:
            seen = {"folder": folder}
            with open(os.path.join(folder, "weights.bin"), "wb") as f:
                f.write(np.random.default_rng(0).bytes(50 * 1024 * 1024))
            os.makedirs(os.path.join(folder, "notes", "deep"))
            os.makedirs(os.path.join(folder, "empty"))
            for rel, text in [("notes/a.txt", "a"), ("notes/deep/b.txt", "b" * 5000), ("gone.txt", "gone")]:
                with open(os.path.join(folder, rel), "w") as f:
                    f.write(text)
            os.chmod(os.path.join(folder, "notes", "deep", "b.txt"), 0o400)
            os.symlink("notes/a.txt", os.path.join(folder, "link"))
            self.epoch = 1
            current.checkpoint.save(metadata={"epoch": 1})
            seen["save1"] = listing(folder)

            started = time.perf_counter()
            resaved = current.checkpoint.save(name="resave", metadata={"epoch": 1})
            seen["resave"] = {
                "seconds": time.perf_counter() - started,
                "bytes_written": resaved.implicit_manifest["bytes_written"],
                "bytes_referenced": resaved.implicit_manifest["bytes_referenced"],
            }

            os.remove(os.path.join(folder, "gone.txt"))
            with open(os.path.join(folder, "notes", "a.txt"), "a") as f:
                f.write(" and more")
            self.epoch = 2
            current.checkpoint.save(metadata={"epoch": 2}, blocking=False)
            seen["save2"] = listing(folder)
            # What a framework does right after a save: the checkpoint must not change.
            with open(os.path.join(folder, "notes", "a.txt"), "w") as f:
                f.write("rewritten after the save")
            os.remove(os.path.join(folder, "weights.bin"))
            current.checkpoint.wait()
            with open(self.witness, "w") as f:
                json.dump(seen, f)
            os.kill(os.getpid(), signal.SIGKILL)
        self.folder = folder
        self.resumed_from = current.checkpoint.load().key
        self.restored = listing(folder)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    FolderFlow()
