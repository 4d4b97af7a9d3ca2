"""Run a command with some folders read-only or on a nearly full file system, for the tests of
"disk full and read-only outputs are exit status 2 with one line and keep every complete file".

As root (chmod does not stop root) the command runs in a private mount namespace (`unshare -m`):
each read-only folder is bind-mounted read-only onto itself and the "full" folder is a tmpfs of
the given size; the mounts vanish with the namespace, and the tmpfs content is copied out first.
As another user, read-only folders are chmod'ed (and restored); a full disk then needs the
namespace, so such a test is skipped with the reason.
"""
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300


def namespaces_available():
    """True when `unshare -m` works here (root with CAP_SYS_ADMIN, as in CI's container)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


def run_limited(command, *, read_only=(), full=None, full_bytes=None, copy_full_to=None, env=None):
    """subprocess.run(command) (a list) with each folder of `read_only` unwritable and, with
    `full`, the folder `full` replaced by an empty file system of `full_bytes` bytes whose content
    is copied into `copy_full_to` after the command. Returns the CompletedProcess (text)."""
    env = dict(os.environ if env is None else env, PYTHONPATH=os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    if not read_only and full is None:
        return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=REPO_ROOT)
    if not namespaces_available():
        if full is not None:
            pytest.skip("a full disk needs a private mount namespace (unshare -m as root)")
        if os.geteuid() == 0:
            pytest.skip("read-only folders need a private mount namespace as root (unshare -m)")
        modes = {Path(f): Path(f).stat().st_mode for f in read_only}
        try:
            for folder in modes:
                folder.chmod(0o555)
            return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=env,
                                  cwd=REPO_ROOT)
        finally:
            for folder, mode in modes.items():
                folder.chmod(mode)
    lines = ["set -e"]
    for folder in read_only:
        quoted = shlex.quote(str(folder))
        lines += [f"mount --bind {quoted} {quoted}", f"mount -o remount,ro,bind {quoted} {quoted}"]
    if full is not None:
        Path(full).mkdir(parents=True, exist_ok=True)
        lines.append(f"mount -t tmpfs -o size={int(full_bytes)} tmpfs {shlex.quote(str(full))}")
    lines += ["set +e", shlex.join(command), "status=$?"]
    if full is not None:
        Path(copy_full_to).mkdir(parents=True, exist_ok=True)
        lines.append(f"cp -a {shlex.quote(str(full))}/. {shlex.quote(str(copy_full_to))}/")
    lines.append("exit $status")
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", "\n".join(lines)],
                          capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=REPO_ROOT)


def python_script(relative_path, *args):
    """The command running a script of the checkout with this Python."""
    return [sys.executable, str(REPO_ROOT / relative_path), *[str(a) for a in args]]


def message_lines(stderr, prefix):
    """The lines of stderr that start with `prefix` (a script's own messages, not progress bars)."""
    return [line for line in stderr.splitlines() if line.startswith(prefix)]
