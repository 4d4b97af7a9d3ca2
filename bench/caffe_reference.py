"""Reference fixtures from the real BVLC Caffe 1.0, and the CPU speed of sec.caffe against it.

Fixtures: run with the Python pycaffe was built for (pylayers/ of this checkout is put first on
the path; krahenbuhl2013 must be installed there: `pip install ./CRF`):

    /opt/caffe/venv/bin/python bench/caffe_reference.py --out tests/fixtures/caffe

writes, all produced by Caffe itself (tests/test_caffe_reference.py reads them, no Caffe needed):

* layers.json + layers.npz: one-layer nets of the layer types sec.caffe first supported, with
  their parameter variants (the table is bench/caffe_reference_cases.py); layers_<family>.json +
  .npz likewise for each table bench/caffe_cases_<family>.py (a module with CASES and, optionally,
  INPUT_KINDS: kind -> fn(rng, shape) for inputs make_input does not know). Per case: the prototxt,
  the Caffe-written .caffemodel (bytes), and per layer the bottoms, tops, top diffs fed to
  backward, bottom diffs and parameter diffs.
* edge_nets.json: nets at the edge of what Caffe builds, and whether Net::Init accepts each.
* data.json + data.npz: the data layers (Data on LMDB / LevelDB, ImageData, HDF5Data, HDF5Output,
  MemoryData, WindowData) and the tools convert_imageset and compute_image_mean, run by Caffe on tiny
  files that the fixture carries (bench/caffe_reference_data.py).
* image_data.json + image_data.npz: ImageData tops of small odd-sized images (uint8 BGR stored,
  written as PNG for Caffe) resized by Caffe's cv::resize, for two new_height x new_width.
* sec_nets.json + sec_nets.npz + sec_init.caffemodel: the SEC training and deploy nets, faithful
  topology (every layer, kernel, pad, stride, dilation, the pylayers losses and CRF running in
  Caffe) but channels / WIDTH_DIVISOR and a 41 x 41 input (6 x 6 scores); dropout layers removed,
  shuffle off. The same per-layer records, a full backward of the training net, the deploy net's
  forward and the notebooks' saliency (fc8-SEC diff 1, backward, conv4_1 diff).
* solvers.json + solvers.npz: every solver and lr policy, five iterations on a tiny net
  (bench/caffe_reference_solvers.py).
* solver.json + solver.npz + sec_iter_5.caffemodel/.solverstate: five iterations of the original
  solver settings on that net (losses, snapshot), the same five from weights perturbed by
  PERTURBATION (Caffe's own sensitivity), and from the snapshot in a fresh solver one more
  iteration (its gradient and the resulting weights).

Arrays are float32, deduplicated (a key per distinct array). With the project's python:

    python3 bench/caffe_reference.py --agreement     # the README table, from the fixtures
    python3 bench/caffe_reference.py --bench [bench/caffe_speed.py's flags]

--bench times Caffe's and sec.caffe's solver step on the full SEC training net (same prototxt,
same input size, same images) on the CPU, alternating the engines, with one thread each and with
every core, and prints the ratio and each engine's fraction of the float32 peak (bench/caffe_speed.py).
"""
import argparse
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from caffe_reference_cases import CASES, EDGE_DIFFERENCES, EDGE_NETS, INPUT_CASE, case_prototxt, make_input
from caffe_reference_data import write_data

REPO = Path(__file__).resolve().parents[1]
WIDTH_DIVISOR = 32
NET_INPUT = 41
TRAIN_BATCH = 2
NUM_IMAGES = 4
SOLVER_ITERS = 5
PERTURBATION = 1e-6
NUM_CLASSES = 21
CAFFE_PYTHON = "/opt/caffe/venv/bin/python"
BIAS_STD = 0.1
LOSSES = ("loss-Seed", "loss-Expand", "loss-Constrain")
MEAN_BGR = (104, 117, 123)
IMAGE_DATA_SIZES = [(5, 7), (13, 11), (40, 31), (9, 6)]
IMAGE_DATA_TARGETS = [(6, 8), (17, 23)]
# Layer types whose Forward keeps what their Backward reads in a bottom's diff (layer type ->
# bottom indices; hinge_loss_layer.cpp): record_backward must not overwrite those with its marker.
SCRATCH_IN_BOTTOM_DIFF = {"HingeLoss": (0,)}

