"""Finite-difference gradient checks (float64) of every differentiable SEC layer, driven as Caffe does.

Shapes: the SEC training batch (15 x 21 x 41 x 41, sampled coordinates) and an odd one
(2 x 5 x 13 x 17). Central differences of the layer's own forward are compared with its backward.
"""
import numpy as np
import pytest
from test_pylayers_blob import Driver

import pylayers

SEC_SHAPE = (15, 21, 41, 41)
ODD_SHAPE = (2, 5, 13, 17)
SHAPES = [SEC_SHAPE, ODD_SHAPE]
NUM_SAMPLES = 24
STEP = 1e-6
RELATIVE_STEP = 1e-3  # small probabilities get a step below 1e-3 of their value: log is curved there
RTOL = 1e-5


def random_coords(shape, count, rng):
    flat = rng.choice(int(np.prod(shape)), size=count, replace=False)
    return list(zip(*np.unravel_index(flat, shape)))


def finite_differences(objective, x, coords, step=STEP):
    """Central differences of objective(x) at each coordinate of ``coords``."""
    x = x.copy()
    result = []
    for coord in coords:
        centre = x[coord]
        h = min(step, RELATIVE_STEP * abs(centre)) if centre else step
        x[coord] = centre + h
        up = objective(x)
        x[coord] = centre - h
        down = objective(x)
        x[coord] = centre
        result.append((up - down) / (2 * h))
    return np.array(result)


def check_gradient(driver, inputs, coords, top_diff=None, step=STEP):
    """Compare the layer's backward with finite differences of sum(top * top_diff)."""
    top = driver.forward(*inputs)[0]
    top_diff = np.ones_like(top) if top_diff is None else top_diff
    analytic = driver.backward(top_diff)
    def objective(x):
        return float(np.sum(driver.forward(x, *inputs[1:])[0] * top_diff))
    numeric = finite_differences(objective, inputs[0], coords, step)
    expected = np.array([analytic[c] for c in coords])
    scale = np.abs(analytic).max()
    np.testing.assert_allclose(numeric, expected, rtol=RTOL, atol=1e-6 * scale)
    return analytic


def distribution(shape, rng, spread=3.0):
    return pylayers.softmax_with_floor(rng.normal(scale=spread, size=shape))


def random_cues(shape, rng, fraction=0.2):
    """One class per seeded pixel, about ``fraction`` of the pixels seeded."""
    num, channels, height, width = shape
    cues = np.zeros(shape)
    seeded = rng.random((num, height, width)) < fraction
    classes = rng.integers(0, channels, size=(num, height, width))
    n, y, x = np.nonzero(seeded)
    cues[n, classes[n, y, x], y, x] = 1.0
    return cues


def random_labels(num, channels, rng):
    labels = np.zeros((num, 1, 1, channels))
    labels[:, 0, 0, 0] = 1.0
    for i in range(num):
        present = rng.choice(np.arange(1, channels), size=rng.integers(1, min(3, channels - 1) + 1), replace=False)
        labels[i, 0, 0, present] = 1.0
    return labels


def tie_free_probs(shape, rng, low=0.02, high=0.9):
    """Every class map holds a permutation of evenly spaced values: no sort ties, gaps >> STEP."""
    num, channels, height, width = shape
    ladder = np.linspace(low, high, height * width)
    rows = np.array([rng.permutation(ladder) for _ in range(num * channels)])
    return rows.reshape(shape)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("min_prob", [pylayers.MIN_PROB, 0.1])
def test_softmax_gradient(shape, min_prob):
    rng = np.random.default_rng(1)
    scores = rng.normal(scale=5.0, size=shape)
    driver = Driver(pylayers.SoftmaxLayer, [scores], param_str=f"min_prob: {min_prob}")
    coords = random_coords(shape, NUM_SAMPLES, rng)
    check_gradient(driver, [scores], coords, top_diff=rng.normal(size=shape))


def test_softmax_floor_and_renormalisation():
    rng = np.random.default_rng(2)
    scores = rng.normal(scale=30.0, size=ODD_SHAPE)
    (probs,) = Driver(pylayers.SoftmaxLayer, [scores]).forward(scores)
    channels = ODD_SHAPE[1]
    floor = pylayers.MIN_PROB / (1 + channels * pylayers.MIN_PROB)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)
    assert probs.min() >= floor * (1 - 1e-12)
    assert np.isclose(probs.min(), floor, rtol=1e-6)  # scale 30 makes some softmax entries ~0
    plain = np.exp(scores - scores.max(axis=1, keepdims=True))
    plain /= plain.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, (plain + pylayers.MIN_PROB) / (1 + channels * pylayers.MIN_PROB))


