"""krahenbuhl2013: the lattice CRF against an exact O(N^2) mean-field, API contracts,
odd shapes and input checking."""
import multiprocessing
import os

import numpy as np
import pytest

krahenbuhl2013 = pytest.importorskip("krahenbuhl2013", reason="pip install ./CRF first")
from krahenbuhl2013 import CRF, CRF_batch, dense_crf, dense_crf_batch, exact_dense_crf  # noqa: E402

# The lattice approximates the Gaussian; these bound its error against the exact CRF on
# 24x32 images at scale 1 (measured: max 0.08, mean 5e-4, argmax 100%).
MIN_ARGMAX_AGREEMENT = 0.995
MARGINAL_MAX_TOLERANCE = 0.15
MARGINAL_MEAN_TOLERANCE = 2e-3


def scene(rng, height, width, discs=4, noise=4.0):
    """Piecewise-constant colour discs with edges plus a little noise, uint8 HxWx3."""
    image = np.full((height, width, 3), 128.0)
    rows, cols = np.mgrid[:height, :width]
    for _ in range(discs):
        colour = rng.integers(0, 256, 3)
        y0, x0, radius = rng.integers(0, height), rng.integers(0, width), rng.integers(3, 12)
        image[(rows - y0) ** 2 + (cols - x0) ** 2 < radius**2] = colour
    image += rng.normal(0, noise, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def scores(rng, height, width, labels, spread=1.5):
    return rng.normal(0, spread, (height, width, labels)).astype(np.float32)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1])
def test_lattice_matches_exact_mean_field(seed):
    rng = np.random.default_rng(seed)
    image, unary = scene(rng, 24, 32), scores(rng, 24, 32, 21)
    got = CRF(image, unary, maxiter=10)
    want = exact_dense_crf(image, unary, maxiter=10)
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= MIN_ARGMAX_AGREEMENT
    assert np.abs(got - want).max() < MARGINAL_MAX_TOLERANCE
    assert np.abs(got - want).mean() < MARGINAL_MEAN_TOLERANCE
    # the pairwise terms really act: the result is far from the unary alone
    assert (got.argmax(-1) != unary.argmax(-1)).mean() > 0.05


def test_named_parameters_reach_the_kernels():
    rng = np.random.default_rng(2)
    image, unary = scene(rng, 20, 24), scores(rng, 20, 24, 5)
    settings = dict(gaussian_sxy=2.0, gaussian_weight=1.0, bilateral_sxy=10.0, bilateral_srgb=30.0,
                    bilateral_weight=5.0, maxiter=5)
    got = dense_crf(image, unary, **settings)
    want = exact_dense_crf(image, unary, **settings)
    # narrow kernels on a tiny image: the lattice is coarser here (pydensecrf2 agrees on 98.5%)
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.98
    assert np.abs(got - want).max() < MARGINAL_MAX_TOLERANCE
    assert not np.allclose(got, CRF(image, unary, maxiter=5), atol=1e-3)


def test_sec_wrapper_is_dense_crf_with_scaled_widths():
    rng = np.random.default_rng(3)
    image, unary = scene(rng, 16, 16), scores(rng, 16, 16, 4)
    np.testing.assert_array_equal(
        CRF(image, unary, maxiter=3, scale_factor=4.0),
        dense_crf(image, unary, maxiter=3, gaussian_sxy=0.75, bilateral_sxy=20.0),
    )


def test_zero_iterations_is_softmax_of_unary():
    rng = np.random.default_rng(4)
    image, unary = scene(rng, 9, 11), scores(rng, 9, 11, 7, spread=5)
    got = CRF(image, unary, maxiter=0)
    assert got.dtype == np.float32 and got.shape == unary.shape
    np.testing.assert_allclose(got, softmax(unary.astype(np.float64)), rtol=1e-5, atol=1e-7)


