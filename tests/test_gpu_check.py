"""bench/gpu_check.sh --dry: the GPU check's code runs on CPU at tiny sizes and prints its table,
so that the script cannot rot before a GPU is available (the build step is left out: the
installed krahenbuhl2013 is used)."""
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT

TIMEOUT_S = 300


@pytest.mark.slow
def test_gpu_check_dry_prints_the_whole_table():
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_TIMEOUT=str(TIMEOUT_S))
    result = subprocess.run(["bash", str(REPO_ROOT / "bench" / "gpu_check.sh"), "--dry", "--no-build"],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S + 30)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for row in ("pytest -m cuda", "train s/iter fp32/TF32", "train s/iter bf16", "deploy img/s",
                "engine / direct torch", "peak memory", "fc8-SEC-CRF-log forward", "loss-Expand backward",
                "data (ImageData", "update (SGD)"):
        assert row in out, f"row '{row}' missing from:\n{out}"
    ratio = re.search(r"engine / direct torch \S+ \S+\s+(\d+\.\d+)", out)
    assert ratio and float(ratio.group(1)) > 0
    assert "MISSED" not in out and "dry run" in out


def test_gpu_check_without_cuda_and_without_dry_says_so():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the check would run")
    result = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "gpu_check.py")], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--dry" in result.stderr
