"""Fuzzing (hypothesis) of the binary readers and of the CRF binding's argument handling.

Whatever bytes or arguments come in, each entry point either works or raises one of its
documented exceptions; no crash, no hang, no stray IndexError/TypeError without a file name:
- .caffemodel / .solverstate (sec.caffe.formats, sec.caffe.weights.copy_weights): CaffeFormatError or
  WeightShapeError (ValueErrors naming the file), on random bytes, on byte-level mutations of a
  valid file and on well-formed files with odd blob shapes;
- the cue pickle's arrays (pylayers.cues, as the Annotation layer reads them): ValueError or
  KeyError naming the image id and the file;
- krahenbuhl2013.CRF / CRF_batch: ValueError ("need ..., got ...") for any dtype, shape, memory
  layout, NaN/Inf, maxiter, scale_factor and num_threads.

Bounded to run in well under a minute on a CI core: few examples each, small arrays, and
derandomize=True, so every run tries the same inputs (no flaky CI).
"""
import tempfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="pip install -r python-dependencies.txt")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from pylayers import cues as cue_reader  # noqa: E402
from sec.caffe import formats  # noqa: E402
from sec.caffe.weights import copy_weights  # noqa: E402
from sec.proto import caffe_pb2  # noqa: E402

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
READER_ERRORS = (formats.CaffeFormatError, formats.WeightShapeError)


def _as_file(data, suffix):
    handle = tempfile.NamedTemporaryFile(suffix=suffix, delete=False)
    with handle:
        handle.write(data)
    return Path(handle.name)


def _read_bytes(data, reader, suffix):
    path = _as_file(data, suffix)
    try:
        return reader(path)
    except READER_ERRORS as err:
        assert str(path) in str(err), f"error does not name the file: {err}"
        return None
    finally:
        path.unlink()


# --- .caffemodel and .solverstate --------------------------------------------------------------

# What the tiny net expects of the file: {layer: [parameter shapes]}.
TARGETS = {"conv": [(2, 3, 1, 1), (2,)], "fc": [(4, 2)], "relu": []}


def _valid_caffemodel():
    net = caffe_pb2.NetParameter(name="fuzz")
    for name, shapes in TARGETS.items():
        layer = net.layer.add(name=name, type="Convolution" if shapes else "ReLU")
        for shape in shapes:
            layer.blobs.append(formats.array_to_blob(np.ones(shape, np.float32)))
    return net.SerializeToString()


def _valid_solverstate():
    state = caffe_pb2.SolverState(iter=7, learned_net="w.caffemodel", current_step=1)
    state.history.append(formats.array_to_blob(np.arange(6, dtype=np.float32).reshape(2, 3)))
    return state.SerializeToString()


VALID = {"caffemodel": _valid_caffemodel(), "solverstate": _valid_solverstate()}


def _load_into_tiny_net(path):
    import torch

    targets = {name: [torch.zeros(shape) for shape in shapes] for name, shapes in TARGETS.items()}
    return copy_weights(path, targets)