def test_minus_infinity_unary_means_impossible_label():
    rng = np.random.default_rng(5)
    image, unary = scene(rng, 8, 8), scores(rng, 8, 8, 3)
    unary[..., 1] = -np.inf
    got = CRF(image, unary)
    assert np.isfinite(got).all() and got[..., 1].max() < 1e-30


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 17, 4), (13, 1, 4), (6, 7, 1), (10, 12, 60), (8, 9, 65), (7, 6, 130)])
def test_odd_shapes(shape):
    rng = np.random.default_rng(6)
    height, width, labels = shape
    image, unary = scene(rng, height, width), scores(rng, height, width, labels)
    got = CRF(image, unary, maxiter=5)
    assert got.shape == shape and got.dtype == np.float32
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    want = exact_dense_crf(image, unary, maxiter=5)
    # one-pixel-wide strips are the lattice's worst case (pydensecrf2 agrees equally: 82% on 1x17)
    strip = min(height, width) == 1
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= (0.8 if strip else 0.98)
    if not strip:
        assert np.abs(got - want).max() < MARGINAL_MAX_TOLERANCE
    if labels == 1:
        np.testing.assert_array_equal(got, 1.0)


def test_any_dtype_and_layout_gives_the_same_answer():
    rng = np.random.default_rng(7)
    image, unary = scene(rng, 12, 15), scores(rng, 12, 15, 6)
    base = CRF(image, unary)
    np.testing.assert_array_equal(CRF(image.astype(np.float64), unary.astype(np.float64)), base)
    np.testing.assert_array_equal(CRF(image.astype(np.int64), unary), base)
    # float images are truncated as the original's astype('ubyte') did
    np.testing.assert_array_equal(CRF(image + 0.4, unary), base)
    transposed_image = np.ascontiguousarray(image.transpose(1, 0, 2)).transpose(1, 0, 2)
    fortran_unary = np.asfortranarray(unary)
    assert not transposed_image.flags.c_contiguous and not fortran_unary.flags.c_contiguous
    np.testing.assert_array_equal(CRF(transposed_image, fortran_unary), base)


def test_batch_is_bitwise_equal_to_serial():
    rng = np.random.default_rng(8)
    images = np.stack([scene(rng, 41, 41) for _ in range(5)])
    unaries = np.stack([scores(rng, 41, 41, 21) for _ in range(5)])
    serial = np.stack([CRF(i, u, scale_factor=12.0) for i, u in zip(images, unaries)])
    for threads in (0, 1, 2, 3):
        got = CRF_batch(images, unaries, scale_factor=12.0, num_threads=threads)
        assert got.dtype == np.float32 and got.shape == unaries.shape
        np.testing.assert_array_equal(got, serial)


def test_batch_of_lists_with_different_sizes():
    rng = np.random.default_rng(9)
    sizes = [(20, 30), (7, 5), (33, 12)]
    images = [scene(rng, h, w) for h, w in sizes]
    unaries = [scores(rng, h, w, 4) for h, w in sizes]
    got = dense_crf_batch(images, unaries, num_threads=2, maxiter=4, bilateral_weight=6.0)
    assert isinstance(got, list) and len(got) == 3
    for g, i, u in zip(got, images, unaries):
        np.testing.assert_array_equal(g, dense_crf(i, u, maxiter=4, bilateral_weight=6.0))
    assert CRF_batch([], []) == []
    assert CRF_batch(np.zeros((0, 4, 4, 3), np.uint8), np.zeros((0, 4, 4, 2))).shape == (0, 4, 4, 2)


GOOD_IMAGE = np.zeros((4, 5, 3), np.uint8)
GOOD_UNARY = np.zeros((4, 5, 2), np.float32)


