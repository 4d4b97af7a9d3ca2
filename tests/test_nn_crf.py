"""sec.nn's torch dense CRF against krahenbuhl2013: the lattice filter itself, the SEC training
batch (15 x 41 x 41, scale 12), a 375 x 500 image (scale 1), the exact kernels against the
exact reference, and the CRF layer's full step (shrink, clamp, log) against pylayers."""
import numpy as np
import pytest
import torch

import krahenbuhl2013
from krahenbuhl2013 import _core
from pylayers import crf as pycrf
from sec.nn import DenseCRF
from sec.nn import crf as tcrf
from sec.nn.lattice import Lattice, SparseFilter, slice_scale

MARGINAL_TOLERANCE = 1e-3
ARGMAX_AGREEMENT = 0.999


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine torch's pool mostly waits for the other core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def photo_like(height, width, seed, num=1):
    """N x H x W x 3 uint8: a few flat coloured rectangles and discs plus noise (a natural image's
    edges and texture, without shipping a photograph)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:height, :width]
    images = np.empty((num, height, width, 3), dtype=np.float64)
    for image in images:
        image[...] = rng.uniform(0, 255, 3)
        for _ in range(6):
            centre, radius = rng.uniform(0, 1, 2) * (height, width), rng.uniform(0.1, 0.4) * min(height, width)
            inside = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 < radius ** 2
            image[inside] = rng.uniform(0, 255, 3)
        image += rng.normal(0, 6, image.shape)
    return np.clip(np.round(images), 0, 255).astype(np.uint8)


def network_like_unary(num, height, width, labels, seed):
    """N x H x W x L float32 scores, smooth as upsampled network outputs (stride 8)."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.normal(0, 3, (num, labels, height // 8 + 1, width // 8 + 1)).astype(np.float32))
    fine = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=True)
    return np.ascontiguousarray(fine.permute(0, 2, 3, 1).numpy())


def compare(got, want):
    return float(np.abs(got - want).max()), float((got.argmax(-1) == want.argmax(-1)).mean())


