"""The product page's workflow on real Covalent, unchanged but for the imports and the executor.

Needs a Covalent server (``covalent start``), a ``syncd agent`` on this machine, and the
usual ``SYNCD_*`` settings in this process's environment (the Covalent server's environment
does not need them: the hooks carry the agent's socket). Prints one JSON line: the dispatch
id, its status and the files ``read_existing`` saw. tests/test_covalent.py runs it twice
against a real server (3 files, then 6); see docs/AGENT.md for running it by hand.
"""

import json
import time
from datetime import datetime

import covalent as ct

from syncd import volume
from syncd.covalent import dispatch, get_result

my_volume = volume("/my_volume")  # creates the volume if it doesn't exist

ex = "local"


@ct.electron(executor=ex)
def create_new_files(label):
    # Create directory if it does not exist.
    label_dir = my_volume / label
    label_dir.mkdir(exist_ok=True)
    # Write to new log file on volume.
    timestamp = datetime.now().strftime("%H-%M-%S")
    new_log_file = label_dir / f"log_{timestamp}.txt"
    new_log_file.write_text(f"This file was created at {timestamp}.\n")
    return label_dir


@ct.electron(executor=ex)
def read_existing(log_dirs):
    log_contents = {}
    # Read log files in the directory.
    for log_dir in log_dirs:
        for log_file in log_dir.glob("log_*.txt"):
            log_contents[str(log_file)] = log_file.read_text()
    return log_contents


@ct.lattice(executor=ex, workflow_executor=ex)
def workflow(*labels):
    """Manipulates model files, performs updates, and reads logs."""
    log_dirs = []
    for label in labels:
        log_dirs.append(create_new_files(label))  # parallel tasks
    return read_existing(log_dirs)


if __name__ == "__main__":
    time.sleep(1.1)  # the file names have one-second resolution: two quick runs must not collide
    dispatch_id = dispatch(workflow, volume=my_volume)(  # volume attached here
        "model-1a-small",
        "model-3c-small",
        "model-3c-large",
    )
    result = get_result(dispatch_id, wait=True)  # ct.get_result, plus each failed task's reason
    print(json.dumps({"dispatch_id": dispatch_id, "status": str(result.status),
                      "error": result.error or "", "files": sorted(result.result or {})}))