# ---------------------------------------------------------------- recording

class Store:
    """Distinct float32 arrays under short keys (identical arrays share one key)."""

    def __init__(self, prefix):
        self.prefix, self.arrays, self.keys = prefix, {}, {}

    def add(self, array):
        array = np.ascontiguousarray(array, dtype=np.float32)
        digest = hashlib.sha1(array.tobytes() + str(array.shape).encode()).hexdigest()
        if digest not in self.keys:
            key = f"{self.prefix}{len(self.keys)}"
            self.keys[digest] = key
            self.arrays[key] = array.copy()
        return self.keys[digest]


def record_forward(net, store):
    """Forward of `net` one layer at a time (pycaffe's start/end), keeping what each layer saw:
    [{name, type, bottoms, tops, bottom_data, top_data, params_after_forward}] (array keys)."""
    records = []
    for index, name in enumerate(net._layer_names):
        bottoms, tops = list(net.bottom_names[name]), list(net.top_names[name])
        rec = {"name": name, "type": net.layers[index].type, "bottoms": bottoms, "tops": tops,
               "bottom_data": [store.add(net.blobs[b].data) for b in bottoms]}
        net.forward(start=name, end=name)
        rec["top_data"] = [store.add(net.blobs[t].data) for t in tops]
        rec["params_after_forward"] = [store.add(p.data) for p in net.params[name]] if name in net.params else []
        records.append(rec)
    return records


def record_backward(net, records, store):
    """Backward one layer at a time, last to first, adding top_diff (as fed to the layer; loss
    tops hold their loss_weight; None for blobs no backward reaches), bottom_diff (None where
    Caffe computes none: bottom_need_backward false) and param_diff (they start at zero)."""
    for p in [p for blobs in net.params.values() for p in blobs]:
        p.diff[...] = 0
    for rec in reversed(records):
        name = rec["name"]
        rec["top_diff"] = [maybe(store, net.blobs[t].diff) for t in rec["tops"]]
        for index, b in enumerate(rec["bottoms"]):
            if b not in rec["tops"] and index not in SCRATCH_IN_BOTTOM_DIFF.get(rec["type"], ()):
                net.blobs[b].diff[...] = np.nan
        net.backward(start=name, end=name)
        rec["bottom_diff"] = [maybe(store, net.blobs[b].diff) for b in rec["bottoms"]]
        rec["param_diff"] = [store.add(p.diff) for p in net.params[name]] if name in net.params else []
    return records


def maybe(store, diff):
    """The key of a diff, or None where it still holds the NaN marker (Caffe computed none)."""
    return None if np.isnan(diff).all() else store.add(diff)


def seed_output_diffs(net, rng, store, loss_tops_too=False):
    """Random diffs on the outputs that hold none (loss tops keep their loss_weight, unless
    `loss_tops_too`)."""
    seeds = {}
    for name in net.outputs:
        blob = net.blobs[name]
        if loss_tops_too or not np.any(blob.diff):
            blob.diff[...] = rng.standard_normal(blob.diff.shape)
            seeds[name] = store.add(blob.diff)
    return seeds


def randomize_params(net, rng, bn_factor=None):
    """Seeded random parameters: weights ~ N(0, 2 / fan_in), 1-D blobs ~ N(0, BIAS_STD);
    with `bn_factor`, BatchNorm blobs: mean, variance > 0, scale factor, all times the factor."""
    for name, blobs in net.params.items():
        if bn_factor is not None and len(blobs) == 3 and blobs[2].data.shape == (1,):
            blobs[0].data[...] = rng.standard_normal(blobs[0].data.shape) * bn_factor
            blobs[1].data[...] = rng.uniform(0.5, 2.0, blobs[1].data.shape) * bn_factor
            blobs[2].data[...] = bn_factor
            continue
        for blob in blobs:
            shape = blob.data.shape
            if len(shape) > 1:
                blob.data[...] = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
            else:
                blob.data[...] = rng.standard_normal(shape) * BIAS_STD


