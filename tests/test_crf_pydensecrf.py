"""krahenbuhl2013 against pydensecrf2 (Kraehenbuehl's densecrf v2) configured exactly as the
SEC wrapper configures its CRF.  Skipped with the reason when pydensecrf is not installed
(`pip install pydensecrf2`, builds from source in about a minute)."""
import numpy as np
import pytest

from conftest import shared_file

dcrf = pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 not installed (pip install pydensecrf2)")
from test_crf import scene, scores  # noqa: E402  (skips when krahenbuhl2013 is not installed)
from krahenbuhl2013 import CRF, exact_dense_crf  # noqa: E402

MIN_ARGMAX_AGREEMENT = 0.995
MARGINAL_MAX_TOLERANCE = 1e-3


def pydensecrf_sec(image, unary, maxiter=10, scale_factor=1.0):
    """The SEC wrapper's CRF on pydensecrf: energy -unary, Gaussian 3/s (w 3), bilateral 80/s, 13 (w 10)."""
    height, width, labels = unary.shape
    crf = dcrf.DenseCRF2D(width, height, labels)
    crf.setUnaryEnergy(np.ascontiguousarray(-unary.reshape(-1, labels).T, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=3.0 / scale_factor, compat=3.0)
    crf.addPairwiseBilateral(sxy=80.0 / scale_factor, srgb=13.0, rgbim=np.array(image, dtype=np.uint8, order="C"), compat=10.0)
    return np.asarray(crf.inference(maxiter), dtype=np.float32).T.reshape(height, width, labels)


def smooth_scores(rng, height, width, labels, cell=8, gain=3.0):
    """Blocky-smooth random scores, like upsampled network outputs."""
    coarse = rng.normal(0, gain, (height // cell + 2, width // cell + 2, labels))
    rows = np.minimum(np.arange(height) // cell, coarse.shape[0] - 1)
    cols = np.minimum(np.arange(width) // cell, coarse.shape[1] - 1)
    return coarse[rows][:, cols].astype(np.float32)


@pytest.mark.parametrize("scale_factor, size", [(1.0, (60, 80)), (12.0, (41, 41))])
def test_agrees_with_pydensecrf_on_synthetic_scenes(scale_factor, size):
    rng = np.random.default_rng(10)
    image = scene(rng, *size, discs=8)
    unary = smooth_scores(rng, *size, 21)
    ours, theirs = CRF(image, unary, scale_factor=scale_factor), pydensecrf_sec(image, unary, scale_factor=scale_factor)
    assert (ours.argmax(-1) == theirs.argmax(-1)).mean() >= MIN_ARGMAX_AGREEMENT
    assert np.abs(ours - theirs).max() < MARGINAL_MAX_TOLERANCE


def test_agrees_with_pydensecrf_on_the_example_photo():
    from PIL import Image

    image = np.asarray(Image.open(shared_file("example.jpg")).convert("RGB"))
    rng = np.random.default_rng(11)
    unary = smooth_scores(rng, image.shape[0], image.shape[1], 21, cell=16)
    ours, theirs = CRF(image, unary, maxiter=5), pydensecrf_sec(image, unary, maxiter=5)
    assert (ours.argmax(-1) == theirs.argmax(-1)).mean() >= MIN_ARGMAX_AGREEMENT
    assert np.abs(ours - theirs).max() < MARGINAL_MAX_TOLERANCE


def test_as_close_to_exact_as_pydensecrf():
    rng = np.random.default_rng(12)
    image, unary = scene(rng, 24, 32), scores(rng, 24, 32, 21)
    exact = exact_dense_crf(image, unary)
    ours = np.abs(CRF(image, unary) - exact).mean()
    theirs = np.abs(pydensecrf_sec(image, unary) - exact).mean()
    assert ours <= theirs * 1.01
