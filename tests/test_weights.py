"""sec.caffe.weights: copying a .caffemodel (or Caffe's HDF5 layout) by layer name reports what it
loaded, ignored and left at its fillers; NaN/Inf weights are refused before anything changes by
default (the project's tools), loaded with a warning by pycaffe's Net/copy_from (as Caffe loads them)."""
import logging

import numpy as np
import pytest
import torch

from sec import caffe
from sec.caffe import formats
from sec.caffe.weights import MissingWeightsError, NonFiniteWeightsError, WeightReport, copy_weights

NET = """name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc8" type: "Convolution" bottom: "conv1" top: "fc8"
        convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 1 } } }
"""
CONV1 = [np.full((2, 3, 1, 1), 0.5, np.float32), np.full(2, 0.25, np.float32)]


@pytest.fixture
def net(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    return caffe.Net(str(path), caffe.TEST)


def write(tmp_path, layers, name="w.caffemodel"):
    path = tmp_path / name
    formats.write_caffemodel(path, "src", layers)
    return str(path)


def test_report_lists_loaded_untouched_and_ignored_layers_and_logs_them(tmp_path, net, caplog):
    path = write(tmp_path, [("conv1", "Convolution", CONV1), ("fc8-old", "Convolution", [np.zeros((3, 2, 1, 1))]),
                            ("relu1", "ReLU", [])])
    fc8_before = net.params["fc8"][0].data.copy()
    with caplog.at_level(logging.INFO, logger="sec.caffe.weights"):
        report = net.copy_from(path)
    assert (report.loaded, report.untouched, report.ignored) == (["conv1"], ["fc8"], ["fc8-old"])
    assert net.weight_report is report
    np.testing.assert_array_equal(net.params["conv1"][0].data, CONV1[0])
    np.testing.assert_array_equal(net.params["fc8"][0].data, fc8_before)
    assert "Ignoring source layer fc8-old" in caplog.text          # Caffe's line
    assert "fc8" in caplog.text and "filler" in caplog.text
    with pytest.raises(MissingWeightsError, match=r"w\.caffemodel: parameter layer\(s\) 'fc8'"):
        report.require_complete()
    assert report.require_complete(allow=["fc8"]) is report


def test_net_built_with_weights_carries_the_report(tmp_path, net):
    full = write(tmp_path, [(n, "Convolution", [p.data for p in blobs]) for n, blobs in net.params.items()])
    again = caffe.Net(str(tmp_path / "net.prototxt"), full, caffe.TEST)
    assert again.weight_report.untouched == [] and again.weight_report.loaded == ["conv1", "fc8"]
    assert caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST).weight_report is None


def test_weights_matching_no_layer_load_nothing(tmp_path, net):
    report = net.copy_from(write(tmp_path, [("other", "InnerProduct", [np.ones((2, 2))])]))
    assert report.loaded == [] and report.untouched == ["conv1", "fc8"] and report.ignored == ["other"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused_naming_the_layer_and_nothing_changes(tmp_path, net, bad):
    weights = [CONV1[0], CONV1[1].copy()]
    weights[1][1] = bad
    fc8 = np.ones((3, 2, 1, 1), np.float32)
    path = write(tmp_path, [("fc8", "Convolution", [fc8, np.zeros(3)]), ("conv1", "Convolution", weights)])
    targets = {name: [p.param for p in blobs] for name, blobs in net.params.items()}
    before = {n: [p.data.copy() for p in blobs] for n, blobs in net.params.items()}
    with pytest.raises(NonFiniteWeightsError, match=r"w\.caffemodel: layer 'conv1' blob 1 holds 1 non-finite"):
        copy_weights(path, targets)
    for name, blobs in net.params.items():
        for p, old in zip(blobs, before[name]):
            np.testing.assert_array_equal(p.data, old)
    assert isinstance(NonFiniteWeightsError("x"), ValueError)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_pycaffe_loads_non_finite_weights_with_a_warning_and_the_tools_check_refuses(tmp_path, net, bad, caplog):
    """Caffe's CopyTrainedLayersFrom loads NaN/Inf; so do Net(..., weights=) and copy_from, warning;
    require_complete (what deploy, evaluate and make_cues call) still refuses them."""
    weights = [CONV1[0], CONV1[1].copy()]
    weights[1][1] = bad
    path = write(tmp_path, [("conv1", "Convolution", weights)])
    with caplog.at_level(logging.WARNING, logger="sec.caffe.weights"):
        report = net.copy_from(path)
    assert report.nonfinite == [("conv1", 1, 1)]
    assert "layer 'conv1' blob 1 holds 1 non-finite" in caplog.text
    np.testing.assert_array_equal(net.params["conv1"][1].data, weights[1])
    again = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST, weights=path)
    np.testing.assert_array_equal(again.params["conv1"][1].data, weights[1])
    with pytest.raises(NonFiniteWeightsError, match=r"w\.caffemodel: layer 'conv1' blob 1 holds 1 non-finite"):
        again.weight_report.require_complete(allow=["fc8"])


def test_copy_weights_into_plain_tensors(tmp_path):
    target = {"conv1": [torch.zeros(2, 3, 1, 1), torch.zeros(2)], "pool": []}
    report = copy_weights(write(tmp_path, [("conv1", "Convolution", CONV1)]), target)
    assert report == WeightReport(source=str(tmp_path / "w.caffemodel"), loaded=["conv1"])
    assert torch.equal(target["conv1"][1], torch.full((2,), 0.25))