def caffemodel_bytes(net, tmp):
    path = os.path.join(tmp, "model.caffemodel")
    net.save(path)
    return np.frombuffer(Path(path).read_bytes(), dtype=np.uint8)


def case_families():
    """{fixture name: (CASES, INPUT_KINDS)}: "layers" (bench/caffe_reference_cases.py) and one
    "layers_<family>" per bench/caffe_cases_<family>.py."""
    import importlib
    families = {"layers": (CASES, {})}
    for path in sorted(Path(__file__).resolve().parent.glob("caffe_cases_*.py")):
        module = importlib.import_module(path.stem)
        families["layers_" + path.stem[len("caffe_cases_"):]] = (module.CASES, getattr(module, "INPUT_KINDS", {}))
    return families


def write_layer_cases(caffe, out, tmp, fixture_name, cases, input_kinds):
    """One fixture file of one-layer nets: `cases` (name -> spec, see caffe_reference_cases)."""
    rng = np.random.default_rng(0)
    store = Store("a")
    manifest, extra = [], {}
    for name, spec in cases.items():
        text = case_prototxt(name, spec)
        inputs, opts = spec[1], spec[2]
        path = os.path.join(tmp, f"{name}.prototxt")
        Path(path).write_text(text)
        phase = caffe.TRAIN if opts.get("phase") == "TRAIN" else caffe.TEST
        net = caffe.Net(path, phase)
        if not opts.get("fill"):
            randomize_params(net, rng, opts.get("bn_factor"))
        extra[f"{name}/caffemodel"] = caffemodel_bytes(net, tmp)
        learned = opts.get("learned", ())
        for blob, (shape, kind) in inputs.items():
            make = input_kinds.get(kind)
            target = net.params[f"input_{blob}"][0] if blob in learned else net.blobs[blob]
            target.data[...] = make(rng, shape) if make else make_input(rng, shape, kind)
        if learned:   # inputs held by Parameter layers are weights: saved with the others
            extra[f"{name}/caffemodel"] = caffemodel_bytes(net, tmp)
        backward = opts.get("backward", True)
        records = record_forward(net, store)
        if backward:
            seed_output_diffs(net, rng, store, loss_tops_too=bool(learned))
            record_backward(net, records, store)
        manifest.append({"name": name, "type": spec[0][0], "prototxt": text, "phase": opts.get("phase", "TEST"),
                         "backward": backward, "fill": bool(opts.get("fill")), "layers": records})
    if fixture_name == "layers":
        path = os.path.join(tmp, "input.prototxt")
        Path(path).write_text(INPUT_CASE + "\n")
        net = caffe.Net(path, caffe.TEST)
        manifest.append({"name": "input_two_tops", "type": "Input", "prototxt": INPUT_CASE + "\n", "phase": "TEST",
                         "backward": False, "fill": False, "layers": [],
                         "shapes": {b: list(net.blobs[b].data.shape) for b in net.blobs}})
    save(out, fixture_name, {"caffe": caffe_version(caffe), "cases": manifest}, {**store.arrays, **extra})




# ---------------------------------------------------------------- what Caffe refuses

PROBE = """
import sys, caffe
caffe.set_mode_cpu()
caffe.Net(sys.argv[1], caffe.TEST)
"""


def write_edge_nets(caffe, out, tmp):
    """Whether Net::Init accepts each of EDGE_NETS (a subprocess each: Caffe aborts on a failed
    CHECK), with the first line of Caffe's complaint."""
    results = {}
    for name, text in EDGE_NETS.items():
        path = os.path.join(tmp, f"{name}.prototxt")
        Path(path).write_text(text)
        env = {**os.environ, "GLOG_minloglevel": "0", "PYTHONPATH": str(REPO / "pylayers")}
        run = subprocess.run([sys.executable, "-c", PROBE, path], env=env, capture_output=True, text=True)
        complaints = [line for line in run.stderr.splitlines() if line.startswith("F") or "Error" in line]
        results[name] = {"prototxt": text, "accepted": run.returncode == 0,
                         "caffe_says": complaints[0] if complaints else "",
                         "sec_refuses_on_purpose": EDGE_DIFFERENCES.get(name, "")}
    save(out, "edge_nets", {"caffe": caffe_version(caffe), "nets": results}, {})


