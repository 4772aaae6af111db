"""What a test run leaves behind: ``python tests/leftovers.py snapshot FILE`` before, ``python
tests/leftovers.py check FILE`` after (exit 1, naming each, if the run left anything of ours in the
temporary directory or in ``/dev/shm``). ``make test`` runs both around the suites.

"Ours": names this project's code and tests make (``qcmb_hpc-*``, ``qcmb-*``) and MPICH's
shared-memory segments (``mpich_*``, from MPI runs the tests start). pytest's own ``pytest-of-*``
directories are pytest's (it keeps the last three runs by design).
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
import tempfile

PLACES = {"tmp": tempfile.gettempdir(), "shm": "/dev/shm"}
OURS = ("qcmb_hpc-*", "qcmb-*", "mpich_*", "tmp*qcmb*")


def listing() -> dict:
    out = {}
    for name, path in PLACES.items():
        try:
            out[name] = sorted(e for e in os.listdir(path) if any(fnmatch.fnmatch(e, p) for p in OURS))
        except OSError:
            out[name] = []
    return out


def main(argv) -> int:
    if len(argv) != 2 or argv[0] not in ("snapshot", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    cmd, path = argv
    if cmd == "snapshot":
        with open(path, "w") as fh:
            json.dump(listing(), fh)
        return 0
    with open(path) as fh:
        before = json.load(fh)
    left = {k: sorted(set(v) - set(before.get(k, []))) for k, v in listing().items()}
    if any(left.values()):
        for k, names in left.items():
            for n in names:
                print(f"left behind by the tests: {os.path.join(PLACES[k], n)}", file=sys.stderr)
        return 1
    print("nothing left behind in", ", ".join(PLACES.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
