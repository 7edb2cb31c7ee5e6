"""What a folder holds, to compare two folders exactly: per entry (relative path) its
kind, size, content hash, mode and modification time. Used by the folder test flows
and by the tests' notebook processes."""

import hashlib
import os
import stat


def listing(root):
    found = {}
    for directory, folders, files in os.walk(root):
        for name in folders + files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            entry = {"mtime_ns": info.st_mtime_ns}
            if stat.S_ISLNK(info.st_mode):
                entry.update(kind="link", target=os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                entry.update(kind="dir", mode=stat.S_IMODE(info.st_mode))
            else:
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                entry.update(kind="file", size=info.st_size, mode=stat.S_IMODE(info.st_mode), sha256=digest)
            found[rel] = entry
    return found
