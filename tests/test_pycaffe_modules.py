"""pycaffe's Python modules on the engine, offline: Classifier and Detector against the steps they
are made of, caffe.io's round trips and rules, net_spec's text building the same net. (Agreement
with BVLC's own modules, byte for byte and array for array: tests/test_pycaffe_live.py.)"""
import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image

from sec import caffe
from sec.caffe import io as caffe_io
from sec.caffe.net_spec import layers as L
from sec.caffe.net_spec import params as P
from sec.proto import caffe_pb2

RNG = np.random.default_rng(5)
CLASSES = 4
DEPLOY = f"""name: "tiny"
input: "data" input_shape {{ dim: 2 dim: 3 dim: 6 dim: 6 }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param {{ num_output: {CLASSES} weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "prob" type: "Softmax" bottom: "ip" top: "prob" }}
"""


@pytest.fixture
def model(tmp_path):
    (tmp_path / "deploy.prototxt").write_text(DEPLOY)
    net = caffe.Net(str(tmp_path / "deploy.prototxt"), caffe.TEST)
    net.save(str(tmp_path / "tiny.caffemodel"))
    return str(tmp_path / "deploy.prototxt"), str(tmp_path / "tiny.caffemodel")


def reference_probs(model, batch):
    """Second path: a plain Net (batch 2) on already preprocessed K x H x W inputs, one at a time."""
    net = caffe.Net(model[0], caffe.TEST, weights=model[1])
    probs = []
    for item in batch:
        net.blobs["data"].data[0] = item
        probs.append(net.forward()["prob"][0].copy())
    return np.stack(probs)


def test_classifier_centre_crop_and_oversampling(model):
    mean = np.array([0.1, 0.2, 0.3])
    clf = caffe.Classifier(*model, image_dims=(8, 9), mean=mean, raw_scale=2.0, channel_swap=(2, 1, 0))
    images = [RNG.random((10, 12, 3)).astype(np.float32) for _ in range(3)]
    resized = [caffe_io.resize_image(im, (8, 9)) for im in images]

    def prep(crop):
        return (crop.transpose(2, 0, 1)[[2, 1, 0]] * 2.0 - mean[:, None, None]).astype(np.float32)

    centre = [im[1:7, 1:7] for im in resized]          # (8, 9) image, 6 x 6 crop: int(1.0), int(1.5)
    want = reference_probs(model, np.stack([prep(c) for c in centre]))
    np.testing.assert_allclose(clf.predict(images, oversample=False), want, rtol=1e-5, atol=1e-7)
    crops = caffe_io.oversample(resized, (6, 6))
    want = reference_probs(model, np.stack([prep(c) for c in crops])).reshape(3, 10, CLASSES).mean(1)
    np.testing.assert_allclose(clf.predict(images), want, rtol=1e-5, atol=1e-7)


def test_detector_windows_with_and_without_context(model, tmp_path):
    pixels = RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "im.png")
    windows = np.array([[2, 3, 14, 15], [5, 0, 11, 20]])
    det = caffe.Detector(*model)
    found = det.detect_windows([(str(tmp_path / "im.png"), windows)])
    assert [d["filename"] for d in found] == [str(tmp_path / "im.png")] * 2
    image = pixels.astype(np.float32) / 255
    batch = np.stack([caffe_io.resize_image(image[y0:y1, x0:x1], (6, 6)).transpose(2, 0, 1)
                      for y0, x0, y1, x1 in windows])
    np.testing.assert_allclose(np.stack([d["prediction"] for d in found]), reference_probs(model, batch),
                               rtol=1e-5, atol=1e-7)
    padded = caffe.Detector(*model, mean=np.array([0.5, 0.5, 0.5]), context_pad=1)
    crop = padded.crop(image, windows[0])
    # the window grown by 1.5 (6 / (6 - 2 x 1)) around its centre: rows -1..18, columns 0..19
    np.testing.assert_allclose(crop, caffe_io.resize_image(image[0:18, 0:19], (6, 6)), rtol=1e-6)


