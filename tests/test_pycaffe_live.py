"""The same pycaffe scripts under BVLC's pycaffe and under this engine, outputs compared.

Live: needs $SEC_CAFFE_PYTHON, the Python BVLC's pycaffe was built for (../shared/caffe/build.sh makes
/opt/caffe/venv/bin/python; .ci/run sets it); skipped, saying why, without it. The script is
tests/pycaffe_live_script.py, run unchanged by both Pythons; Caffe's run goes first and hands its
weights to the engine's where the two engines' random fillers would differ. Also: `import caffe`
under Caffe's Python with this checkout first on PYTHONPATH still gives the real pycaffe, and BVLC's
suite gives the same outcomes under both.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pycaffe_suite_runner import extract_suite, run_in
from conftest import live_caffe_python
from sec import bvlc_caffe

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "pycaffe_live_script.py"
CAFFE_SOURCE = Path(os.environ.get("SEC_CAFFE_SOURCE", REPO.parent / "shared" / "caffe" / "caffe-9b89154-src.tar.gz"))
QUIET = {"GLOG_minloglevel": "2", "OMP_NUM_THREADS": "1"}
TIMEOUT_S = 300
# float32 agreement: the same arithmetic in another order (BLAS, torch) differs by rounding
FORWARD_RTOL, FORWARD_ATOL = 1e-5, 1e-6
SOLVER_RTOL, SOLVER_ATOL = 1e-4, 1e-6
RESIZE_ATOL = 1e-5      # scipy 1.10 (Caffe's Debian) vs this Python's scipy, float32 filters


@pytest.fixture(scope="module")
def caffe_python():
    return live_caffe_python()


def caffe_env(caffe_python, *path):
    """Caffe's Python's environment with its pycaffe on PYTHONPATH after `path`."""
    pycaffe = bvlc_caffe.locate_pycaffe(caffe_python)
    return dict(os.environ, PYTHONPATH=os.pathsep.join([*map(str, path), str(pycaffe)]), **QUIET)


def engine_env():
    return dict(os.environ, PYTHONPATH=str(REPO), SEC_CAFFE="sec", **QUIET)


def run_script(python, env, out, part, *extra):
    result = subprocess.run([str(python), str(SCRIPT), "--part", part, "--out", str(out), *map(str, extra)],
                            env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def both(caffe_python, tmp_path, part, *extra, weights_from=None):
    """Run `part` under Caffe, then under the engine (with Caffe's weights file `weights_from`)."""
    real = run_script(caffe_python, caffe_env(caffe_python), tmp_path / "bvlc", part, *extra)
    assert real["net_module"] == "caffe._caffe", real
    if weights_from is not None:
        extra = (*extra, "--weights", tmp_path / "bvlc" / weights_from)
    mine = run_script(sys.executable, engine_env(), tmp_path / "sec", part, *extra)
    assert mine["net_module"] == "sec.caffe.net", mine
    return tmp_path / "bvlc", tmp_path / "sec"


def test_import_caffe_gives_the_real_pycaffe_even_with_this_checkout_first(caffe_python):
    env = caffe_env(caffe_python, REPO)
    result = subprocess.run([str(caffe_python), "-c", "import caffe, json; print(json.dumps([caffe.__file__, "
                             "caffe.Net.__module__]))"], env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    path, module = json.loads(result.stdout.strip().splitlines()[-1])
    assert module == "caffe._caffe" and Path(path).parent == bvlc_caffe.locate_pycaffe(caffe_python) / "caffe"


def test_netspec_text_and_forward(caffe_python, tmp_path):
    from google.protobuf import text_format
    from sec.proto import caffe_pb2
    real, mine = both(caffe_python, tmp_path, "netspec", weights_from="netspec.caffemodel")
    # the same message (the text differs only in float formatting between protobuf versions: 1 vs 1.0)
    texts = [text_format.Parse((folder / "netspec.prototxt").read_text(), caffe_pb2.NetParameter())
             for folder in (real, mine)]
    assert texts[0] == texts[1] and len(texts[0].layer) == 6
    expected, got = np.load(real / "netspec.npz"), np.load(mine / "netspec.npz")
    assert sorted(got.files) == sorted(expected.files) == ["conv", "pool", "prob"]
    for name in expected.files:
        np.testing.assert_allclose(got[name], expected[name], rtol=FORWARD_RTOL, atol=FORWARD_ATOL, err_msg=name)


def test_python_layer_with_blobs_trained_five_steps(caffe_python, tmp_path):
    real, mine = both(caffe_python, tmp_path, "solver", weights_from="initial.caffemodel")
    expected, got = np.load(real / "solver.npz"), np.load(mine / "solver.npz")
    assert sorted(got.files) == sorted(expected.files) and "scale_0" in got.files
    np.testing.assert_allclose(got["losses"], expected["losses"], rtol=SOLVER_RTOL, atol=SOLVER_ATOL)
    assert not np.allclose(expected["scale_0"], 1.5)       # the Python layer's blob did learn
    for name in expected.files:
        np.testing.assert_allclose(got[name], expected[name], rtol=SOLVER_RTOL, atol=SOLVER_ATOL, err_msg=name)


def test_io_converters_write_the_same_bytes(caffe_python, tmp_path):
    real, mine = both(caffe_python, tmp_path, "io")
    for path in sorted(real.glob("io_*.bin")):
        assert (mine / path.name).read_bytes() == path.read_bytes(), path.name
    expected, got = np.load(real / "io.npz"), np.load(mine / "io.npz")
    for name in expected.files:
        assert got[name].dtype == expected[name].dtype, name
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_transformer_and_resize_agree(caffe_python, tmp_path):
    real, mine = both(caffe_python, tmp_path, "transformer")
    expected, got = np.load(real / "transformer.npz"), np.load(mine / "transformer.npz")
    assert sorted(got.files) == sorted(expected.files)
    for name in expected.files:
        assert got[name].shape == expected[name].shape and got[name].dtype == expected[name].dtype, name
        scale = max(1.0, float(np.abs(expected[name]).max()))
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=RESIZE_ATOL * scale, err_msg=name)


def test_load_image_reads_as_scikit_image_does(caffe_python, tmp_path):
    """pycaffe's own load_image fails under scikit-image >= 0.16 (as_grey was removed): the engine's
    reads what that call meant, checked against scikit-image's imread (as_gray) in Caffe's Python."""
    from PIL import Image
    rng = np.random.default_rng(3)
    files = [tmp_path / "rgb.png", tmp_path / "grey.png", tmp_path / "rgba.png", tmp_path / "photo.jpg"]
    Image.fromarray(rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)).save(files[0])
    Image.fromarray(rng.integers(0, 256, (7, 9), dtype=np.uint8)).save(files[1])
    Image.fromarray(rng.integers(0, 256, (7, 9, 4), dtype=np.uint8)).save(files[2])
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(files[3], quality=90)
    real, mine = both(caffe_python, tmp_path, "image", "--images", *files)
    errors = json.loads((real / "image_errors.json").read_text())
    assert errors and all("as_grey" in message for message in errors.values()), errors
    assert json.loads((mine / "image_errors.json").read_text()) == {}
    expected, got = np.load(real / "image.npz"), np.load(mine / "image.npz")
    for index in range(len(files)):
        colour = expected[f"skimage_{index}_color"]
        if colour.ndim == 2:
            colour = np.tile(colour[:, :, None], (1, 1, 3))
        np.testing.assert_allclose(got[f"caffe_{index}_color"], colour[:, :, :3], atol=1e-6, err_msg=str(files[index]))
        np.testing.assert_allclose(got[f"caffe_{index}_grey"][:, :, 0], expected[f"skimage_{index}_grey"], atol=1e-6,
                                   err_msg=str(files[index]))


def test_bvlc_suite_outcomes_are_the_same_under_both(caffe_python, tmp_path):
    if not CAFFE_SOURCE.is_file():
        pytest.skip(f"BVLC Caffe's source tarball {CAFFE_SOURCE} is absent (set SEC_CAFFE_SOURCE to its path)")
    suite = extract_suite(CAFFE_SOURCE, tmp_path / "src")
    real, _ = run_in(caffe_python, suite, tmp_path / "run-bvlc", caffe_env(caffe_python))
    mine, _ = run_in(sys.executable, suite, tmp_path / "run-sec", engine_env())
    # test_draw depends on pydot in each Python, not on the engine
    drop = {t for t in set(real) | set(mine) if "test_draw" in t}
    summary = {t: (real.get(t, ["absent"])[0], mine.get(t, ["absent"])[0]) for t in sorted(set(real) | set(mine) - drop)}
    assert all(a == b == "ok" for a, b in summary.values()), {t: s for t, s in summary.items() if s != ("ok", "ok")}
