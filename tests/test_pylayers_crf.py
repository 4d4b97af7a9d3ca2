"""CRFLayer: the image zoom, the layer around a stand-in CRF, and the real krahenbuhl2013 when built."""
import importlib.util
import sys
import types

import numpy as np
import pytest
from test_pylayers_blob import Driver

import pylayers
from pylayers import crf

MEAN = np.array([104.0, 117.0, 123.0])
HAVE_CRF = importlib.util.find_spec("krahenbuhl2013") is not None
needs_crf = pytest.mark.skipif(not HAVE_CRF, reason="krahenbuhl2013 (./CRF) is not installed: pip install ./CRF")


def network_input(num, height, width, seed):
    """What the SEC data layer feeds: BGR 0..255 minus the mean, as float."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(num, 3, height, width)).astype(np.float64)
    return pixels - MEAN[None, :, None, None]


def corner_aligned_resize(plane, height, width):
    """Bilinear resize of one 2-D plane where output corners sit on input corners."""
    rows = np.linspace(0, plane.shape[0] - 1, height)
    cols = np.linspace(0, plane.shape[1] - 1, width)
    across = np.array([np.interp(cols, np.arange(plane.shape[1]), line) for line in plane])
    return np.array([np.interp(rows, np.arange(plane.shape[0]), column) for column in across.T]).T


def test_shrink_images_is_corner_aligned_linear_zoom():
    images = network_input(2, 321, 321, seed=0)
    small = crf.shrink_images(images, 41, 41)
    assert small.shape == (2, 41, 41, 3) and small.dtype == np.uint8
    expected = np.stack([np.stack([corner_aligned_resize(images[n, c], 41, 41) + MEAN[c] for c in range(3)], axis=-1)
                         for n in range(2)])
    assert np.abs(small.astype(float) - np.round(expected)).max() <= 1  # rounding of x.5 may differ
    assert np.mean(small == np.round(expected)) > 0.999
    corners = images[:, :, [0, 0, -1, -1], [0, -1, 0, -1]] + MEAN[None, :, None]
    np.testing.assert_array_equal(small[:, [0, 0, -1, -1], [0, -1, 0, -1]], corners.transpose(0, 2, 1))


def test_shrink_images_odd_sizes():
    images = network_input(1, 50, 30, seed=1)
    small = crf.shrink_images(images, 13, 7)
    expected = corner_aligned_resize(images[0, 1], 13, 7) + MEAN[1]
    assert small.shape == (1, 13, 7, 3)
    assert np.abs(small[0, :, :, 1] - np.round(expected)).max() <= 1


class StandInCRF:
    """Records the CRF_batch call and returns a sharp softmax of the unaries (entries far below min_prob)."""

    def __init__(self):
        self.calls = []

    def CRF_batch(self, images, unaries, maxiter=10, scale_factor=1.0, num_threads=0):
        self.calls.append(dict(images=images.copy(), unaries=unaries.copy(), maxiter=maxiter, scale_factor=scale_factor))
        sharp = np.exp(20 * (unaries - unaries.max(axis=-1, keepdims=True)))
        return (sharp / sharp.sum(axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def stand_in(monkeypatch):
    fake = StandInCRF()
    module = types.ModuleType("krahenbuhl2013")
    module.CRF_batch = fake.CRF_batch
    monkeypatch.setitem(sys.modules, "krahenbuhl2013", module)
    return fake


def check_crf_top(log_probs, shape, min_prob):
    assert log_probs.shape == shape and log_probs.dtype == np.float32
    probs = np.exp(log_probs.astype(np.float64))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # clamped at min_prob before renormalising: nothing below min_prob / (1 + C * min_prob)
    assert probs.min() >= min_prob / (1 + shape[1] * min_prob) * (1 - 1e-5)


def test_crf_layer_around_a_stand_in(stand_in):
    scores = np.random.default_rng(2).normal(scale=3, size=(2, 4, 9, 11)).astype(np.float32)
    images = network_input(2, 65, 81, seed=3)
    driver = Driver(pylayers.CRFLayer, [scores, images], dtype=np.float32)
    (log_probs,) = driver.forward(scores, images)
    call = stand_in.calls[-1]
    assert call["maxiter"] == 10 and call["scale_factor"] == 12.0
    np.testing.assert_array_equal(call["unaries"], scores.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(call["images"], crf.shrink_images(images, 9, 11))
    check_crf_top(log_probs, scores.shape, pylayers.MIN_PROB)
    assert np.isclose(np.exp(log_probs).min(), pylayers.MIN_PROB / (1 + 4 * pylayers.MIN_PROB), rtol=1e-4)
    driver.bottom[0].diff[...] = 7.0
    driver.bottom[1].diff[...] = 7.0
    driver.backward(np.ones_like(log_probs), propagate_down=[True, True])
    assert not driver.bottom[0].diff.any() and not driver.bottom[1].diff.any()


def test_crf_layer_param_str(stand_in):
    scores = np.zeros((1, 3, 5, 5), dtype=np.float32)
    driver = Driver(pylayers.CRFLayer, [scores, network_input(1, 9, 9, seed=4)],
                    param_str="scale_factor: 2\nmaxiter: 3", dtype=np.float32)
    driver.forward(scores, driver.bottom[1].data)
    assert stand_in.calls[-1]["maxiter"] == 3 and stand_in.calls[-1]["scale_factor"] == 2.0
    with pytest.raises(ValueError, match="CRFLayer.*maxiter must be a non-negative integer"):
        Driver(pylayers.CRFLayer, [scores, network_input(1, 9, 9, seed=4)], param_str="maxiter: 2.5")
    with pytest.raises(ValueError, match="CRFLayer.*need scores N x C x h x w and images N x 3 x H x W"):
        Driver(pylayers.CRFLayer, [scores, np.zeros((2, 3, 9, 9))])


@needs_crf
def test_crf_layer_equals_per_image_crf():
    """The batch layer equals krahenbuhl2013.CRF image by image on the zoomed image."""
    import krahenbuhl2013
    rng = np.random.default_rng(5)
    shape = (3, 21, 41, 41)
    scores = rng.normal(scale=3, size=shape).astype(np.float32)
    images = network_input(3, 321, 321, seed=6)
    driver = Driver(pylayers.CRFLayer, [scores, images], dtype=np.float32)
    (log_probs,) = driver.forward(scores, images)
    check_crf_top(log_probs, shape, pylayers.MIN_PROB)
    small = crf.shrink_images(images.astype(np.float32), 41, 41)
    for n in range(shape[0]):
        marginals = krahenbuhl2013.CRF(small[n], np.ascontiguousarray(scores[n].transpose(1, 2, 0)),
                                       maxiter=10, scale_factor=12.0)
        expected = np.maximum(marginals.transpose(2, 0, 1), pylayers.MIN_PROB)
        expected = np.log(expected / expected.sum(axis=0, keepdims=True))
        np.testing.assert_allclose(log_probs[n], expected, rtol=1e-5, atol=1e-5)
    driver.backward(np.ones_like(log_probs), propagate_down=[True, False])
    assert not driver.bottom[0].diff.any()
