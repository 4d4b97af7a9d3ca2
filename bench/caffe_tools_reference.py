"""Fixtures from BVLC Caffe's upgrade tools for tests/test_caffe_tools_upgrade.py.

Runs the real `upgrade_net_proto_text`, `upgrade_net_proto_binary` and `upgrade_solver_proto_text`
(from --caffe-bin, default /opt/caffe/bin) on the legacy definitions of CASES and writes, per case,
the input, Caffe's output file (text, or base64 for binary), its exit status and its log messages
(glog prefix removed), to tests/fixtures/caffe/tools_upgrade.json:

    python3 bench/caffe_tools_reference.py [--caffe-bin /opt/caffe/bin] [--out tests/fixtures/caffe]

Needs only the binaries (any Python; the binary inputs are built here with sec.proto's schema).
"""
import argparse
import base64
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 60
GLOG_PREFIX = re.compile(r"^[IWEF]\d{4,8} \d\d:\d\d:\d\d\.\d{6} +\d+ [^\]]+\] ")

V0_NET = """name: "CaffeNet"
input: "data"
input_dim: 10 input_dim: 3 input_dim: 227 input_dim: 227
layers {
  layer { name: "data" type: "data" source: "train-leveldb" meanfile: "mean.binaryproto"
    batchsize: 256 cropsize: 227 mirror: true rand_skip: 3 }
  top: "data" top: "label"
}
layers {
  layer { name: "conv1" type: "conv" num_output: 96 kernelsize: 11 stride: 4
    weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0. }
    blobs_lr: 1. blobs_lr: 2. weight_decay: 1. weight_decay: 0. }
  bottom: "data" top: "conv1"
}
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 3 stride: 2 } bottom: "conv1" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 5 alpha: 0.0001 beta: 0.75 k: 2 } bottom: "pool1" top: "norm1" }
layers { layer { name: "pad2" type: "padding" pad: 2 } bottom: "norm1" top: "pad2" }
layers { layer { name: "conv2" type: "conv" num_output: 256 group: 2 kernelsize: 5 biasterm: false }
  bottom: "pad2" top: "conv2" }
layers { layer { name: "pad3" type: "padding" pad: 1 } bottom: "conv2" top: "pad3" }
layers { layer { name: "pool3" type: "pool" pool: MAX kernelsize: 3 stride: 1 } bottom: "pad3" top: "pool3" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.4 } bottom: "pool3" top: "pool3" }
layers { layer { name: "fc" type: "innerproduct" num_output: 10 } bottom: "pool3" top: "fc" }
layers { layer { name: "cat" type: "concat" concat_dim: 1 } bottom: "fc" bottom: "fc" top: "cat" }
layers { layer { name: "loss" type: "softmax_loss" } bottom: "fc" bottom: "label" }
"""
V0_IMAGES = """name: "v0images"
layers { layer { name: "img" type: "images" source: "list.txt" batchsize: 4 shuffle_images: true
    new_height: 32 new_width: 40 scale: 0.00390625 } top: "data" top: "label" }
layers { layer { name: "win" type: "window_data" source: "w.txt" batchsize: 2 det_fg_threshold: 0.6
    det_bg_threshold: 0.4 det_fg_fraction: 0.3 det_context_pad: 16 det_crop_mode: "square" }
  top: "wdata" top: "wlabel" }
layers { layer { name: "h5" type: "hdf5_data" source: "h.txt" batchsize: 5 } top: "a" top: "b" }
layers { layer { name: "sig" type: "sigmoid" } bottom: "a" top: "a" }
layers { layer { name: "out" type: "hdf5_output" hdf5_output_param { file_name: "o.h5" } }
  bottom: "a" bottom: "b" }
"""
V0_MISPLACED = """name: "misplaced"
input: "x" input_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4
layers { layer { name: "r" type: "relu" num_output: 3 kernelsize: 2 } bottom: "x" top: "x" }
layers { layer { name: "t" type: "tanh" source: "nowhere" } bottom: "x" top: "y" }
"""
V0_PADDING_INTO_RELU = """name: "bad"
input: "x" input_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4
layers { layer { name: "p" type: "padding" pad: 1 } bottom: "x" top: "p" }
layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }
"""
V1_NET = """name: "v1net"
input: "data"
input_shape { dim: 2 dim: 3 dim: 8 dim: 8 }
layers { name: "d" type: IMAGE_DATA top: "img" top: "lab"
  image_data_param { source: "l.txt" mirror: true crop_size: 7 scale: 0.00390625 batch_size: 3 } }
layers { name: "dd" type: DATA top: "x2" data_param { source: "db" mean_file: "m.binaryproto" batch_size: 1 } }
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" blobs_lr: 1 blobs_lr: 2
  weight_decay: 1 weight_decay: 0 param: "w" param: "b" blob_share_mode: PERMISSIVE
  convolution_param { num_output: 20 kernel_size: 5 weight_filler { type: "xavier" }
    bias_filler { type: "constant" value: 0.1234567 } } }
layers { name: "abs" type: ABSVAL bottom: "conv1" top: "conv1" include { phase: TRAIN } }
layers { name: "th" type: THRESHOLD bottom: "conv1" top: "th" threshold_param { threshold: 0.25 } exclude { stage: "x" } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "conv1" bottom: "lab" top: "loss" loss_weight: 0.333333333
  loss_param { ignore_label: 255 } }
"""
BATCHNORM = """name: "bn"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }
layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" param { lr_mult: 1 } param { lr_mult: 1 decay_mult: 2 }
  param { lr_mult: 1 } }
layer { name: "bn2" type: "BatchNorm" bottom: "x" top: "x" param { lr_mult: 1 } }
"""
CURRENT = """name: "current"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 3 } }
"""
SOLVER_OLD = 'net: "x"\nbase_lr: 0.1\nsolver_type: ADAM\nmomentum2: 0.999\ndelta: 1e-08\n'
SOLVER_NESTEROV = 'train_net: "t" test_net: "v" test_iter: 3 solver_type: NESTEROV momentum: 0.95\n'
SOLVER_BOTH = 'net: "x"\nsolver_type: SGD\ntype: "Adam"\n'
SOLVER_CURRENT = 'net: "x"\ntype: "RMSProp"\nrms_decay: 0.98\n'

