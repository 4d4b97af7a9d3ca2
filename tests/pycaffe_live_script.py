"""One pycaffe script, run unchanged under BVLC's pycaffe and under this engine (tests/test_pycaffe_live.py
compares what the two runs write). Uses `import caffe` and numpy only, as a Caffe user's script would.

Parts (--part): netspec (a NetSpec net's text, and its forward with given weights), solver (a net of
Python layers, one with a learnable blob, trained 5 SGD steps from given weights: losses and
weights), io (the converters' serialized bytes), transformer (Transformer.preprocess, resize_image,
oversample), image (load_image; under Caffe also scikit-image's reading of the same files, since
pycaffe's own load_image fails with scikit-image >= 0.16).
"""
import argparse
import json
import os
import sys

import numpy as np

import caffe
from caffe import layers as L, params as P

SOLVER_NET = """name: "pysolver"
layer { name: "data" type: "Python" top: "x" top: "target" python_param { module: "pycaffe_layers" layer: "Ramp" } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h" param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "scale" type: "Python" bottom: "h" top: "y" python_param { module: "pycaffe_layers" layer: "Scale" } }
layer { name: "loss" type: "Python" bottom: "y" bottom: "target" top: "loss" loss_weight: 1
        python_param { module: "pycaffe_layers" layer: "HalfSquared" } }
"""
SOLVER = ('net: "{net}" base_lr: 0.1 momentum: 0.9 weight_decay: 0.01 lr_policy: "fixed" max_iter: 5 '
          'display: 0 snapshot_after_train: false snapshot_prefix: "{out}/snap"\n')
SOLVER_STEPS = 5