# ---------------------------------------------------------------- ImageData

def write_png(path, bgr):
    """An H x W x 3 uint8 BGR array as a PNG (cv::imread gives the same BGR array back)."""
    from PIL import Image
    Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1])).save(path)


def image_data_prototxt(root, count, height, width):
    means = " ".join(f"mean_value: {m}" for m in MEAN_BGR)
    return (f'layer {{ name: "data" type: "ImageData" top: "data" top: "label" transform_param {{ {means} }} '
            f'image_data_param {{ source: "{root}/list.txt" root_folder: "{root}/" batch_size: {count} '
            f'shuffle: false new_height: {height} new_width: {width} }} }}\n')


def write_image_data(caffe, out, tmp):
    """Caffe's ImageData tops for odd-sized random images, for each target size."""
    rng = np.random.default_rng(1)
    arrays, lines = {}, []
    for index, (height, width) in enumerate(IMAGE_DATA_SIZES):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        arrays[f"image{index}"] = image
        write_png(os.path.join(tmp, f"im{index}.png"), image)
        lines.append(f"im{index}.png {10 + index}")
    Path(tmp, "list.txt").write_text("\n".join(lines) + "\n")
    cases = []
    for height, width in IMAGE_DATA_TARGETS:
        text = image_data_prototxt("@ROOT@", len(lines), height, width)
        path = os.path.join(tmp, f"image_data_{height}x{width}.prototxt")
        Path(path).write_text(text.replace("@ROOT@", tmp))
        net = caffe.Net(path, caffe.TEST)
        net.forward()
        key = f"{height}x{width}"
        arrays[f"{key}/data"], arrays[f"{key}/label"] = net.blobs["data"].data.copy(), net.blobs["label"].data.copy()
        cases.append({"key": key, "new_height": height, "new_width": width, "prototxt": text})
    manifest = {"caffe": caffe_version(caffe), "list": lines, "mean_bgr": list(MEAN_BGR), "cases": cases,
                "note": "image<i> are H x W x 3 uint8 BGR, written as PNG for Caffe (cv::imread, "
                        "cv::resize INTER_LINEAR to new_height x new_width, minus mean_value)"}
    save(out, "image_data", manifest, arrays)


# ---------------------------------------------------------------- the SEC nets

def narrow_sec_net(caffe_pb2, text_format, prototxt, cue_size=None):
    """models/sec/<prototxt> with channels / WIDTH_DIVISOR (not fc8-SEC's 21 classes), a
    NET_INPUT x NET_INPUT input, no Dropout layers; ImageData reads @ROOT@/list.txt in order
    (batch TRAIN_BATCH), the Annotation layer @ROOT@/cues.pickle. Returns the prototxt text."""
    net = caffe_pb2.NetParameter()
    text_format.Merge((REPO / "models" / "sec" / prototxt).read_text(), net)
    kept = []
    for lp in net.layer:
        if lp.type == "Dropout":
            continue
        if lp.type == "Convolution" and lp.name != "fc8-SEC":
            lp.convolution_param.num_output //= WIDTH_DIVISOR
        if lp.type == "Input":
            del lp.input_param.shape[0].dim[:]
            lp.input_param.shape[0].dim.extend([1, 3, NET_INPUT, NET_INPUT])
        if lp.type == "ImageData":
            p = lp.image_data_param
            p.source, p.root_folder = "@ROOT@/list.txt", "@ROOT@/"
            p.batch_size, p.shuffle, p.new_height, p.new_width = TRAIN_BATCH, False, NET_INPUT, NET_INPUT
        if lp.type == "Python" and lp.python_param.layer == "AnnotationLayer":
            lp.python_param.param_str = json.dumps({"cues": "@ROOT@/cues.pickle", "num_classes": NUM_CLASSES,
                                                    "cue_size": cue_size})
        kept.append(lp)
    del net.layer[:]
    net.layer.extend(kept)
    return text_format.MessageToString(net)