@pytest.mark.parametrize(
    "image, unary, kwargs, message",
    [
        (np.zeros((4, 5), np.uint8), GOOD_UNARY, {}, "HxWx3"),
        (np.zeros((4, 5, 4), np.uint8), GOOD_UNARY, {}, "HxWx3"),
        (np.zeros((0, 5, 3), np.uint8), np.zeros((0, 5, 2)), {}, "non-empty"),
        (GOOD_IMAGE.astype(complex), GOOD_UNARY, {}, "numeric"),
        (np.full((4, 5, 3), "a"), GOOD_UNARY, {}, "numeric"),
        (np.full((4, 5, 3), 300), GOOD_UNARY, {}, "0..255"),
        (np.full((4, 5, 3), -5.0), GOOD_UNARY, {}, "0..255"),
        (np.full((4, 5, 3), np.nan), GOOD_UNARY, {}, "finite"),
        (GOOD_IMAGE, np.zeros((4, 5)), {}, "HxWxL"),
        (GOOD_IMAGE, np.zeros((5, 4, 2)), {}, "height and width"),
        (GOOD_IMAGE, np.zeros((4, 5, 0)), {}, "at least one label"),
        (GOOD_IMAGE, np.full((4, 5, 2), np.nan), {}, "NaN"),
        (GOOD_IMAGE, np.full((4, 5, 2), 1e300), {}, "NaN or \\+inf"),
        (GOOD_IMAGE, GOOD_UNARY.astype(complex), {}, "numeric"),
        (GOOD_IMAGE, GOOD_UNARY, {"maxiter": -1}, "maxiter"),
        (GOOD_IMAGE, GOOD_UNARY, {"maxiter": 2.5}, "maxiter"),
        (GOOD_IMAGE, GOOD_UNARY, {"scale_factor": 0}, "scale_factor"),
        (GOOD_IMAGE, GOOD_UNARY, {"scale_factor": float("nan")}, "scale_factor"),
        (GOOD_IMAGE, GOOD_UNARY, {"scale_factor": "x"}, "scale_factor"),
        (GOOD_IMAGE, GOOD_UNARY, {"scale_factor": 1e-300}, "kernel width"),
    ],
)
def test_bad_input_is_a_value_error(image, unary, kwargs, message):
    with pytest.raises(ValueError, match=message):
        CRF(image, unary, **kwargs)


def test_bad_keyword_values_and_batches():
    with pytest.raises(ValueError, match="bilateral_srgb"):
        dense_crf(GOOD_IMAGE, GOOD_UNARY, bilateral_srgb=-1)
    with pytest.raises(ValueError, match="gaussian_weight"):
        dense_crf(GOOD_IMAGE, GOOD_UNARY, gaussian_weight=float("inf"))
    with pytest.raises(ValueError, match="num_threads"):
        CRF_batch([GOOD_IMAGE], [GOOD_UNARY], num_threads=-1)
    with pytest.raises(ValueError, match="as many unaries"):
        CRF_batch([GOOD_IMAGE, GOOD_IMAGE], [GOOD_UNARY])
    with pytest.raises(ValueError, match="both as arrays or both as lists"):
        CRF_batch([GOOD_IMAGE], GOOD_UNARY[None])
    with pytest.raises(ValueError, match="NxHxWx3"):
        CRF_batch(GOOD_IMAGE, GOOD_UNARY)
    with pytest.raises(ValueError, match="image 1: .*height and width"):
        CRF_batch([GOOD_IMAGE, GOOD_IMAGE], [GOOD_UNARY, np.zeros((2, 2, 2))])


def test_core_rechecks_what_reaches_it():
    from krahenbuhl2013 import _core

    out = np.empty((4, 5, 2), np.float32)
    settings = dict(maxiter=1, gaussian_sxy=3.0, gaussian_weight=3.0, bilateral_sxy=80.0, bilateral_srgb=13.0,
                    bilateral_weight=10.0, num_threads=1)
    with pytest.raises(ValueError, match="uint8"):
        _core.dense_crf_into([GOOD_IMAGE.astype(np.float32)], [GOOD_UNARY], [out], **settings)
    with pytest.raises(ValueError, match="float32"):
        _core.dense_crf_into([GOOD_IMAGE], [GOOD_UNARY.astype(np.float64)], [out], **settings)
    with pytest.raises(ValueError, match="same HxW"):
        _core.dense_crf_into([GOOD_IMAGE], [GOOD_UNARY], [np.empty((3, 5, 2), np.float32)], **settings)
    with pytest.raises(ValueError, match="numpy arrays"):
        _core.dense_crf_into([None], [GOOD_UNARY], [out], **settings)