def netspec(out, weights):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3, 12, 12]))
    n.conv = L.Convolution(n.data, kernel_size=3, num_output=4, pad=1, weight_filler=dict(type="xavier"),
                           param=[dict(lr_mult=1), dict(lr_mult=2, decay_mult=0)])
    n.relu = L.ReLU(n.conv, in_place=True)
    n.pool = L.Pooling(n.relu, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip = L.InnerProduct(n.pool, num_output=5, weight_filler=dict(type="gaussian", std=0.1))
    n.prob = L.Softmax(n.ip)
    text = str(n.to_proto())
    path = os.path.join(out, "netspec.prototxt")
    with open(path, "w") as handle:
        handle.write(text)
    net = caffe.Net(path, caffe.TEST) if weights is None else caffe.Net(path, caffe.TEST, weights=weights)
    net.blobs["data"].data[...] = np.random.RandomState(0).rand(2, 3, 12, 12)
    outputs = net.forward(blobs=["conv", "pool"])
    net.save(os.path.join(out, "netspec.caffemodel"))
    np.savez(os.path.join(out, "netspec.npz"), **{k: v.copy() for k, v in outputs.items()})


def solver(out, weights):
    """The layers are tests/pycaffe_layers.py, importable beside this script."""
    net = os.path.join(out, "pysolver.prototxt")
    with open(net, "w") as handle:
        handle.write(SOLVER_NET)
    path = os.path.join(out, "solver.prototxt")
    with open(path, "w") as handle:
        handle.write(SOLVER.format(net=net, out=out))
    s = caffe.SGDSolver(path)
    if weights is not None:
        s.net.copy_from(weights)
    s.net.save(os.path.join(out, "initial.caffemodel"))
    losses = []
    for _ in range(SOLVER_STEPS):
        s.step(1)
        losses.append(float(s.net.blobs["loss"].data.ravel()[0]))
    arrays = {f"{name}_{i}": blob.data.copy() for name, blobs in s.net.params.items() for i, blob in enumerate(blobs)}
    np.savez(os.path.join(out, "solver.npz"), losses=np.array(losses), **arrays)


def io(out):
    rng = np.random.RandomState(1)
    arr, diff = rng.rand(2, 3, 4).astype(np.float32), rng.rand(2, 3, 4).astype(np.float32)
    legacy = caffe.proto.caffe_pb2.BlobProto(num=1, channels=2, height=3, width=4)
    legacy.data.extend(arr.ravel().tolist())
    uint8 = (rng.rand(3, 5, 4) * 255).astype(np.uint8)
    serialized = {
        "blobproto": caffe.io.array_to_blobproto(arr, diff).SerializeToString(),
        "vector": caffe.io.arraylist_to_blobprotovector_str([arr, diff[0]]),
        "datum_uint8": caffe.io.array_to_datum(uint8, label=3).SerializeToString(),
        "datum_float": caffe.io.array_to_datum(arr.astype(np.float64)).SerializeToString(),
    }
    for name, data in serialized.items():
        with open(os.path.join(out, f"io_{name}.bin"), "wb") as handle:
            handle.write(data)
    vector = caffe.io.blobprotovector_str_to_arraylist(serialized["vector"])
    np.savez(os.path.join(out, "io.npz"), legacy=caffe.io.blobproto_to_array(legacy),
             diff=caffe.io.blobproto_to_array(caffe.io.array_to_blobproto(arr, diff), return_diff=True),
             vector0=vector[0], vector1=vector[1],
             datum_uint8=caffe.io.datum_to_array(caffe.io.array_to_datum(uint8)),
             datum_float=caffe.io.datum_to_array(caffe.io.array_to_datum(arr)))


def transformer(out):
    rng = np.random.RandomState(2)
    results = {}
    t = caffe.io.Transformer({"data": (1, 3, 24, 20)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([104.0, 117.0, 123.0]))
    t.set_input_scale("data", 0.5)
    for name, shape in (("down", (40, 50, 3)), ("up", (10, 12, 3)), ("same", (24, 20, 3))):
        image = rng.rand(*shape).astype(np.float32)
        results[f"pre_{name}"] = t.preprocess("data", image)
        results[f"de_{name}"] = t.deprocess("data", results[f"pre_{name}"])
    t2 = caffe.io.Transformer({"data": (1, 3, 8, 6)})
    t2.set_mean("data", rng.rand(3, 16, 12).astype(np.float32) * 100)   # elementwise, resized
    t2.set_transpose("data", (2, 0, 1))
    results["mean_resized"] = t2.mean["data"]
    results["pre_mean"] = t2.preprocess("data", rng.rand(8, 6, 3).astype(np.float32))
    results["grey"] = caffe.io.resize_image(rng.rand(9, 7, 1).astype(np.float32), (5, 11))
    results["five"] = caffe.io.resize_image(rng.rand(9, 7, 5).astype(np.float32), (5, 11))
    results["constant"] = caffe.io.resize_image(np.full((4, 4, 3), 0.25, np.float32), (6, 2))
    results["oversample"] = caffe.io.oversample([rng.rand(9, 11, 3).astype(np.float32)] * 2, (5, 6))
    np.savez(os.path.join(out, "transformer.npz"), **results)


def image(out, files):
    results, errors = {}, {}
    for index, path in enumerate(files):
        for color in (True, False):
            key = f"{index}_{'color' if color else 'grey'}"
            try:
                results[f"caffe_{key}"] = caffe.io.load_image(path, color=color)
            except TypeError as err:
                errors[key] = f"{type(err).__name__}: {err}"
    try:
        import skimage
        import skimage.io
    except ImportError:
        skimage = None
    if skimage is not None:
        for index, path in enumerate(files):
            results[f"skimage_{index}_color"] = skimage.img_as_float(skimage.io.imread(path)).astype(np.float32)
            results[f"skimage_{index}_grey"] = skimage.img_as_float(skimage.io.imread(path, as_gray=True)).astype(np.float32)
    np.savez(os.path.join(out, "image.npz"), **results)
    with open(os.path.join(out, "image_errors.json"), "w") as handle:
        json.dump(errors, handle)


def main(args):
    os.makedirs(args.out, exist_ok=True)
    if args.part == "netspec":
        netspec(args.out, args.weights)
    elif args.part == "solver":
        solver(args.out, args.weights)
    elif args.part == "io":
        io(args.out)
    elif args.part == "transformer":
        transformer(args.out)
    else:
        image(args.out, args.images)
    print(json.dumps({"caffe": caffe.__file__, "net_module": caffe.Net.__module__}))
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", required=True, choices=["netspec", "solver", "io", "transformer", "image"],
                        help="which comparison to run")
    parser.add_argument("--out", required=True, help="folder for what this run writes")
    parser.add_argument("--weights", help="a .caffemodel to start from (netspec, solver)")
    parser.add_argument("--images", nargs="*", default=[], help="image files for --part image")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