def sec_images(rng):
    """NUM_IMAGES synthetic NET_INPUT^2 BGR uint8 images (a coloured rectangle on a coloured
    ground, with noise), and their cues {"<i>_labels", "<i>_cues"} on the cue grid."""
    images, cues = [], {}
    for index in range(NUM_IMAGES):
        image = np.empty((NET_INPUT, NET_INPUT, 3))
        image[...] = rng.uniform(40, 220, 3)
        top, left = rng.integers(4, 16, 2)
        image[top:top + 20, left:left + 18] = rng.uniform(40, 220, 3)
        image += rng.normal(0, 12, image.shape)
        images.append(np.clip(np.round(image), 0, 255).astype(np.uint8))
        classes = sorted(rng.choice(np.arange(1, NUM_CLASSES), 1 + index % 2, replace=False).tolist())
        cues[f"{index}_labels"] = np.array(classes)
        cues[f"{index}_cues"] = np.array([[0, 0, classes[0], classes[-1]], [0, 5, 2, 3], [0, 5, 3, 2]])
    return images, cues


def write_sec_inputs(tmp, images, cues):
    for index, image in enumerate(images):
        write_png(os.path.join(tmp, f"sec{index}.png"), image)
    Path(tmp, "list.txt").write_text("".join(f"sec{i}.png {i}\n" for i in range(len(images))))
    with open(os.path.join(tmp, "cues.pickle"), "wb") as handle:
        pickle.dump(cues, handle)


def write_sec_nets(caffe, out, tmp):
    """Training and deploy nets (see the module docstring); returns the training prototxt path."""
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format
    rng = np.random.default_rng(2)
    store = Store("s")
    deploy_text = narrow_sec_net(caffe_pb2, text_format, "deploy.prototxt")
    deploy_text = "force_backward: true\n" + deploy_text
    deploy_path = os.path.join(tmp, "deploy.prototxt")
    Path(deploy_path).write_text(deploy_text)
    deploy = caffe.Net(deploy_path, caffe.TEST)
    cue_size = int(deploy.blobs["fc8-SEC"].data.shape[2])
    train_text = narrow_sec_net(caffe_pb2, text_format, "train.prototxt", cue_size)
    train_path = os.path.join(tmp, "train.prototxt")
    Path(train_path).write_text(train_text.replace("@ROOT@", tmp))
    images, cues = sec_images(rng)
    write_sec_inputs(tmp, images, cues)
    train = caffe.Net(train_path, caffe.TRAIN)
    randomize_params(train, rng)
    init_model = os.path.join(out, "sec_init.caffemodel")
    train.save(init_model)
    train_records = record_forward(train, store)
    losses = {name: float(train.blobs[name].data.flat[0]) for name in LOSSES}
    record_backward(train, train_records, store)
    deploy.copy_from(init_model)
    deploy.blobs["images"].data[...] = store.arrays[train_records[0]["top_data"][0]][:1]
    deploy_records = record_forward(deploy, store)
    deploy.blobs["fc8-SEC"].diff[...] = 1.0
    deploy.backward(start="fc8-SEC")
    saliency = {name: store.add(deploy.blobs[name].diff) for name in ("conv4_1", "images")}
    arrays = {**store.arrays, **{f"image{i}": im for i, im in enumerate(images)}}
    manifest = {"caffe": caffe_version(caffe), "width_divisor": WIDTH_DIVISOR, "input": NET_INPUT,
                "cue_size": cue_size, "train_prototxt": train_text, "deploy_prototxt": deploy_text,
                "list": [f"sec{i}.png {i}" for i in range(len(images))],
                "cues": {key: value.tolist() for key, value in cues.items()}, "losses": losses,
                "train": train_records, "deploy": deploy_records, "saliency": saliency}
    save(out, "sec_nets", manifest, arrays)
    return train_path, init_model