@pytest.mark.parametrize("shape", SHAPES)
def test_seed_loss_gradient(shape):
    rng = np.random.default_rng(3)
    probs, cues = distribution(shape, rng), random_cues(shape, rng)
    driver = Driver(pylayers.SeedLossLayer, [probs, cues])
    seeded = list(zip(*np.nonzero(cues)))
    coords = random_coords(shape, NUM_SAMPLES // 2, rng) + [seeded[i] for i in rng.choice(len(seeded), NUM_SAMPLES // 2)]
    analytic = check_gradient(driver, [probs, cues], coords)
    assert np.all(analytic[cues == 0] == 0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("pooling", ["gwrp", "gap", "gmp"])
def test_expand_loss_gradient(shape, pooling):
    rng = np.random.default_rng(4)
    num, channels = shape[:2]
    probs, labels = tie_free_probs(shape, rng), random_labels(num, channels, rng)
    rows = np.sort(probs.reshape(num * channels, -1), axis=1)
    assert np.diff(rows, axis=1).min() > 100 * STEP  # no sort tie can flip within a step
    driver = Driver(pylayers.ExpandLossLayer, [probs, labels], param_str=f'{{"pooling": "{pooling}"}}')
    flat = probs.reshape(num, channels, -1)
    peaks = [(i, c) + np.unravel_index(flat[i, c].argmax(), shape[2:]) for i in range(num) for c in range(channels)]
    coords = random_coords(shape, NUM_SAMPLES, rng) + [peaks[k] for k in rng.choice(len(peaks), NUM_SAMPLES // 2)]
    check_gradient(driver, [probs, labels], coords)


@pytest.mark.parametrize("shape", SHAPES)
def test_constrain_loss_gradient(shape):
    rng = np.random.default_rng(5)
    probs, log_q = distribution(shape, rng), np.log(distribution(shape, rng))
    driver = Driver(pylayers.ConstrainLossLayer, [probs, log_q])
    check_gradient(driver, [probs, log_q], random_coords(shape, NUM_SAMPLES, rng))


@pytest.mark.parametrize("layer", ["softmax", "seed", "expand", "constrain"])
def test_top_diff_scales_gradient(layer):
    """Caffe's loss_weight arrives as top[0].diff: 2.5 there gives 2.5 times the gradient."""
    rng = np.random.default_rng(6)
    shape = ODD_SHAPE
    probs = distribution(shape, rng)
    second = {"softmax": None, "seed": random_cues(shape, rng),
              "expand": random_labels(shape[0], shape[1], rng), "constrain": np.log(distribution(shape, rng))}[layer]
    cls = {"softmax": pylayers.SoftmaxLayer, "seed": pylayers.SeedLossLayer,
           "expand": pylayers.ExpandLossLayer, "constrain": pylayers.ConstrainLossLayer}[layer]
    inputs = [probs] if second is None else [probs, second]
    driver = Driver(cls, inputs)
    top = driver.forward(*inputs)[0]
    top_diff = rng.normal(size=top.shape) if layer == "softmax" else np.ones_like(top)
    unit = driver.backward(top_diff)
    scaled = driver.backward(2.5 * top_diff)
    assert np.abs(unit).max() > 0
    np.testing.assert_allclose(scaled, 2.5 * unit, rtol=1e-12)


def test_float32_blobs_match_float64():
    """Caffe's blobs are float32: same losses and gradients as float64 to float32 precision."""
    rng = np.random.default_rng(7)
    probs = distribution(ODD_SHAPE, rng)
    labels = random_labels(ODD_SHAPE[0], ODD_SHAPE[1], rng)
    results = {}
    for dtype in (np.float32, np.float64):
        driver = Driver(pylayers.ExpandLossLayer, [probs, labels], dtype=dtype)
        loss = driver.forward(probs, labels)[0]
        results[dtype] = loss, driver.backward(np.ones(1))
    assert results[np.float32][1].dtype == np.float32
    np.testing.assert_allclose(results[np.float32][0], results[np.float64][0], rtol=1e-5)
    np.testing.assert_allclose(results[np.float32][1], results[np.float64][1], rtol=1e-4, atol=1e-9)
