"""Small nets, data and runners shared by the tests of Caffe's command-line tools."""
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
GLOG_LINE = re.compile(r"^([IWEF])(\d{4}) (\d\d:\d\d:\d\d\.\d{6}) +(\d+) ([\w.]+):(\d+)\] (.*)$")
SUBPROCESS_TIMEOUT_S = 300
NUM_CLASSES = 3
IMAGE_SIDE = 5

CLASSIFIER = """name: "tiny"
layer {{ name: "data" type: "ImageData" top: "data" top: "label"
  image_data_param {{ source: "{root}/list.txt" root_folder: "{root}/" batch_size: {batch} shuffle: false
    new_height: {side} new_width: {side} }} transform_param {{ mean_value: 120 }} }}
layer {{ name: "extra" type: "InnerProduct" bottom: "data" top: "unused" include {{ stage: "extra" }}
  inner_product_param {{ num_output: 2 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param {{ num_output: {classes} weight_filler {{ type: "gaussian" std: 0.01 }}
    bias_filler {{ type: "constant" value: 0.1 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" loss_weight: {loss_weight} }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy" }}
"""
SOLVER = """net: "{net}"
base_lr: 0.01
lr_policy: "fixed"
momentum: 0.9
weight_decay: 0.0005
max_iter: {max_iter}
display: 1
snapshot: {snapshot}
snapshot_prefix: "{prefix}"
solver_mode: CPU
random_seed: 3
"""


def write_tiny_classifier(folder, images=4, batch=2, max_iter=6, snapshot=3, loss_weight=1, extra_solver=""):
    """`images` random IMAGE_SIDE^2 PNGs with labels (list.txt), a classifier net (ImageData,
    InnerProduct, SoftmaxWithLoss, Accuracy; one more InnerProduct only for stage "extra") and
    a solver for it (prefix <folder>/snap/tiny). Returns {"net", "solver", "prefix"} paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    lines = []
    for i in range(images):
        cv2.imwrite(str(folder / f"im{i}.png"), rng.integers(0, 256, (IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8))
        lines.append(f"im{i}.png {i % NUM_CLASSES}\n")
    (folder / "list.txt").write_text("".join(lines))
    net = folder / "net.prototxt"
    net.write_text(CLASSIFIER.format(root=folder, batch=batch, side=IMAGE_SIDE, classes=NUM_CLASSES,
                                     loss_weight=loss_weight))
    (folder / "snap").mkdir(exist_ok=True)
    prefix = folder / "snap" / "tiny"
    solver = folder / "solver.prototxt"
    solver.write_text(SOLVER.format(net=net, max_iter=max_iter, snapshot=snapshot, prefix=prefix) + extra_solver)
    return {"net": net, "solver": solver, "prefix": prefix}


def tool_env(**extra):
    """The environment for a tool subprocess: this checkout first on PYTHONPATH, one thread."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT)] + [p for p in os.environ.get(
        "PYTHONPATH", "").split(os.pathsep) if p]), OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def caffe_command(*args):
    """argv that runs this checkout's `caffe` (sec.caffe's, never a real one)."""
    return [sys.executable, "-m", "sec.caffe.tools.caffe", *[str(a) for a in args]]


def run(argv, cwd=None, env=None):
    return subprocess.run(argv, cwd=cwd, env=env or tool_env(), capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT_S)


def messages(stderr, levels="IWEF"):
    """[(level, message)] of the glog lines in `stderr` (other lines are dropped)."""
    found = [GLOG_LINE.match(line) for line in stderr.splitlines()]
    return [(m.group(1), m.group(7)) for m in found if m and m.group(1) in levels]


def read_weights(path):
    """{layer: [arrays]} of a .caffemodel."""
    from sec.caffe import formats
    net = formats.read_caffemodel(path)
    return {layer.name: [formats.blob_to_array(b) for b in layer.blobs] for layer in net.layer if layer.blobs}