# ---------------------------------------------------------------- the solver

def solver_prototxt(train_path, prefix):
    """models/sec/solver.prototxt with this net, snapshot prefix and solver_mode CPU."""
    text = (REPO / "models" / "sec" / "solver.prototxt").read_text()
    text = re.sub(r'(?m)^net:.*$', f'net: "{train_path}"', text)
    text = re.sub(r'(?m)^snapshot_prefix:.*$', f'snapshot_prefix: "{prefix}"', text)
    return re.sub(r'(?m)^solver_mode:.*$', "solver_mode: CPU", text)


def train_iterations(caffe, solver_path, weights, iters, perturb_rng=None):
    """A fresh SGDSolver from `weights` (optionally perturbed relatively by PERTURBATION), `iters`
    steps; returns the solver and each iteration's losses."""
    solver = caffe.SGDSolver(solver_path)
    solver.net.copy_from(weights)
    if perturb_rng is not None:
        for blobs in solver.net.params.values():
            for blob in blobs:
                blob.data[...] *= 1 + PERTURBATION * perturb_rng.standard_normal(blob.data.shape)
    losses = []
    for _ in range(iters):
        solver.step(1)
        losses.append([float(solver.net.blobs[name].data.flat[0]) for name in LOSSES])
    return solver, losses


def params_of(net):
    return {f"{layer}/{i}": blob.data.copy() for layer, blobs in net.params.items() for i, blob in enumerate(blobs)}