def test_baseline_and_avx2_kernels_agree():
    """The module carries baseline and AVX2+FMA kernels; both compute the same CRF."""
    from krahenbuhl2013 import _core

    rng = np.random.default_rng(13)
    images = np.stack([scene(rng, 23, 31) for _ in range(3)])
    unaries = np.stack([scores(rng, 23, 31, 21) for _ in range(3)])
    default = CRF_batch(images, unaries, scale_factor=2.0)
    _core.use_baseline_kernels(True)
    try:
        assert _core.instruction_set() == "baseline"
        baseline = CRF_batch(images, unaries, scale_factor=2.0, num_threads=2)
        serial = np.stack([CRF(i, u, scale_factor=2.0) for i, u in zip(images, unaries)])
    finally:
        _core.use_baseline_kernels(False)
    np.testing.assert_array_equal(baseline, serial)
    np.testing.assert_allclose(baseline, default, atol=1e-5)


def test_gaussian_lattice_reuse_does_not_change_results():
    """Calls of one size reuse the per-thread Gaussian lattice; a fresh size rebuilds it."""
    rng = np.random.default_rng(14)
    image, unary = scene(rng, 17, 19), scores(rng, 17, 19, 5)
    first = CRF(image, unary)
    CRF(scene(rng, 9, 8), scores(rng, 9, 8, 5))  # another size in between
    CRF(image, unary, scale_factor=2.0)  # same size, another kernel width
    np.testing.assert_array_equal(CRF(image, unary), first)


def _core_settings(maxiter=4):
    return dict(maxiter=maxiter, gaussian_sxy=3.0, gaussian_weight=3.0, bilateral_sxy=80.0, bilateral_srgb=13.0,
                bilateral_weight=10.0, num_threads=1)


def test_core_takes_float32_unaries_in_any_strides():
    """The core copies non-C-order unaries itself (tiled, per thread); same answer as C order."""
    from krahenbuhl2013 import _core

    rng = np.random.default_rng(15)
    image, unary = scene(rng, 19, 23), scores(rng, 19, 23, 6)
    want = np.empty_like(unary)
    _core.dense_crf_into([image], [unary], [want], **_core_settings())
    layouts = [
        np.ascontiguousarray(unary.transpose(2, 0, 1)).transpose(1, 2, 0),  # labels strided (C,H,W network output)
        np.ascontiguousarray(unary.transpose(1, 0, 2)).transpose(1, 0, 2),  # columns outer, labels packed
        np.ascontiguousarray(unary[::-1, ::-1])[::-1, ::-1],  # negative strides
    ]
    for layout in layouts:
        assert not layout.flags.c_contiguous
        got = np.empty_like(unary)
        _core.dense_crf_into([image], [layout], [got], **_core_settings())
        np.testing.assert_array_equal(got, want)


def test_core_rejects_an_output_sharing_memory_with_the_unary():
    """The kernels write the output while they still read the unary, so they must differ."""
    from krahenbuhl2013 import _core

    unary = scores(np.random.default_rng(16), 4, 5, 2)
    with pytest.raises(ValueError, match="shares no memory"):
        _core.dense_crf_into([GOOD_IMAGE], [unary], [unary], **_core_settings())


def _batch_in_child(images, unaries):
    return CRF_batch(images, unaries, scale_factor=12.0, num_threads=2)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork (POSIX)")
def test_thread_pool_survives_fork():
    """The worker pool lives across calls; a forked child (no threads) starts its own."""
    rng = np.random.default_rng(17)
    images = np.stack([scene(rng, 21, 21) for _ in range(4)])
    unaries = np.stack([scores(rng, 21, 21, 5) for _ in range(4)])
    parent = CRF_batch(images, unaries, scale_factor=12.0, num_threads=2)  # starts the pool here
    with multiprocessing.get_context("fork").Pool(1) as pool:
        child = pool.apply_async(_batch_in_child, (images, unaries)).get(timeout=60)
    np.testing.assert_array_equal(child, parent)
    np.testing.assert_array_equal(CRF_batch(images, unaries, scale_factor=12.0, num_threads=2), parent)