# name -> (tool, input text, binary input?): the binary inputs are the text parsed and serialized.
CASES = {
    "v0_caffenet": ("upgrade_net_proto_text", V0_NET, False),
    "v0_data_layers": ("upgrade_net_proto_text", V0_IMAGES, False),
    "v0_misplaced_fields": ("upgrade_net_proto_text", V0_MISPLACED, False),
    "v0_padding_into_relu": ("upgrade_net_proto_text", V0_PADDING_INTO_RELU, False),
    "v1_net": ("upgrade_net_proto_text", V1_NET, False),
    "batchnorm_params": ("upgrade_net_proto_text", BATCHNORM, False),
    "already_current": ("upgrade_net_proto_text", CURRENT, False),
    "v0_caffenet_binary": ("upgrade_net_proto_binary", V0_NET, True),
    "v1_net_binary": ("upgrade_net_proto_binary", V1_NET, True),
    "solver_adam": ("upgrade_solver_proto_text", SOLVER_OLD, False),
    "solver_nesterov": ("upgrade_solver_proto_text", SOLVER_NESTEROV, False),
    "solver_both_types": ("upgrade_solver_proto_text", SOLVER_BOTH, False),
    "solver_current": ("upgrade_solver_proto_text", SOLVER_CURRENT, False),
}


def binary_net(text):
    """NetParameter text -> its binary serialization, with a legacy 4-D blob on the first layer."""
    sys.path.insert(0, str(REPO))
    from google.protobuf import text_format

    from sec.proto import caffe_pb2
    net = text_format.Parse(text, caffe_pb2.NetParameter())
    first = net.layers[0]
    holder = first.layer if first.HasField("layer") else first
    blob = holder.blobs.add(num=1, channels=1, height=2, width=2)
    blob.data.extend([0.5, 1.5, -2.0, 3.25])
    return net.SerializeToString()


def run_case(binaries, tool, data, binary, tmp):
    source, target = Path(tmp, "in"), Path(tmp, "out")
    source.write_bytes(data)
    target.unlink(missing_ok=True)
    env = dict(os.environ, GLOG_logtostderr="1")
    result = subprocess.run([str(Path(binaries, tool)), str(source), str(target)], capture_output=True,
                            env=env, timeout=TIMEOUT_S)
    messages = [GLOG_PREFIX.sub("", line) for line in result.stderr.decode().splitlines()
                if GLOG_PREFIX.match(line) and not line.startswith("F")]
    output = target.read_bytes() if target.is_file() else None
    if output is not None:
        output = base64.b64encode(output).decode() if binary else output.decode()
    return {"status": result.returncode, "output": output,
            "messages": [m.replace(str(source), "@IN@").replace(str(target), "@OUT@") for m in messages]}


def main(args):
    fixtures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (tool, text, binary) in CASES.items():
            data = binary_net(text) if binary else text.encode()
            case = run_case(args.caffe_bin, tool, data, binary, tmp)
            case.update(tool=tool, binary=binary,
                        input=base64.b64encode(data).decode() if binary else text)
            fixtures[name] = case
    out = Path(args.out, "tools_upgrade.json")
    out.write_text(json.dumps(fixtures, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(fixtures)} cases to {out}")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--caffe-bin", default="/opt/caffe/bin", help="folder of Caffe's tool binaries")
    parser.add_argument("--out", default=str(REPO / "tests" / "fixtures" / "caffe"), help="fixture folder")
    return parser


if __name__ == "__main__":
    main(build_parser().parse_args())