def relative(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def write_solver(caffe, out, tmp, train_path, init_model):
    solver_path = os.path.join(tmp, "solver.prototxt")
    Path(solver_path).write_text(solver_prototxt(train_path, os.path.join(tmp, "sec")))
    solver, losses = train_iterations(caffe, solver_path, init_model, SOLVER_ITERS)
    solver.snapshot()
    for suffix in ("caffemodel", "solverstate"):
        Path(out, f"sec_iter_{SOLVER_ITERS}.{suffix}").write_bytes(
            Path(tmp, f"sec_iter_{SOLVER_ITERS}.{suffix}").read_bytes())
    w5 = params_of(solver.net)
    perturbed, perturbed_losses = train_iterations(caffe, solver_path, init_model, SOLVER_ITERS,
                                                   np.random.default_rng(3))
    pw5 = params_of(perturbed.net)
    # From the snapshot, in a fresh process state: the data restart at the first batch.
    snapshot_model = os.path.join(tmp, f"sec_iter_{SOLVER_ITERS}.caffemodel")
    probe = caffe.Net(train_path, caffe.TRAIN, weights=snapshot_model)
    probe.forward()
    probe.backward()
    gradient = {f"g6/{layer}/{i}": blob.diff.copy() for layer, blobs in probe.params.items()
                for i, blob in enumerate(blobs)}
    resumed = caffe.SGDSolver(solver_path)
    resumed.restore(os.path.join(tmp, f"sec_iter_{SOLVER_ITERS}.solverstate"))
    resumed.step(1)
    resumed_losses = [float(resumed.net.blobs[name].data.flat[0]) for name in LOSSES]
    w6 = {f"w6/{key}": value for key, value in params_of(resumed.net).items()}
    manifest = {"caffe": caffe_version(caffe), "solver_prototxt": solver_prototxt("@NET@", "@PREFIX@"),
                "losses": losses, "loss_names": list(LOSSES), "perturbation": PERTURBATION,
                "perturbed_losses": perturbed_losses,
                "perturbed_w5_relative": {key: relative(pw5[key], w5[key]) for key in w5},
                "resumed_losses": resumed_losses, "iterations": SOLVER_ITERS}
    save(out, "solver", manifest, {**gradient, **w6})


# ---------------------------------------------------------------- main

def import_caffe():
    os.environ.setdefault("GLOG_minloglevel", "2")
    sys.path.insert(0, str(REPO / "pylayers"))  # this checkout's Python layers, not an installed copy
    import caffe
    return caffe


def caffe_version(caffe):
    import pylayers
    return {"caffe": caffe.__version__, "numpy": np.__version__, "pylayers": os.path.relpath(pylayers.__file__, REPO)}


def save(out, name, manifest, arrays):
    Path(out, f"{name}.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    if not arrays:
        return
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    Path(out, f"{name}.npz").write_bytes(buffer.getvalue())


def write_fixtures(args):
    caffe = import_caffe()
    caffe.set_mode_cpu()
    caffe.set_random_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # A fixed work folder per set of parts: Caffe writes its paths into the .caffemodel files, so
    # that regenerating gives the same bytes; runs of different parts at once do not share it.
    tmp = os.path.join(tempfile.gettempdir(), "_".join(["sec_caffe_reference", *sorted(args.only or [])]))
    shutil.rmtree(tmp, ignore_errors=True)
    os.mkdir(tmp)
    families = case_families()
    steps = list(families) + ["edge", "image_data", "data", "sec", "solvers"]
    unknown = sorted(set(args.only or []) - set(steps))
    if unknown:
        raise SystemExit(f"--only: unknown part(s) {unknown}; known: {steps}")
    try:
        for step in [s for s in steps if not args.only or s in args.only]:
            sub = os.path.join(tmp, step)
            os.mkdir(sub)
            if step in families:
                write_layer_cases(caffe, out, sub, step, *families[step])
            elif step == "edge":
                write_edge_nets(caffe, out, sub)
            elif step == "image_data":
                write_image_data(caffe, out, sub)
            elif step == "data":
                write_data(caffe, out, sub, save, caffe_version)
            elif step == "solvers":
                from caffe_reference_solvers import write_solvers
                store, files = Store("v"), {}
                save(out, "solvers", write_solvers(caffe, sub, store, files, caffe_version(caffe)),
                     {**store.arrays, **files})
            else:
                train_path, init_model = write_sec_nets(caffe, out, sub)
                write_solver(caffe, out, sub, train_path, init_model)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {len(list(out.iterdir()))} files, {total / 1e6:.2f} MB, to {out}")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(REPO / "tests" / "fixtures" / "caffe"),
                        help="fixture folder to write (run with pycaffe's Python)")
    parser.add_argument("--only", action="append", metavar="PART",
                        help="write only this part (repeatable): layers, layers_<family> (one per "
                             "bench/caffe_cases_<family>.py), edge, image_data, data (the data layers and "
                             "tools, bench/caffe_reference_data.py), sec (the SEC nets and solver), "
                             "solvers (every solver and lr policy, bench/caffe_reference_solvers.py)")
    parser.add_argument("--bench", action="store_true",
                        help="time Caffe's and sec.caffe's SEC solver step instead (run with the project's python); "
                             "the flags after it are bench/caffe_speed.py's (python3 bench/caffe_speed.py --help)")
    parser.add_argument("--agreement", action="store_true",
                        help="print the README agreement table from the fixtures (run with the project's python)")
    return parser


def agreement(args):
    """The README table "agreement with BVLC Caffe 1.0" from the fixtures (project's python)."""
    import importlib.util
    sys.path.insert(0, str(REPO))
    spec = importlib.util.spec_from_file_location("caffe_reference_tests", REPO / "tests" / "test_caffe_reference.py")
    tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tests)
    with tempfile.TemporaryDirectory() as tmp:
        rows = tests.agreement_rows(Path(tmp))
    fmt = lambda v: "-" if v is None else f"{v:.1e}"
    print("| what | forward | backward | measured on |\n|---|---|---|---|")
    for what, fwd, bwd, how in rows:
        print(f"| {what} | {fmt(fwd)} | {fmt(bwd)} | {how} |")


def main(args):
    if args.agreement:
        agreement(args)
    elif args.bench:
        import caffe_speed   # imported here: it imports this module
        caffe_speed.main(caffe_speed.build_parser().parse_args(args.bench_flags))
    else:
        write_fixtures(args)


if __name__ == "__main__":
    parser = build_parser()
    parsed, rest = parser.parse_known_args()
    if rest and not parsed.bench:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    parsed.bench_flags = rest
    main(parsed)
