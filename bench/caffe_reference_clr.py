"""Fixtures from the real BVLC Caffe 1.0 that the one-layer case tables cannot express, for the
utility, loss and recurrent layers. Run with the Python pycaffe was built for:

    /opt/caffe/venv/bin/python bench/caffe_reference_clr.py --out tests/fixtures/caffe

writes clr_extras.json + clr_extras.npz (tests/test_layers_utility_loss_recurrent.py reads them):

* infogain_source: an InfogainLoss reading H from a .binaryproto file. The file's bytes are a
  BlobProto serialised by Caffe's own Blob::ToProto (the blob of a Parameter layer in a
  Caffe-saved .caffemodel); the loss and the gradient of the scores as Caffe computes them.
* recurrent_state_<type>: an RNN and an LSTM without expose_hidden run forward twice, the second
  batch continuing the first (cont 1 at t = 0): Caffe carries the final state of one forward
  into the next; the tops of both forwards.
"""
import argparse
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from caffe_reference import REPO, Store, caffe_version, caffemodel_bytes, import_caffe, randomize_params, save

INFOGAIN_CLASSES = 4
INFOGAIN_SCORES = (3, INFOGAIN_CLASSES, 2)
RECURRENT_INPUT = (3, 2, 3)          # T x N x I
RECURRENT_OUTPUT = 4

INFOGAIN_NET = """force_backward: true
layer { name: "input" type: "Input" top: "x" top: "label"
        input_param { shape { dim: 3 dim: 4 dim: 2 } shape { dim: 3 dim: 2 } } }
layer { name: "loss" type: "InfogainLoss" bottom: "x" bottom: "label" top: "loss"
        infogain_loss_param { source: "@H@" } }
"""
H_NET = f"""layer {{ name: "H" type: "Parameter" top: "H"
        parameter_param {{ shape {{ dim: {INFOGAIN_CLASSES} dim: {INFOGAIN_CLASSES} }} }} }}
"""
RECURRENT_NET = """layer {{ name: "input" type: "Input" top: "x" top: "cont"
        input_param {{ shape {{ dim: 3 dim: 2 dim: 3 }} shape {{ dim: 3 dim: 2 }} }} }}
layer {{ name: "rec" type: "{type}" bottom: "x" bottom: "cont" top: "y"
        recurrent_param {{ num_output: {num_output} }} }}
"""


def caffe_blobproto_bytes(caffe, tmp, values):
    """A BlobProto of `values` as Caffe's C++ serialises it: the blob of a Parameter layer in a
    .caffemodel written by Net::ToProto."""
    from caffe.proto import caffe_pb2
    path = os.path.join(tmp, "h_net.prototxt")
    Path(path).write_text(H_NET)
    net = caffe.Net(path, caffe.TEST)
    net.params["H"][0].data[...] = values
    model = caffe_pb2.NetParameter()
    model.ParseFromString(caffemodel_bytes(net, tmp).tobytes())
    return next(layer.blobs[0] for layer in model.layer if layer.name == "H").SerializeToString()


def write_infogain_source(caffe, tmp, rng, store):
    matrix = rng.uniform(0.1, 1.0, (INFOGAIN_CLASSES, INFOGAIN_CLASSES)) + 2 * np.eye(INFOGAIN_CLASSES)
    blob = caffe_blobproto_bytes(caffe, tmp, matrix)
    h_path = os.path.join(tmp, "infogain_H.binaryproto")
    Path(h_path).write_bytes(blob)
    path = os.path.join(tmp, "infogain.prototxt")
    Path(path).write_text(INFOGAIN_NET.replace("@H@", h_path))
    net = caffe.Net(path, caffe.TEST)
    net.blobs["x"].data[...] = rng.standard_normal(INFOGAIN_SCORES) * 3
    net.blobs["label"].data[...] = rng.integers(0, INFOGAIN_CLASSES, net.blobs["label"].data.shape)
    net.forward()
    net.backward()
    case = {"prototxt": INFOGAIN_NET, "x": store.add(net.blobs["x"].data), "label": store.add(net.blobs["label"].data),
            "loss": store.add(net.blobs["loss"].data), "x_diff": store.add(net.blobs["x"].diff)}
    return case, np.frombuffer(blob, dtype=np.uint8)


def write_recurrent_state(caffe, tmp, rng, store, type_):
    text = RECURRENT_NET.format(type=type_, num_output=RECURRENT_OUTPUT)
    path = os.path.join(tmp, f"{type_}.prototxt")
    Path(path).write_text(text)
    net = caffe.Net(path, caffe.TEST)
    randomize_params(net, rng)
    model = caffemodel_bytes(net, tmp)
    batches = []
    for first in (0.0, 1.0):   # the second batch continues the first
        cont = np.ones(RECURRENT_INPUT[:2], np.float32)
        cont[0] = first
        x = rng.standard_normal(RECURRENT_INPUT).astype(np.float32)
        net.forward(x=x, cont=cont)
        batches.append({"x": store.add(x), "cont": store.add(cont), "y": store.add(net.blobs["y"].data)})
    return {"prototxt": text, "batches": batches}, model


def main(args):
    caffe = import_caffe()
    caffe.set_mode_cpu()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="sec_caffe_clr_")
    rng = np.random.default_rng(7)
    store = Store("c")
    try:
        infogain, h_bytes = write_infogain_source(caffe, tmp, rng, store)
        manifest = {"caffe": caffe_version(caffe), "infogain_source": infogain}
        extra = {"infogain_source/H.binaryproto": h_bytes}
        for type_ in ("RNN", "LSTM"):
            manifest[f"recurrent_state_{type_}"], extra[f"recurrent_state_{type_}/caffemodel"] = \
                write_recurrent_state(caffe, tmp, rng, store, type_)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    save(out, "clr_extras", manifest, {**store.arrays, **extra})
    print(f"wrote clr_extras.json and clr_extras.npz to {out}")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(REPO / "tests" / "fixtures" / "caffe"),
                        help="fixture folder to write (run with pycaffe's Python)")
    return parser


if __name__ == "__main__":
    main(build_parser().parse_args())