def test_transformer_round_trip_and_errors():
    t = caffe_io.Transformer({"data": (1, 3, 5, 4)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([10.0, 20.0, 30.0]))
    t.set_input_scale("data", 0.5)
    image = RNG.random((5, 4, 3)).astype(np.float32)
    kept = image.copy()
    caffe_in = t.preprocess("data", image)
    np.testing.assert_array_equal(image, kept)               # the caller's array is not scaled in place
    np.testing.assert_allclose(caffe_in, (image.transpose(2, 0, 1)[[2, 1, 0]] * 255 - [[[10]], [[20]], [[30]]]) * 0.5,
                               rtol=1e-6)
    np.testing.assert_allclose(t.deprocess("data", caffe_in), image, rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="is not one of the net inputs"):
        t.preprocess("label", image)
    with pytest.raises(Exception, match="Transpose order needs"):
        t.set_transpose("data", (1, 0))
    with pytest.raises(ValueError, match="Mean channels incompatible"):
        t.set_mean("data", np.zeros(4))


def test_resize_and_oversample_rules():
    np.testing.assert_array_equal(caffe_io.resize_image(np.full((4, 4, 3), 0.3, np.float32), (2, 5)),
                                  np.full((2, 5, 3), 0.3, np.float32))
    image = RNG.random((6, 8, 3)).astype(np.float32)
    same = caffe_io.resize_image(image, (6, 8))             # no anti-aliasing, unit zoom: the image
    np.testing.assert_allclose(same, image, atol=1e-6)
    bigger = caffe_io.resize_image(image, (12, 16))
    assert bigger.min() >= image.min() - 1e-6 and bigger.max() <= image.max() + 1e-6   # clipped to the input range
    crops = caffe_io.oversample([image], (4, 5))
    assert crops.shape == (10, 4, 5, 3)
    np.testing.assert_array_equal(crops[0], image[:4, :5])
    np.testing.assert_array_equal(crops[3], image[2:, 3:])
    np.testing.assert_array_equal(crops[4], image[1:5, 1:6])     # centre (3, 4) -/+ (2, 2.5), truncated
    np.testing.assert_array_equal(crops[5], crops[0][:, ::-1])


def test_blob_and_datum_converters_round_trip():
    arr = RNG.random((2, 3, 4))
    blob = caffe_io.array_to_blobproto(arr, diff=2 * arr)
    np.testing.assert_allclose(caffe_io.blobproto_to_array(blob), arr, rtol=1e-6)
    np.testing.assert_allclose(caffe_io.blobproto_to_array(blob, return_diff=True), 2 * arr, rtol=1e-6)
    arrays = caffe_io.blobprotovector_str_to_arraylist(caffe_io.arraylist_to_blobprotovector_str([arr, arr[0]]))
    assert [a.shape for a in arrays] == [(2, 3, 4), (3, 4)]
    uint8 = RNG.integers(0, 256, (3, 2, 2), dtype=np.uint8)
    datum = caffe_io.array_to_datum(uint8, label=7)
    assert datum.label == 7 and datum.data == uint8.tobytes()
    np.testing.assert_array_equal(caffe_io.datum_to_array(datum), uint8)
    np.testing.assert_allclose(caffe_io.datum_to_array(caffe_io.array_to_datum(arr)), arr, rtol=1e-6)
    with pytest.raises(ValueError, match="Incorrect array shape"):
        caffe_io.array_to_datum(np.zeros((2, 2)))


def test_load_image_colour_grey_and_alpha(tmp_path):
    rgba = RNG.integers(0, 256, (3, 4, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    colour = caffe_io.load_image(str(tmp_path / "a.png"))
    np.testing.assert_allclose(colour, rgba[:, :, :3] / 255.0, atol=1e-7)
    grey = caffe_io.load_image(str(tmp_path / "a.png"), color=False)
    alpha = rgba[:, :, 3:] / 255.0
    blended = (1 - alpha) + alpha * rgba[:, :, :3] / 255.0
    np.testing.assert_allclose(grey[:, :, 0], blended @ [0.2125, 0.7154, 0.0721], atol=1e-6)
    Image.fromarray(rgba[:, :, 0]).save(tmp_path / "g.png")
    assert caffe_io.load_image(str(tmp_path / "g.png")).shape == (3, 4, 3)
    assert caffe_io.load_image(str(tmp_path / "g.png"), color=False).shape == (3, 4, 1)


def test_net_spec_text_parses_back_and_builds(tmp_path):
    n = caffe.NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[2, 1, 8, 8]), dict(dim=[2])], ntop=2)
    n.conv = L.Convolution(n.data, kernel_size=3, num_output=4, weight_filler=dict(type="xavier"),
                           param=[dict(lr_mult=1), dict(lr_mult=2)])
    n.pool = L.Pooling(n.conv, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.relu = L.ReLU(n.pool, in_place=True)
    n.ip = L.InnerProduct(L.Flatten(n.relu), num_output=3)
    n.loss = L.SoftmaxWithLoss(n.ip, n.label)
    proto = n.to_proto()
    assert [layer.name for layer in proto.layer] == ["data", "conv", "pool", "relu", "Flatten1", "ip", "loss"]
    assert list(proto.layer[3].top) == ["pool"] and proto.layer[2].pooling_param.pool == caffe_pb2.PoolingParameter.MAX
    assert [p.lr_mult for p in proto.layer[1].param] == [1, 2]
    parsed = text_format.Parse(str(proto), caffe_pb2.NetParameter())
    assert parsed == proto
    (tmp_path / "spec.prototxt").write_text(str(proto))
    net = caffe.Net(str(tmp_path / "spec.prototxt"), caffe.TRAIN)
    assert net.blobs["ip"].shape == (2, 3) and net.outputs == ["loss"]
    with pytest.raises(TypeError, match=r"^Silence input 0 is not a Top \(type is <class 'tuple'>\)$"):
        L.Silence(L.DummyData(ntop=2), ntop=0)
    with pytest.raises(AttributeError, match="no top named 'nope'"):
        n.nope  # noqa: B018
