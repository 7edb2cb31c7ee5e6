"""Peak resident memory of one save, in a fresh process (run by run.py).

    python memory_probe.py WORKDIR SIZE_BYTES sync|background

Prints JSON: the state's bytes, and the process's resident memory with the state built
("with_state") and at its peak during the save ("peak"), both above what the process
used before building the state ("base": Python, torch, metaflow).
"""

import json
import sys
from pathlib import Path


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, the peak resident set size


def main() -> None:
    workdir, size, mode = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from local_io import fresh_dir, new_session
    from states import nbytes, state_dict

    session_root = fresh_dir(workdir / "memory")
    base = _status_kb("VmRSS") * 1024
    state = state_dict(size)
    session = new_session(session_root, state)
    with_state = _status_kb("VmRSS") * 1024
    _reset_peak()
    if mode == "sync":
        session.save()
    else:
        session.save(blocking=False)
        session.wait()
    peak = _status_kb("VmHWM") * 1024
    print(json.dumps({"bytes": nbytes(state), "with_state": with_state - base, "peak": peak - base}))


if __name__ == "__main__":
    main()