def test_maxiter_and_pixel_count_are_bounded():
    """maxiter above MAX_ITERATIONS (a call of 2**31 iterations would run for years) and images
    above MAX_PIXELS are refused before any work, in the single and the batch call."""
    assert krahenbuhl2013.MAX_ITERATIONS == 1000 and krahenbuhl2013.MAX_PIXELS == 2**26
    for call in (lambda **kw: CRF(GOOD_IMAGE, GOOD_UNARY, **kw),
                 lambda **kw: CRF_batch([GOOD_IMAGE], [GOOD_UNARY], **kw)):
        call(maxiter=1000)
        with pytest.raises(ValueError, match="maxiter <= 1000"):
            call(maxiter=krahenbuhl2013.MAX_ITERATIONS + 1)
        with pytest.raises(ValueError, match="maxiter"):
            call(maxiter=2**31 - 1)
    from krahenbuhl2013 import _core

    out = np.empty((4, 5, 2), np.float32)
    with pytest.raises(ValueError, match="maxiter <= 1000"):
        _core.dense_crf_into([GOOD_IMAGE], [GOOD_UNARY], [out], **dict(_core_settings(), maxiter=5000))
    # A zero-stride view: the size is refused before the 200 MB image would be copied.
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (8193, 8192, 3))
    with pytest.raises(ValueError, match="at most 2\\*\\*26 = 67108864 pixels.*8193x8192"):
        CRF(huge, np.zeros((1, 1, 2), np.float32))
    with pytest.raises(ValueError, match="image 1: need an image of at most 2\\*\\*26"):
        CRF_batch([GOOD_IMAGE, huge], [GOOD_UNARY, np.zeros((1, 1, 2), np.float32)])


# A child that starts a CRF call which would run for many minutes (random colours fill the
# bilateral lattice: an iteration of 400x400x21 takes most of a second), then waits to be
# interrupted.
_LONG_CRF_CHILD = """
import sys
import numpy as np
import krahenbuhl2013
rng = np.random.default_rng(0)
count = int(sys.argv[1])
images = [rng.integers(0, 256, (400, 400, 3), dtype=np.uint8) for _ in range(count)]
unaries = [rng.standard_normal((400, 400, 21)).astype(np.float32) for _ in range(count)]
print("calling", flush=True)
if count == 1:
    krahenbuhl2013.CRF(images[0], unaries[0], maxiter=1000)
else:
    krahenbuhl2013.CRF_batch(images, unaries, maxiter=1000, num_threads=2)
print("returned", flush=True)
"""
# Generous: the uninterrupted call takes far longer; an interrupted one ends within an iteration.
INTERRUPT_HANG_GUARD_S = 60
# Time for the child to get from its last print into the C++ call.
INTERRUPT_DELAY_S = 1.5


@pytest.mark.skipif(os.name != "posix", reason="sends SIGINT")
@pytest.mark.parametrize("count", [1, 4], ids=["CRF", "CRF_batch"])
def test_a_long_call_is_interrupted_by_sigint(count):
    """Ctrl-C during a CRF call raises KeyboardInterrupt from inside the call (before, SIGINT was
    only seen when the call returned: years for maxiter=2**31)."""
    import signal
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", _LONG_CRF_CHILD, str(count)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "calling"
        time.sleep(INTERRUPT_DELAY_S)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=INTERRUPT_HANG_GUARD_S)
    finally:
        child.kill()
        child.wait()
    assert child.returncode != 0 and "returned" not in out
    assert err.rstrip().endswith("KeyboardInterrupt"), err
    assert "_dense_crf_into" in err  # raised by the call itself, not after it
