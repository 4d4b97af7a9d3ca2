"""bench/gpu_check.sh and bench/gpu_check.py: the check's code runs on CPU at tiny sizes (--dry) and
prints every row, so that it cannot rot before a GPU is available; its preflight blames the right
thing (a missing interpreter, the modules a bare Python lacks); a failing part is a row, not the
end of the check."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, load_script

TIMEOUT_S = 300
SCRIPT = REPO_ROOT / "bench" / "gpu_check.sh"
PYENV_312 = Path.home() / ".pyenv" / "versions" / "3.12.1" / "bin" / "python3.12"


def run_script(*args, python=sys.executable, timeout=TIMEOUT_S):
    env = dict(os.environ, PYTHON=str(python), GPU_CHECK_TIMEOUT=str(timeout))
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout + 60)


@pytest.mark.slow
def test_gpu_check_dry_prints_the_whole_table():
    result = run_script("--dry")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "using the installed krahenbuhl2013" in out          # no build where the package imports
    for row in ("pytest -m cuda", "host syncs per training iteration", "CRF call: syncs, launching ops",
                "train s/iter fp32/TF32", "train s/iter bf16", "deploy img/s", "photo-like", "engine / direct torch",
                "peak memory", "fc8-SEC-CRF-log forward", "loss-Expand backward", "data (ImageData", "update (SGD)",
                "training part"):
        assert row in out, f"row '{row}' missing from:\n{out}"
    ratio = re.search(r"engine / direct torch \S+ \S+\s+(\d+\.\d+)", out)
    assert ratio and float(ratio.group(1)) > 0
    crf = re.search(r"fc8-SEC-CRF-log forward\s+\S+ \S+\s+(\d+)\s+(\d+)", out)   # syncs, launches beside the times
    assert crf and int(crf.group(1)) <= 1 and int(crf.group(2)) < 300, out
    assert "MISSED" not in out and "FAILED" not in out and "dry run" in out


def test_a_missing_python_is_named_not_the_build():
    result = run_script("--dry", python="/nonexistent")
    assert result.returncode == 3
    assert "no Python interpreter '/nonexistent'" in result.stderr
    assert "CRF" not in result.stderr and "build" not in result.stderr


def _bare_pythons(tmp_path):
    """This interpreter without site-packages (-I -S: no .pth file preloads importlib.util, as on
    a plain Python 3.12), and a plain Python 3.12 where pyenv has one."""
    wrapper = tmp_path / "bare-python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -I -S "$@"\n')
    wrapper.chmod(0o755)
    found = [wrapper]
    plain = shutil.which("python3.12") or (str(PYENV_312) if PYENV_312.is_file() else None)
    if plain and subprocess.run([plain, "-c", "import sys"], capture_output=True).returncode == 0:
        found.append(Path(plain))
    return found


def test_preflight_on_a_bare_python_names_what_is_missing(tmp_path):
    for python in _bare_pythons(tmp_path):
        result = run_script("--dry", python=python, timeout=120)
        assert result.returncode == 3, (python, result.stderr)
        assert "Traceback" not in result.stderr and "AttributeError" not in result.stderr, result.stderr
        assert "do not import" in result.stderr and "torch (ModuleNotFoundError" in result.stderr, result.stderr
        assert "sec.proto.caffe_pb2" in result.stderr       # the schema is part of the preflight


@pytest.fixture
def in_process(monkeypatch):
    """gpu_check.main --dry sets SEC_LAYERS and torch's threads for its process: undone afterwards."""
    monkeypatch.setenv("SEC_LAYERS", os.environ.get("SEC_LAYERS", "auto"))
    threads = torch.get_num_threads()
    yield load_script("bench/gpu_check.py")
    torch.set_num_threads(threads)


def test_a_failing_part_is_a_row_and_the_rest_still_run(monkeypatch, capsys, in_process):
    check = in_process
    done = []

    def part(name, fail=False):
        def run(*args):
            if fail:
                raise RuntimeError("out of memory\n(on two lines)")
            done.append(name)
            check.row(name, "1.0")
        return run
    for name in ("op_counts", "deploy", "engine_ratio", "part_table", "cuda_tests"):
        monkeypatch.setattr(check, name, part(name))
    monkeypatch.setattr(check, "training", part("training", fail=True))
    status = check.main(check.parse_args(["--dry"]))
    out = capsys.readouterr().out
    assert status == 1
    assert re.search(r"train fp32\s+RuntimeError: out of memory \(on two lines\)\s+FAILED", out), out
    assert done == ["cuda_tests", "op_counts", "part_table", "deploy", "engine_ratio"]


def test_parts_after_the_budget_are_skipped_with_a_row(monkeypatch, capsys, in_process):
    check = in_process
    clock = iter(range(0, 10_000, 100))
    monkeypatch.setattr(check.time, "perf_counter", lambda: float(next(clock)))
    for name in ("op_counts", "deploy", "engine_ratio", "part_table", "cuda_tests", "training"):
        monkeypatch.setattr(check, name, lambda *args: None)
    assert check.main(check.parse_args(["--dry", "--budget", "250"])) == 1
    out = capsys.readouterr().out
    assert re.search(r"deploy\s+not started after \d+ s\s+--budget 250\s+SKIPPED", out), out


def test_gpu_check_without_cuda_and_without_dry_says_so():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the check would run")
    result = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "gpu_check.py")], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--dry" in result.stderr


NOT_ON_THE_GPU_MACHINE = ("h5py", "lmdb", "plyvel", "hypothesis", "pydensecrf", "grpc_tools", "matplotlib")
"""Project dependencies the GPU machine lacks (it has no pip): the check's code must not need them."""


def test_the_check_imports_without_what_the_gpu_machine_lacks():
    code = (f"import sys; sys.modules.update(dict.fromkeys({list(NOT_ON_THE_GPU_MACHINE)!r}));"
            "sys.path.insert(0, 'bench'); import gpu_check, gpu_budget; gpu_budget.load_bench('train');"
            "gpu_budget.load_bench('engine'); import sec.caffe.solver, sec.train, sec.deploy, sec.nn.modules")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
