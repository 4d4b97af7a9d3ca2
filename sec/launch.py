"""Child processes of a training run (training/train.py): a pipeline stage, BVLC Caffe's `caffe
train`, torchrun's workers; each run to its end through Ctrl-C, with its exit status.

A terminal's Ctrl-C reaches the whole foreground process group, the children included, and each
stops in its own way (a stage or a torchrun worker prints its one line and exits 130; Caffe, with
its `-sigint_effect stop`, finishes the iteration, writes a snapshot and exits 0). So the parent
only waits for that and then reports the interruption; a second Ctrl-C kills the child.

torchrun exits 1 whatever made a worker fail, and prints its own failure report; the workers
therefore leave their exit statuses in a folder named by STATUS_DIR_ENV, and `torchrun` returns
the first failed one.
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

STATUS_DIR_ENV = "SEC_TRAIN_STATUS_DIR"
EXIT_LAUNCH_FAILED = 4     # torchrun failed before any worker reported (train.py's "a stage failed")


def run_child(command, env=None):
    """Run `command` to its end; returns (exit status, whether Ctrl-C was pressed meanwhile)."""
    process = subprocess.Popen(command, env=env)
    interrupted = False
    while True:
        try:
            return process.wait(), interrupted
        except KeyboardInterrupt:
            if interrupted:
                process.kill()
            interrupted = True


def torchrun(script, processes, argv):
    """Run `script argv` under torchrun with `processes` processes; returns the first failed worker's
    own exit status, else EXIT_LAUNCH_FAILED when torchrun failed, else 0 (a failure ends with one
    line saying which). KeyboardInterrupt after the workers stopped, when Ctrl-C was pressed."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               str(script), *argv]
    with tempfile.TemporaryDirectory(prefix="sec-train-status-") as folder:
        status, interrupted = run_child(command, env=dict(os.environ, **{STATUS_DIR_ENV: folder}))
        workers = [int(path.read_text()) for path in sorted(Path(folder).glob("rank*"))]
    if interrupted:
        raise KeyboardInterrupt
    failed = [worker for worker in workers if worker != 0]
    if failed:
        print(f"train.py: a training process stopped with exit status {failed[0]} (its message, then torchrun's "
              "report, are above)", file=sys.stderr)
        return failed[0]
    if status != 0:
        print(f"train.py: torchrun failed with exit status {status} (its message is above)", file=sys.stderr)
        return EXIT_LAUNCH_FAILED
    return 0


def record_worker_status(status):
    """In a worker started by `torchrun`: leave this process's exit status for the launcher."""
    folder = os.environ.get(STATUS_DIR_ENV)
    if folder and Path(folder).is_dir():
        (Path(folder) / f"rank{os.environ.get('RANK', 0)}").write_text(str(status))
