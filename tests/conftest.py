"""Shared test fixtures.

Real SEC data (the original localization cues, the training list, a photograph) lives in
`../shared/data` beside the checkout and is never committed. Tests that need it ask for
the `shared_data` fixture and are skipped, with the reason, when it is absent.
Set SEC_SHARED_DATA to point somewhere else.
"""
import importlib.util
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SEC_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data():
    """Path of ../shared/data; skips the test when the folder is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real SEC data not found at {SHARED_DATA} (set SEC_SHARED_DATA)")
    return SHARED_DATA


def shared_file(name):
    """Path of one file in ../shared/data, or a skip naming the missing file."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not found: real SEC data is not committed (set SEC_SHARED_DATA)")
    return path


def live_caffe_python():
    """$SEC_CAFFE_PYTHON as a Path when that Python imports the real pycaffe; else the test is
    skipped, saying why (the live tests against BVLC Caffe all start here)."""
    import subprocess
    from sec import bvlc_caffe
    value = os.environ.get(bvlc_caffe.CAFFE_PYTHON_ENV)
    if not value:
        pytest.skip(f"{bvlc_caffe.CAFFE_PYTHON_ENV} is not set: set it to the Python pycaffe was built for "
                    f"(bash ../shared/caffe/build.sh makes {bvlc_caffe.DEFAULT_CAFFE_PYTHON})")
    result = subprocess.run([value, "-c", "import caffe"], capture_output=True, text=True,
                            env=dict(os.environ, GLOG_minloglevel="2"), timeout=120)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"{bvlc_caffe.CAFFE_PYTHON_ENV}={value} does not import caffe: {last}")
    return Path(value)


def load_script(relative_path):
    """A script of the checkout (e.g. "training/train.py", not a package module) imported as a
    module, so tests can call its functions and main(args)."""
    path = REPO_ROOT / relative_path
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_tiny_voc(folder, missing_id=None):
    """A VOC-shaped folder (2 random 120 x 160 JPEGs, trainaug.txt), their cues (ids 0, 1; one
    foreground class each) and initial weights for conv1_1 only (the rest keep their fillers)."""
    import pickle

    import numpy as np
    from PIL import Image

    from sec.caffe import formats
    voc = folder / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["2007_000001", "2007_000002"]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{name}.jpg")
    (voc / "ImageSets" / "Segmentation" / "trainaug.txt").write_text("\n".join(names) + "\n")
    cues = {}
    for image_id in range(len(names)):
        if image_id != missing_id:
            cues[f"{image_id}_labels"] = np.array([image_id + 1])
            cues[f"{image_id}_cues"] = np.array([[0, 0, image_id + 1], [0, 40, 20], [0, 40, 20]])
    with open(folder / "cues.pickle", "wb") as handle:   # numpy 2 pickles: Caffe's numpy 1 reads them
        pickle.dump(cues, handle)
    conv1 = [rng.normal(0, 0.01, (64, 3, 3, 3)).astype(np.float32), np.zeros(64, np.float32)]
    formats.write_caffemodel(folder / "init.caffemodel", "vgg", [("conv1_1", "Convolution", conv1)])
    return {"voc": voc, "cues": folder / "cues.pickle", "weights": folder / "init.caffemodel"}


@pytest.fixture
def ieee_float32():
    """float32 cuDNN convolutions in IEEE precision for the test (TF32 is torch's default for
    convolutions, with a 10-bit mantissa: a CUDA-vs-CPU comparison at rtol 1e-4 of a net whose
    convolutions are not what the test is about would measure TF32, not the code). Restores the
    flag afterwards."""
    from sec.nn import speed
    saved = speed.tf32_enabled()
    speed.set_tf32(False)
    yield
    speed.set_tf32(saved)


def randomize_weights(net, seed=0):
    """Random weights in every layer of a sec.caffe Net, BatchNorm statistics included (mean
    normal, variance in 0.5..2, scale factor 1), so that a test net's output is not degenerate."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, kind, params in net.layer_params():
            if kind == "BatchNorm":
                params[0].normal_(generator=generator)
                params[1].uniform_(0.5, 2.0, generator=generator)
                params[2].fill_(1.0)
            else:
                for p in params:
                    p.normal_(0.0, 0.3, generator=generator)