@st.composite
def mutated(draw, original):
    """`original` with a few bytes overwritten, inserted or deleted, and maybe truncated."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, max(len(data) - 1, 0)))
        action = draw(st.sampled_from(["set", "insert", "delete"]))
        byte = draw(st.integers(0, 255))
        if action == "set" and data:
            data[where] = byte
        elif action == "insert":
            data.insert(where, byte)
        elif data:
            del data[where]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@FUZZ
@given(st.binary(max_size=256))
def test_random_bytes_are_a_format_error(data):
    _read_bytes(data, formats.read_caffemodel, ".caffemodel")
    _read_bytes(data, formats.read_solverstate, ".solverstate")


@FUZZ
@given(mutated(VALID["caffemodel"]))
def test_mutated_caffemodel_loads_or_names_the_file(data):
    _read_bytes(data, _load_into_tiny_net, ".caffemodel")


@FUZZ
@given(mutated(VALID["solverstate"]))
def test_mutated_solverstate_reads_or_names_the_file(data):
    _read_bytes(data, formats.read_solverstate, ".solverstate")


DIMS = st.integers(-3, 5) | st.sampled_from([2**31, 2**40, -(2**40)])


@FUZZ
@given(shape=st.lists(DIMS, max_size=5), legacy=st.none() | st.tuples(DIMS, DIMS, DIMS, DIMS),
       count=st.integers(0, 40), double=st.booleans(), layer=st.sampled_from(["conv", "fc"]))
def test_odd_blob_shapes_are_a_format_or_shape_error(shape, legacy, count, double, layer):
    """Well-formed protobuf, any declared shape (negative, huge, legacy 4-D) and value count."""
    net = caffe_pb2.NetParameter(name="odd")
    blob = net.layer.add(name=layer, type="InnerProduct").blobs.add()
    try:
        blob.shape.dim.extend(shape)
        if legacy is not None:
            blob.num, blob.channels, blob.height, blob.width = legacy
    except ValueError:   # out of the field's int32 range: protobuf itself refuses it
        return
    (blob.double_data if double else blob.data).extend([0.5] * count)
    _read_bytes(net.SerializeToString(), _load_into_tiny_net, ".caffemodel")
    state = caffe_pb2.SolverState(iter=1)
    state.history.append(blob)
    _read_bytes(state.SerializeToString(), formats.read_solverstate, ".solverstate")


# --- the cue pickle's arrays ------------------------------------------------------------------

CUE_SOURCE = "fuzz_cues.pickle"
NUM_CLASSES, CUE_SIZE = 5, 6
CUE_DTYPES = st.sampled_from([np.int64, np.int32, np.uint8, np.int8, np.float64, np.float32,
                              np.bool_])
# Any value of the dtype (NaN, huge integers), any shape up to 3-D.
cue_arrays = hnp.arrays(CUE_DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0,
                                                      max_side=5))


@st.composite
def cue_entry(draw):
    """One image's '<id>_labels' and '<id>_cues' values: mostly arrays, sometimes lists."""
    labels = draw(cue_arrays | st.lists(st.integers(-2, 7), max_size=4))
    points = draw(cue_arrays | st.lists(st.lists(st.integers(-2, 7), max_size=3), max_size=3))
    return labels, points


@FUZZ
@given(entries=st.lists(cue_entry(), min_size=1, max_size=3), drop=st.booleans())
def test_cue_arrays_are_read_or_refused_naming_image_and_file(entries, drop):
    cues = {}
    for image, (labels, points) in enumerate(entries):
        cues[f"{image}_labels"], cues[f"{image}_cues"] = labels, points
    if drop:
        del cues[f"{len(entries) - 1}_cues"]
    images = list(range(len(entries)))
    for read in (lambda: [cue_reader.image_labels_and_cues(cues, i, NUM_CLASSES, CUE_SIZE,
                                                           CUE_SOURCE) for i in images],
                 lambda: cue_reader.batch_labels_and_cues(cues, images, NUM_CLASSES, CUE_SIZE,
                                                          CUE_SOURCE)):
        try:
            read()
        except (ValueError, KeyError) as err:
            assert "image id" in str(err) and CUE_SOURCE in str(err), err


# --- the CRF binding ----------------------------------------------------------------------------

krahenbuhl2013 = pytest.importorskip("krahenbuhl2013", reason="pip install ./CRF first")

CRF_DTYPES = st.sampled_from([np.uint8, np.int16, np.int64, np.uint16, np.float16, np.float32,
                              np.float64, np.bool_, np.complex64])