@pytest.mark.parametrize("dim,points,spread", [(2, 400, 9.0), (5, 1500, 6.0), (3, 50, 2.0), (1, 30, 4.0)])
def test_lattice_filter_equals_the_cpp_lattice(dim, points, spread):
    rng = np.random.default_rng(dim)
    features = (rng.random((points, dim)) * spread).astype(np.float32)
    values = rng.random(points).astype(np.float32)
    want = _core.filter_scalar(features, values)
    lattice = Lattice(torch.from_numpy(features))
    got = lattice.filter(torch.from_numpy(values)[:, None])[:, 0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    splat, slicing = lattice.sparse_filter(lattice.barycentric)
    sparse = (slicing @ lattice.blur(splat @ torch.from_numpy(values)[:, None]))[:, 0] * slice_scale(dim)
    np.testing.assert_allclose(sparse.numpy(), want, rtol=1e-5, atol=1e-6)


def test_lattice_groups_do_not_mix():
    rng = np.random.default_rng(0)
    features = torch.from_numpy((rng.random((60, 2)) * 3).astype(np.float32))
    values = torch.from_numpy(rng.random((60, 2)).astype(np.float32))
    both = Lattice(torch.cat([features, features]), torch.arange(2).repeat_interleave(60))
    filtered = both.filter(torch.cat([values, values]))
    alone = Lattice(features).filter(values)
    np.testing.assert_allclose(filtered[:60].numpy(), alone.numpy(), rtol=1e-6)
    np.testing.assert_allclose(filtered[60:].numpy(), alone.numpy(), rtol=1e-6)


def test_training_batch_scale_12_matches_krahenbuhl2013():
    images = photo_like(41, 41, seed=1, num=15)
    unaries = network_like_unary(15, 41, 41, 21, seed=2)
    want = krahenbuhl2013.CRF_batch(images, unaries, maxiter=10, scale_factor=12.0)
    got = tcrf.crf(torch.from_numpy(images), torch.from_numpy(unaries), maxiter=10, scale_factor=12.0).numpy()
    largest, agreement = compare(got, want)
    assert largest <= MARGINAL_TOLERANCE and agreement >= ARGMAX_AGREEMENT


@pytest.mark.slow
def test_full_resolution_scale_1_matches_krahenbuhl2013():
    images = photo_like(375, 500, seed=3)
    unaries = network_like_unary(1, 375, 500, 21, seed=4)
    want = krahenbuhl2013.CRF(images[0], unaries[0], maxiter=10, scale_factor=1.0)
    got = tcrf.crf(torch.from_numpy(images), torch.from_numpy(unaries), maxiter=10, scale_factor=1.0)[0].numpy()
    largest, agreement = compare(got, want)
    assert largest <= MARGINAL_TOLERANCE and agreement >= ARGMAX_AGREEMENT


def test_exact_kernels_equal_the_exact_reference():
    images = photo_like(12, 15, seed=5, num=2)
    unaries = network_like_unary(2, 12, 15, 4, seed=6)
    kernels = krahenbuhl2013.sec_kernels(2.0)
    got = tcrf.dense_crf(torch.from_numpy(images), torch.from_numpy(unaries), method="exact", **kernels).numpy()
    for image, unary, result in zip(images, unaries, got):
        want = krahenbuhl2013.exact_dense_crf(image, unary, **kernels)
        np.testing.assert_allclose(result, want, atol=2e-5)


def test_kernels_switch_off_and_zero_iterations_is_the_softmax():
    images = torch.from_numpy(photo_like(9, 11, seed=7))
    unaries = torch.from_numpy(network_like_unary(1, 9, 11, 3, seed=8))
    zero = tcrf.dense_crf(images, unaries, maxiter=0)
    np.testing.assert_allclose(zero.numpy(), torch.softmax(unaries, -1).numpy(), rtol=1e-6)
    for keyword in ("gaussian_weight", "bilateral_weight"):
        want = krahenbuhl2013.dense_crf(images[0].numpy(), unaries[0].numpy(), **{keyword: 0.0})
        got = tcrf.dense_crf(images, unaries, **{keyword: 0.0})[0].numpy()
        assert compare(got, want)[0] < 1e-5


def test_crf_layer_step_equals_pylayers():
    rng = np.random.default_rng(9)
    mean = np.asarray(pycrf.MEAN_BGR, np.float32)[None, :, None, None]
    images = photo_like(81, 81, seed=10, num=3).transpose(0, 3, 1, 2).astype(np.float32) - mean
    scores = rng.normal(0, 3, (3, 21, 11, 11)).astype(np.float32)
    want = pycrf.crf_log_probs(scores, images, krahenbuhl2013.CRF_batch, scale_factor=12.0)
    got = DenseCRF(scale_factor=12.0)(torch.from_numpy(scores), torch.from_numpy(images)).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(np.exp(got), np.exp(want), atol=MARGINAL_TOLERANCE)
    small = pycrf.shrink_images(images, 11, 11)
    np.testing.assert_array_equal(tcrf.shrink_images(torch.from_numpy(images), 11, 11).numpy(), small)


def test_bad_input_is_a_clear_error():
    images, unaries = torch.zeros(1, 4, 4, 3), torch.zeros(1, 4, 5, 2)
    with pytest.raises(ValueError, match="need images N x H x W x 3"):
        tcrf.dense_crf(images, unaries)
    with pytest.raises(ValueError, match="method"):
        tcrf.dense_crf(images, torch.zeros(1, 4, 4, 2), method="fast")
    with pytest.raises(ValueError, match="0..255"):
        tcrf.dense_crf(images - 1, torch.zeros(1, 4, 4, 2))
    with pytest.raises(ValueError, match="at most"):
        tcrf.dense_crf(torch.zeros(1, 80, 80, 3), torch.zeros(1, 80, 80, 2), method="exact")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("method", ["lattice", "exact"])
def test_cuda_training_batch_matches_krahenbuhl2013(method):
    images = photo_like(41, 41, seed=13, num=15)
    unaries = network_like_unary(15, 41, 41, 21, seed=14)
    want = krahenbuhl2013.CRF_batch(images, unaries, maxiter=10, scale_factor=12.0)
    got = tcrf.crf(torch.from_numpy(images).cuda(), torch.from_numpy(unaries).cuda(), maxiter=10,
                   scale_factor=12.0, method=method)
    assert got.device.type == "cuda"
    if method == "lattice":
        largest, agreement = compare(got.cpu().numpy(), want)
        assert largest <= MARGINAL_TOLERANCE and agreement >= ARGMAX_AGREEMENT
    else:
        cpu = tcrf.crf(torch.from_numpy(images), torch.from_numpy(unaries), 10, 12.0, method="exact")
        assert compare(got.cpu().numpy(), cpu.numpy())[0] < 1e-4


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
def test_cuda_full_resolution_matches_krahenbuhl2013():
    images = photo_like(375, 500, seed=15)
    unaries = network_like_unary(1, 375, 500, 21, seed=16)
    want = krahenbuhl2013.CRF(images[0], unaries[0], maxiter=10, scale_factor=1.0)
    got = tcrf.crf(torch.from_numpy(images).cuda(), torch.from_numpy(unaries).cuda(), 10, 1.0)[0].cpu().numpy()
    largest, agreement = compare(got, want)
    assert largest <= MARGINAL_TOLERANCE and agreement >= ARGMAX_AGREEMENT


# --- the GPU-minded build: static key bounds, sparse blur passes, the cached Gaussian ------------

def test_lattice_with_static_bounds_equals_the_lattice_with_data_bounds():
    """Keys packed with strides from the features' possible range (no host read) make the same
    lattice as strides from their actual range: same vertices, neighbours, filter."""
    rng = np.random.default_rng(5)
    features = torch.from_numpy((rng.random((900, 5)) * [6, 6, 19.6, 19.6, 19.6]).astype(np.float32))
    groups = torch.arange(3).repeat_interleave(300)
    by_data = Lattice(features, groups)
    static = Lattice(features, groups, bounds=([0.0] * 5, [6.0, 6.0, 19.6, 19.6, 19.6]), num_groups=3)
    assert static.num_vertices == by_data.num_vertices
    torch.testing.assert_close(static.vertex, by_data.vertex)
    torch.testing.assert_close(static.neighbours, by_data.neighbours)


@pytest.mark.parametrize("dim", [2, 5])
def test_sparse_filter_equals_the_index_filter(dim):
    """The CSR path (splat, d+1 blur passes, slice as sparse products) is the index path's filter."""
    rng = np.random.default_rng(dim + 10)
    features = torch.from_numpy((rng.random((700, dim)) * 5).astype(np.float32))
    values = torch.from_numpy(rng.random((700, 3)).astype(np.float32))
    lattice = Lattice(features)
    want = lattice.filter(values)
    got = SparseFilter(lattice, lattice.barycentric, slice_scale(dim)).apply(values)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(SparseFilter(lattice, lattice.barycentric, slice_scale(dim)).apply(
        values, add_to=torch.ones_like(values)).numpy(), want.numpy() + 1, rtol=1e-5, atol=1e-6)


def test_the_gaussian_kernel_is_built_once_per_shape():
    images = torch.from_numpy(photo_like(21, 21, seed=7, num=2))
    unaries = torch.from_numpy(network_like_unary(2, 21, 21, 4, seed=8))
    tcrf._gaussian.cache_clear()
    first = tcrf.crf(images, unaries, scale_factor=12.0)
    second = tcrf.crf(images, unaries, scale_factor=12.0)
    info = tcrf._gaussian.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    want = krahenbuhl2013.CRF_batch(images.numpy(), unaries.numpy(), maxiter=10, scale_factor=12.0)
    assert compare(second.numpy(), want)[0] <= MARGINAL_TOLERANCE
