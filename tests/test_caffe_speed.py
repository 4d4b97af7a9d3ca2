"""bench/caffe_speed.py (`bench/caffe_reference.py --bench`): the FLOP count of a training step,
the environment of each thread setting, and, with the real Caffe ($SEC_CAFFE_PYTHON), a short run
of both settings at a small input size. No timing is asserted: the bench prints ratios."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import live_caffe_python
from sec import caffe

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"


def load_bench():
    sys.path.insert(0, str(BENCH))   # caffe_speed imports caffe_reference beside it
    try:
        spec = importlib.util.spec_from_file_location("caffe_speed", BENCH / "caffe_speed.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


SPEED = load_bench()

TINY_NET = """layer { name: "data" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "c1" type: "Convolution" bottom: "x" top: "c1" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2"
        convolution_param { num_output: 6 kernel_size: 3 stride: 2 group: 2 } }
layer { name: "frozen" type: "Convolution" bottom: "c2" top: "c3" param { lr_mult: 0 } param { lr_mult: 0 }
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "fc" type: "InnerProduct" bottom: "c3" top: "y" inner_product_param { num_output: 5 } }
"""


def test_step_flops_counts_forward_weight_and_input_gradients_by_hand(tmp_path):
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(TINY_NET)
    net = caffe.Net(str(prototxt), caffe.TRAIN)
    c1 = 2 * (4 * 3 * 3 * 3) * (2 * 8 * 8)           # 2 x weight count x output positions
    c2 = 2 * (6 * 2 * 3 * 3) * (2 * 3 * 3)           # group 2: 2 input channels per output
    frozen = 2 * (2 * 6) * (2 * 3 * 3)
    fc = 2 * (5 * 2 * 3 * 3) * 2
    forward, step = SPEED.step_flops(net)
    assert forward == c1 + c2 + frozen + fc
    # c1: no input gradient (its bottom is the data); frozen: no weight gradient, but an input
    # gradient (c2 below it learns); c2 and fc: both
    assert step == 2 * c1 + 3 * c2 + 2 * frozen + 3 * fc


def test_the_sec_step_is_305_gflop_per_321_image(tmp_path):
    """The figure the issue quotes, from the net: 101.9 GFLOP forward, every convolution's weight
    gradient, and every input gradient but conv1_1's."""
    SPEED.bench_inputs(str(tmp_path), 321, 1)
    SPEED.bench_prototxts(str(tmp_path), 321, 1)
    net = caffe.Net(str(tmp_path / "bench_train.prototxt"), caffe.TRAIN)
    forward, step = SPEED.step_flops(net)
    assert round(forward / 1e9, 1) == 101.9 and round(step / 1e9, 1) == 305.2
    assert SPEED.score_side(321) == 41 and SPEED.score_side(65) == 9


def test_settings_set_or_remove_the_thread_and_wait_variables(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    one = SPEED.setting_environment("1", "PASSIVE")
    assert [one[name] for name in SPEED.THREAD_VARIABLES] == ["1", "1", "1"] and one["OMP_WAIT_POLICY"] == "PASSIVE"
    every = SPEED.setting_environment("all", "unset")
    assert not any(name in every for name in (*SPEED.THREAD_VARIABLES, "OMP_WAIT_POLICY"))
    with pytest.raises(SystemExit):
        SPEED.build_parser().parse_args(["--threads", "1,0"])


@pytest.mark.slow
def test_bench_runs_both_settings_with_their_threads_and_prints_the_fraction_of_peak():
    caffe_python = str(live_caffe_python())
    result = subprocess.run([sys.executable, str(BENCH / "caffe_reference.py"), "--bench", "--caffe-python",
                             caffe_python, "--size", "33", "--iters", "1", "--threads", "1,all"],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert re.search(r"1 x 3 x 33 x 33: \d+\.\d GFLOP", out)
    one, every = out.split("\n1 thread per engine")[1].split("\nevery core")
    assert "Caffe threads OPENBLAS_NUM_THREADS=1" in one and "sec.caffe threads torch=1 OMP_WAIT_POLICY=PASSIVE" in one
    assert "OMP_NUM_THREADS=unset" in every and "OMP_WAIT_POLICY=PASSIVE" in every   # torch's own default threads
    for block in (one, every):
        assert re.search(r"wall BVLC Caffe 1\.0 +\d+\.\d\d s, sec\.caffe +\d+\.\d\d s .*Caffe / sec\.caffe \d+\.\d\dx", block)
        assert re.search(r"float32 peak \d+\.\d GFLOP/s", block)
        assert re.search(r"GFLOP/s \(wall\): BVLC Caffe 1\.0 \d+\.\d = \d+% of peak, sec\.caffe \d+\.\d = \d+% of peak",
                         block)