small_shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@st.composite
def crf_array(draw, shape=None, channels=None):
    """An array of a drawn dtype and (mostly HxWxC) shape, with NaN/Inf sometimes, and a
    drawn memory layout: C order, Fortran order, a strided slice or a transposed view."""
    if shape is None:
        height, width = draw(st.integers(0, 5)), draw(st.integers(0, 5))
        depth = channels if channels is not None and draw(st.booleans()) else draw(st.integers(0, 4))
        shape = draw(st.just((height, width, depth)) | small_shapes)
    dtype = draw(CRF_DTYPES)
    values = draw(st.sampled_from(["pixels", "scores", "special"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    array = rng.uniform(0, 255, size=shape) if values == "pixels" else rng.normal(0, 3, size=shape)
    if values == "special" and array.size:
        array.flat[rng.integers(array.size)] = draw(st.sampled_from([np.nan, np.inf, -np.inf,
                                                                     1e30, -1e30, 300.0, -2.0]))
    with np.errstate(invalid="ignore", over="ignore"):
        array = array.astype(dtype)
    layout = draw(st.sampled_from(["C", "F", "strided", "transposed"]))
    if layout == "F":
        array = np.asfortranarray(array)
    elif layout == "strided" and array.ndim:
        array = np.repeat(array, 2, axis=0)[::2]
    elif layout == "transposed" and array.ndim == 3:
        array = np.ascontiguousarray(array.transpose(1, 0, 2)).transpose(1, 0, 2)
    return array


ITERATIONS = (st.integers(-2, 3) | st.sampled_from([1000, 1001, 2**31 - 1, 2**31, 2**63])
              | st.sampled_from([2.0, 2.5, None, "3", True]))
SCALES = (st.floats(allow_nan=True, allow_infinity=True)
          | st.sampled_from([1.0, 12.0, 0.0, -1.0, 1e-30, 1e30, "1", None]))
THREADS = st.integers(-2, 3) | st.sampled_from([2**31, 2.0, None])


def _crf_call_is_clean(call):
    try:
        result = call()
    except ValueError as err:
        assert str(err).startswith(("need", "image ", "images: ")), err
        return None
    return result


@FUZZ
@given(image=crf_array(channels=3), unary=crf_array(), maxiter=ITERATIONS, scale=SCALES)
def test_crf_arguments_work_or_raise_value_error(image, unary, maxiter, scale):
    q = _crf_call_is_clean(lambda: krahenbuhl2013.CRF(image, unary, maxiter=maxiter,
                                                      scale_factor=scale))
    if q is not None:
        assert q.dtype == np.float32 and q.shape == unary.shape
        assert np.isfinite(q).all() and np.allclose(q.sum(axis=2), 1, atol=1e-3)


@FUZZ
@given(pairs=st.lists(st.tuples(crf_array(channels=3), crf_array()), max_size=3),
       as_stack=st.booleans(), maxiter=ITERATIONS, scale=SCALES, threads=THREADS)
def test_crf_batch_arguments_work_or_raise_value_error(pairs, as_stack, maxiter, scale, threads):
    images, unaries = [p[0] for p in pairs], [p[1] for p in pairs]
    if as_stack:
        try:
            images, unaries = np.stack(images), np.stack(unaries)
        except ValueError:   # different shapes cannot be stacked: lists it is
            pass
    _crf_call_is_clean(lambda: krahenbuhl2013.CRF_batch(images, unaries, maxiter=maxiter,
                                                        scale_factor=scale, num_threads=threads))


# --- sec.nn's public modules ---------------------------------------------------------------------
# Each call either returns finite values equal to the numpy layers' (pylayers) or raises one
# ValueError/TypeError whose message starts with the module and names a bad argument.
import torch  # noqa: E402

import krahenbuhl2013  # noqa: E402
import sec.nn as secnn  # noqa: E402
from pylayers import crf as pycrf  # noqa: E402
from pylayers import functions as P  # noqa: E402

NN_FUZZ = settings(FUZZ, max_examples=60)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
DEFECTS = ["nan", "inf", "3-D", "empty", "int", "list", "other device", "shape"]
LOSS_RTOL = 1e-4


@st.composite
def nn_case(draw):
    """A valid NCHW case (numpy probabilities from pylayers' softmax) and the defect given to each
    argument (None: valid)."""
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    seed = draw(st.integers(0, 2 ** 16))
    defects = {name: draw(st.sampled_from([None] * 3 + DEFECTS)) for name in ("probs", "other")}
    if defects["probs"] == defects["other"] == "shape":     # the same extra channel on both: consistent
        defects["probs"] = None
    return shape, seed, draw(st.sampled_from(FLOATS)), draw(st.sampled_from(DEVICES)), defects


def _damaged(array, defect, dtype, device, floating=True):
    """(``array`` as a tensor with ``defect`` (see DEFECTS), whether that makes it a bad argument):
    an integer dtype is bad only where a floating one is needed, another device only where there
    is one (CUDA beside the CPU)."""
    if defect == "other device" and len(DEVICES) == 1:
        defect = None
    if defect == "list":
        return array.tolist(), True
    if defect == "3-D":
        array = array[0]
    elif defect == "empty":
        array = array[:0]
    elif defect == "shape":
        array = np.concatenate([array, array[:, :1]], axis=1)
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    tensor = tensor.to(torch.int64) if defect == "int" else tensor.to(dtype)
    if defect in ("nan", "inf"):
        tensor.view(-1)[0] = float(defect)
    if defect == "other device":
        device = "cpu" if device != "cpu" else "cuda"
    return tensor.to(device), defect is not None and (defect != "int" or floating)


def _names_a_bad_argument(err, module, bad):
    text = str(err)
    assert text.startswith(f"{module}:"), text
    assert any(name in text for name in bad), f"{text!r} names none of {bad}"


def _check_call(module, call, want, bad):
    """``call()`` raises naming one of ``bad`` (it must when ``bad`` is not empty, or when the
    numpy layer's result is not finite: then naming probs), or returns finite values equal to
    ``want()`` (pylayers)."""
    if not bad:
        with np.errstate(all="ignore"):
            expected = np.asarray(want(), dtype=np.float64)
        if not np.isfinite(expected).all():
            bad = ["probs"]
    try:
        got = call()
    except (ValueError, TypeError) as err:
        assert bad, f"valid input refused: {err}"
        _names_a_bad_argument(err, module, bad)
        return
    assert not bad, f"{module} accepted bad {bad}"
    got = got.detach().float().cpu().numpy()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=LOSS_RTOL, atol=1e-6)


def _loss_case(case, other_kind):
    shape, seed, dtype, device, defects = case
    rng = np.random.default_rng(seed)
    scores = rng.normal(0, 3, shape).astype(np.float32)
    probs = P.softmax_with_floor(scores.copy())
    probs = torch.from_numpy(probs).to(dtype).float().numpy()     # what the module computes with
    others = {"cues": (rng.random(shape) < 0.3).astype(np.float32),
              "labels": (rng.random((shape[0], 1, 1, shape[1])) < 0.5).astype(np.float32),
              "log_q": np.log(P.softmax_with_floor(rng.normal(0, 2, shape).astype(np.float32)))}
    other = torch.from_numpy(others[other_kind]).to(dtype).float().numpy()
    tensors, bad = {}, []
    for name, key, array, floating in (("probs", "probs", probs, True),
                                       (other_kind, "other", other, other_kind == "log_q")):
        tensors[name], is_bad = _damaged(array, defects[key], dtype, device, floating)
        if is_bad:
            # a wrong shape or device is a mismatch with the other argument: naming either is right
            bad += [name, "device", "probs", other_kind] if defects[key] in ("shape", "other device") else [name]
    return probs, other, tensors, bad


@NN_FUZZ
@given(case=nn_case(), which=st.sampled_from(["seed", "expand", "constrain"]))
def test_sec_nn_losses_equal_pylayers_or_name_the_argument(case, which):
    other_kind = {"seed": "cues", "expand": "labels", "constrain": "log_q"}[which]
    probs, other, tensors, bad = _loss_case(case, other_kind)
    module = {"seed": secnn.SeedLoss(), "expand": secnn.ExpandLoss(), "constrain": secnn.ConstrainLoss()}[which]
    numpy_loss = {"seed": P.seed_loss, "expand": P.expand_loss, "constrain": P.constrain_loss}[which]
    _check_call(type(module).__name__, lambda: module(tensors["probs"], tensors[other_kind]),
                lambda: np.float32(numpy_loss(probs, other)[0]), bad)


@NN_FUZZ
@given(case=nn_case(), min_prob=st.sampled_from([1e-4, 0.0, 0.5, -0.5, 1.0, float("nan"), "x"]))
def test_sec_nn_softmax_equals_pylayers_or_names_the_argument(case, min_prob):
    shape, seed, dtype, device, defects = case
    scores = np.random.default_rng(seed).normal(0, 3, shape).astype(np.float32)
    scores = torch.from_numpy(scores).to(dtype).float().numpy()
    defect = None if defects["probs"] in ("shape", "other device") else defects["probs"]   # one input: no mismatch
    try:
        module = secnn.SoftmaxWithFloor(min_prob)
    except ValueError as err:
        assert not (isinstance(min_prob, float) and 0 <= min_prob < 1)
        return _names_a_bad_argument(err, "SoftmaxWithFloor", ["min_prob"])
    assert isinstance(min_prob, float) and 0 <= min_prob < 1
    tensor, is_bad = _damaged(scores, defect, dtype, device)
    bad = ["scores"] if is_bad else []
    _check_call("SoftmaxWithFloor", lambda: module(tensor), lambda: P.softmax_with_floor(scores.copy(), min_prob), bad)


PARAMS = st.sampled_from([0.5, 0.996, 0.0, 1.0, 1.5, -0.1, float("nan"), float("inf"), "x", None])


@NN_FUZZ
@given(q_fg=PARAMS, q_bg=PARAMS, pooling=st.sampled_from(["gwrp", "gmp", "gap", "median"]))
def test_sec_nn_expand_parameters_are_checked(q_fg, q_bg, pooling):
    valid = {name: isinstance(v, float) and 0 <= v <= 1 for name, v in (("q_fg", q_fg), ("q_bg", q_bg))}
    valid["pooling"] = pooling in P.POOLINGS
    try:
        secnn.ExpandLoss(q_fg=q_fg, q_bg=q_bg, pooling=pooling)
    except ValueError as err:
        _names_a_bad_argument(err, "ExpandLoss", [name for name, ok in valid.items() if not ok])
        return
    assert all(valid.values())


@settings(NN_FUZZ, max_examples=25)
@given(seed=st.integers(0, 2 ** 16), num=st.integers(0, 2), side=st.integers(1, 5), classes=st.integers(1, 3),
       defect=st.sampled_from([None, None, "nan", "inf", "3-D", "channels", "other device", "int"]),
       maxiter=st.sampled_from([0, 3, 10, -1, 1.5, 10 ** 9, True]),
       scale=st.sampled_from([12.0, 1.0, 0.0, -2.0, float("inf")]))
def test_sec_nn_dense_crf_equals_pylayers_or_names_the_argument(seed, num, side, classes, defect, maxiter, scale):
    rng = np.random.default_rng(seed)
    scores = rng.normal(0, 2, (num, classes, side, side)).astype(np.float32)
    images = rng.uniform(-120, 150, (num, 3, 2 * side + 1, 2 * side + 1)).astype(np.float32)
    good_params = (isinstance(maxiter, int) and not isinstance(maxiter, bool) and 0 <= maxiter <= 1000
                   and 0 < scale < float("inf"))
    try:
        module = secnn.DenseCRF(scale_factor=scale, maxiter=maxiter)
    except ValueError as err:
        assert not good_params
        return _names_a_bad_argument(err, "DenseCRF", ["maxiter", "scale_factor"])
    assert good_params
    device = DEVICES[-1]
    image_tensor = torch.from_numpy(images[:, :2] if defect == "channels" else images).to(device)
    score_tensor, is_bad = _damaged(scores, defect if defect != "channels" else None, torch.float32, device)
    bad = ["scores", "images", "device"] if is_bad or defect == "channels" or num == 0 else []
    want = lambda: np.exp(pycrf.crf_log_probs(scores, images, krahenbuhl2013.CRF_batch, scale, maxiter))  # noqa: E731
    try:
        got = module(score_tensor, image_tensor)
    except (ValueError, TypeError) as err:
        assert bad, f"valid input refused: {err}"
        return _names_a_bad_argument(err, "DenseCRF", bad)
    assert not bad, f"DenseCRF accepted bad input ({defect}, N={num})"
    np.testing.assert_allclose(np.exp(got.cpu().numpy()), want(), atol=1e-3)
