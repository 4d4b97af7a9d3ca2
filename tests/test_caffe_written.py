"""A .caffemodel written by real pycaffe reads completely with our schema.

tests/data/pycaffe_small.caffemodel was saved by BVLC Caffe (`net.save`) from CAFFE_NET below,
with every parameter blob set to param_values(layer index, blob index, shape). Caffe's
Net::ToProto writes the whole LayerParameter (phase, the layer's own *_param messages, layers
without blobs), so every byte of it must land in a known field. Regenerate with

    SEC_CAFFE_PYTHON=/opt/caffe/venv/bin/python python3 tests/test_caffe_written.py
"""
import importlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import unknown_fields

from sec.proto import caffe_pb2

io = importlib.import_module("sec.caffe.formats")

FIXTURE = Path(__file__).resolve().parent / "data" / "pycaffe_small.caffemodel"
CAFFE_PYTHON = os.environ.get("SEC_CAFFE_PYTHON")
SUPPORTED = ("data", "conv", "bn", "scale", "fc", "prob")  # layers sec.caffe can build
CAFFE_NET = """name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 5 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" batch_norm_param { eps: 0.001 } }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "prelu" type: "PReLU" bottom: "conv" top: "prelu" prelu_param { channel_shared: false } }
layer { name: "fc" type: "InnerProduct" bottom: "prelu" top: "fc" inner_product_param { num_output: 4 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
# Run by Caffe's Python: argv = prototxt, output .caffemodel. Values as param_values() below.
CAFFE_SCRIPT = """
import sys
import numpy as np
import caffe
net = caffe.Net(sys.argv[1], caffe.TEST)
for index, name in enumerate(net._layer_names):
    for blob_index, blob in enumerate(net.layers[index].blobs):
        blob.data[...] = (np.arange(blob.data.size).reshape(blob.data.shape) % 7) * 0.125 \\
            + 10 * index + blob_index
net.save(sys.argv[2])
"""


def param_values(layer_index, blob_index, shape):
    size = int(np.prod(shape))
    return ((np.arange(size).reshape(shape) % 7) * 0.125 + 10 * layer_index + blob_index
            ).astype(np.float32)


def unknown_paths(message, path="net"):
    """Paths of (sub)messages that hold fields our schema does not know."""
    found = [path] if len(unknown_fields.UnknownFieldSet(message)) else []
    for field, value in message.ListFields():
        if field.type != field.TYPE_MESSAGE:
            continue
        values = value if field.is_repeated else [value]
        for index, child in enumerate(values):
            found += unknown_paths(child, f"{path}.{field.name}[{index}]")
    return found


def test_pycaffe_written_caffemodel_has_no_unknown_fields():
    net = io.read_caffemodel(FIXTURE)
    assert unknown_paths(net) == []
    layers = {layer.name: layer for layer in net.layer}
    assert list(layers) == ["data", "conv", "bn", "scale", "prelu", "fc", "prob"]
    assert all(layer.phase == caffe_pb2.TEST for layer in net.layer)
    assert layers["prelu"].type == "PReLU" and not layers["prelu"].prelu_param.channel_shared
    assert layers["bn"].batch_norm_param.eps == pytest.approx(0.001)
    assert [p.lr_mult for p in layers["conv"].param] == [1, 2]
    assert layers["conv"].convolution_param.weight_filler.type == "xavier"


def test_pycaffe_written_blobs_read_as_written():
    net = io.read_caffemodel(FIXTURE)
    expected = {"conv": [(3, 2, 3, 3), (3,)], "bn": [(3,), (3,), (1,)], "scale": [(3,), (3,)],
                "prelu": [(3,)], "fc": [(4, 27), (4,)]}
    weights = io.match_weights(net, expected, str(FIXTURE))
    order = [layer.name for layer in net.layer]
    for name, shapes in expected.items():
        for blob_index, shape in enumerate(shapes):
            np.testing.assert_array_equal(weights[name][blob_index],
                                          param_values(order.index(name), blob_index, shape))


def test_pycaffe_written_caffemodel_loads_into_sec_caffe(tmp_path):
    caffe = importlib.import_module("sec.caffe")
    kept = [line for line in CAFFE_NET.splitlines()
            if not line.startswith("layer") or any(f'name: "{n}"' in line for n in SUPPORTED)]
    prototxt = tmp_path / "small.prototxt"
    prototxt.write_text("\n".join(kept).replace('bottom: "prelu"', 'bottom: "conv"') + "\n")
    net = caffe.Net(str(prototxt), str(FIXTURE), caffe.TEST)
    np.testing.assert_array_equal(net.params["fc"][0].data, param_values(5, 0, (4, 27)))
    np.testing.assert_array_equal(net.params["bn"][2].data, param_values(2, 2, (1,)))


def write_caffemodel(caffe_python, out):
    with tempfile.TemporaryDirectory() as folder:
        prototxt = Path(folder) / "small.prototxt"
        prototxt.write_text(CAFFE_NET)
        subprocess.run([caffe_python, "-c", CAFFE_SCRIPT, str(prototxt), str(out)], check=True,
                       env=dict(os.environ, GLOG_minloglevel="2"), capture_output=True, text=True)


@pytest.mark.skipif(not CAFFE_PYTHON, reason="SEC_CAFFE_PYTHON (a Python with pycaffe) not set")
def test_committed_caffemodel_is_what_caffe_writes(tmp_path):
    write_caffemodel(CAFFE_PYTHON, tmp_path / "small.caffemodel")
    assert (tmp_path / "small.caffemodel").read_bytes() == FIXTURE.read_bytes()


if __name__ == "__main__":
    if not CAFFE_PYTHON:
        sys.exit("set SEC_CAFFE_PYTHON to a Python that imports pycaffe")
    FIXTURE.parent.mkdir(exist_ok=True)
    write_caffemodel(CAFFE_PYTHON, FIXTURE)
    print(f"wrote {FIXTURE}")
