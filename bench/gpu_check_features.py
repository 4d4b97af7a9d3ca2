"""The GPU check's rows for the users' features (bench/gpu_check.py runs them after its own parts;
docs/gpu.md says how to read them):

1. test-time augmentation: sec.deploy with scales 0.75, 1, 1.25 and the mirror (deploy/deploy.py
   --scales 0.75,1,1.25 --flip) on images of the built-in synthetic set, on CUDA and on the CPU:
   the largest difference of the averaged probabilities, and seconds per image on each;
2. export (sec.export) of a deploy net that sits on CUDA to TorchScript and to ONNX; the
   TorchScript module run on CUDA and the ONNX model in ONNX Runtime (its CUDA provider where it
   has one), each against the engine's forward on CUDA;
3. TensorBoard under torchrun: training/train.py --gpus 2 --tensorboard DIR as two gloo
   processes on the CPU (NCCL refuses two ranks on one GPU, and train.py gives rank r the GPU r);
   exactly one event file, written by rank 0, with every scalar tag at every iteration.

Comparisons of outputs run with IEEE float32 convolutions (TF32 off) and must agree within
DEVICE_TOL; the TF32 difference is printed beside it, without a target.
"""
import contextlib
import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from gpu_check_common import agreement, ieee_float32, input_sized, row

REPO = Path(__file__).resolve().parents[1]
DEVICE_TOL = 1e-4
"""Largest |CUDA - CPU| of probabilities (0..1) with IEEE float32 on both: the rtol 1e-4 of the
CUDA tests' whole-net comparisons (tests/test_engine_net.py, tests/test_nn_engine.py). Float32
sums in another order differ by about 1e-6 per layer; a wrong kernel, layout or device differs by
the size of the probabilities. TF32 rounds every convolution operand to 10 bits (2^-10 = 1e-3)."""
TTA_SCALES = (0.75, 1.0, 1.25)
SCORE_STD = 2.0
"""Std of the classifier's scores under informative_weights: probabilities neither uniform (as
with the prototxts' fillers, or none) nor one-hot, so that a difference shows."""
HE_GAIN = 2.0                 # He initialisation: weights of std sqrt(2 / fan_in) keep ReLU activations' scale
WEIGHT_SEED = 0
SYNTHETIC_IMAGE_SIZE, SYNTHETIC_CUE_SIZE = 160, 21   # the built-in set's geometry (training/train.py)
SET_IMAGES = 4
TB_PROCESSES, TB_ITERATIONS = 2, 2
TB_RUN = "tensorboard"
TB_TIMEOUT_S = 150
TB_TAGS = ("loss/loss-Seed", "loss/loss-Expand", "loss/loss-Constrain", "loss/total", "loss/smoothed", "lr",
           "time/iteration_s", "time/forward_s", "time/backward_s", "time/update_s")
"""Every scalar sec.tensorboard logs at every iteration of the synthetic SEC net (docs/tensorboard.md)."""
RANK0_COLUMN, RANK0_TAG = "forward_s", "time/forward_s"
"""Each rank times its own forward; rank 0's losses.csv holds rank 0's, so equal values name the writer."""
FLOAT32_RTOL = 1e-6           # a value read back from TensorBoard's float32 events


def default_set(state):
    """A few images of the built-in synthetic set (sec.synthetic, its default geometry, seed 0), with
    its list and cues, made once per check in state["scratch"]: the folder."""
    if "set" not in state:
        from sec import synthetic
        folder = state["scratch"] / "synthetic"
        synthetic.generate(folder, SET_IMAGES, 0, seed=0, image_size=SYNTHETIC_IMAGE_SIZE,
                           cue_size=SYNTHETIC_CUE_SIZE)
        state["set"] = folder
    return state["set"]


def set_images(state, count):
    return sorted((default_set(state) / "images").glob("train_*.jpg"))[:count]


def informative_weights(net, inputs, seed=WEIGHT_SEED):
    """Weights for a net on the CPU that make its probabilities informative: convolution and
    inner-product weights He-normal (seeded), their biases 0, BatchNorm statistics mean 0 and
    variance 1 (scale factor 1), Scale layers at their fillers; then the last such layer (the
    classifier) scaled so that its scores have std SCORE_STD on `inputs` (N x 3 x h x w, BGR,
    mean-subtracted)."""
    generator = torch.Generator().manual_seed(seed)
    classifier = None
    with torch.no_grad():
        for name, kind, params in net.layer_params():
            if kind == "BatchNorm":
                params[0].zero_()
                params[1].fill_(1.0)
                params[2].fill_(1.0)
            elif kind in ("Convolution", "InnerProduct"):
                weight = params[0]
                weight.copy_(torch.randn(weight.shape, generator=generator) * math.sqrt(HE_GAIN / weight[0].numel()))
                for bias in params[1:]:
                    bias.zero_()
                classifier = (name, weight)
        if classifier is None:
            raise RuntimeError(f"{net.source}: no Convolution or InnerProduct layer to weight")
        name, weight = classifier
        scores = net.run({net.inputs[0]: torch.as_tensor(inputs)})[net.top_names[name][0]]
        weight.mul_(SCORE_STD / float(scores.std()))


def preprocessed(paths, side):
    """N x 3 x side x side float32 net inputs (sec.data.preprocess) of the images at `paths`."""
    from sec import data
    return np.stack([data.preprocess(data.load_image(path), side, side) for path in paths])


# ---- 1. test-time augmentation ------------------------------------------------------------

def _deploy_probabilities(segmenter, images, out_dir, batch):
    """sec.deploy's run of `segmenter` (no CRF), probabilities saved: ([L x H x W averaged
    probabilities per image, read back from the .npz files], seconds)."""
    from sec import deploy as pipeline
    started = time.perf_counter()
    report = pipeline.deploy(images, out_dir, segmenter, probs=True, batch=batch, progress=False)
    seconds = time.perf_counter() - started
    if report.failed or len(report.written) != len(images):
        raise RuntimeError(f"deploy wrote {len(report.written)} of {len(images)} images: {report.failed}")
    probs = []
    for image in images:
        with np.load(Path(out_dir) / "probs" / f"{image.stem}.npz") as stored:
            probs.append(stored["probs"])
    return probs, seconds


def tta_model(sizes, state, images):
    """sec.deploy.ModelSpec of the synthetic deploy net at sizes.tta_input with informative weights
    saved beside it (deploy/deploy.py's --prototxt and --weights)."""
    from sec import caffe
    from sec.deploy import ModelSpec
    folder = state["scratch"] / "tta"
    folder.mkdir()
    prototxt = input_sized(REPO / "models" / "synthetic" / "deploy.prototxt", sizes.tta_input, folder)
    caffe.set_mode_cpu()               # weights made on the CPU, whatever mode an earlier part left
    torch.manual_seed(WEIGHT_SEED)
    net = caffe.Net(str(prototxt), caffe.TEST)
    informative_weights(net, preprocessed(images, sizes.tta_input))
    net.save(str(folder / "weights.caffemodel"))
    return ModelSpec(prototxt, folder / "weights.caffemodel", "gpu_check"), folder


def tta_deploy(sizes, state, dry):
    """CUDA against the CPU: the averaged probabilities (IEEE float32; then TF32, the default) and
    seconds per image, each device after a warm-up run. The net is loaded once per device, as
    deploy/deploy.py does (a Segmenter takes the net's input size from its input blob, which a
    forward at another scale leaves at that scale)."""
    from sec import deploy as pipeline
    images = set_images(state, sizes.tta_images)
    spec, folder = tta_model(sizes, state, images)
    runs = {}
    for side, device, precisions in (("cpu", "cpu", ("cpu",)), ("device", sizes.device, ("ieee", "tf32"))):
        segmenter = pipeline.Segmenter(pipeline.load_net(spec, device), device=device, scales=TTA_SCALES, flip=True)
        with ieee_float32():
            _deploy_probabilities(segmenter, images, folder / f"{side}-warmup", sizes.tta_batch)
        for name in precisions:
            with ieee_float32() if name != "tf32" else contextlib.nullcontext():
                runs[name] = _deploy_probabilities(segmenter, images, folder / name, sizes.tta_batch)
    (cpu, cpu_s), (ieee, _), (tf32, tf32_s) = runs["cpu"], runs["ieee"], runs["tf32"]
    shapes = {p.shape for p in cpu + ieee + tf32}
    if shapes != {(segmenter.num_classes, SYNTHETIC_IMAGE_SIZE, SYNTHETIC_IMAGE_SIZE)}:
        raise RuntimeError(f"averaged probabilities have shapes {shapes}, need classes x image size")
    diff, tf32_diff = (max(float(np.abs(a - b).max()) for a, b in zip(run, cpu)) for run in (ieee, tf32))
    scales = ",".join(f"{s:g}" for s in TTA_SCALES)
    row(f"TTA {scales} + flip: {sizes.device} vs CPU, max |probs diff|", f"{diff:.2e} (IEEE fp32)",
        f"<= {DEVICE_TOL:g}", agreement(diff <= DEVICE_TOL, dry))
    row("  the same with TF32 convolutions (the default)", f"{tf32_diff:.2e}")
    top = float(np.mean([p.max(axis=0).mean() for p in cpu]))
    row(f"  mean top-class probability (uniform: 1/{segmenter.num_classes})", f"{top:.2f}")
    row(f"  s/image {sizes.device} (TF32), CPU; {len(images)} images {SYNTHETIC_IMAGE_SIZE}px, net "
        f"{sizes.tta_input}px", f"{tf32_s / len(images):.4f}, {cpu_s / len(images):.4f}")


# ---- 2. export ------------------------------------------------------------------------------

def export_case(sizes, state):
    """The net to export (sizes.export_net at sizes.export_input, informative weights), one image
    of the set as its input (CPU), and the engine's output on sizes.device (IEEE float32); made
    once, for both formats."""
    if "export" not in state:
        from sec import caffe
        folder = state["scratch"] / "export"
        folder.mkdir()
        caffe.set_mode_cpu()           # weights made on the CPU, whatever mode an earlier part left
        torch.manual_seed(WEIGHT_SEED)
        net = caffe.Net(str(input_sized(REPO / sizes.export_net, sizes.export_input, folder)), caffe.TEST)
        example = torch.from_numpy(preprocessed(set_images(state, 1), sizes.export_input))
        informative_weights(net, example)
        net.to(sizes.device).eval()
        with ieee_float32(), torch.no_grad():
            reference = net.run({net.inputs[0]: example.to(sizes.device)})[net.outputs[0]].cpu().numpy()
        state["export"] = (net, example, reference, folder)
    return state["export"]


def exported(sizes, state, fmt, file_name):
    """sec.export.export of the case's net, put on sizes.device first (export moves it to the CPU),
    to `file_name` in format `fmt`: (path, its own check's worst relative difference, seconds)."""
    from sec.export import export
    net, example, _, folder = export_case(sizes, state)
    path = folder / file_name
    net.to(sizes.device)
    started = time.perf_counter()
    report = export(net, examples=[example], **{fmt: path})
    return path, report.worst[fmt], time.perf_counter() - started


def net_name(sizes):
    return Path(sizes.export_net).parent.name    # models/<name>/deploy.prototxt


def export_rows(sizes, state, dry, label, got, worst, seconds):
    _, _, reference, _ = export_case(sizes, state)
    diff = float(np.abs(np.asarray(got) - reference).max())
    row(f"export {label} vs engine", f"{diff:.2e} (IEEE fp32)",
        f"<= {DEVICE_TOL:g}", agreement(diff <= DEVICE_TOL, dry))
    row("  export's own check on CPU (relative), export s", f"{worst:.1e}, {seconds:.1f}")


def export_torchscript(sizes, state, dry):
    """The TorchScript file loaded onto sizes.device and run there."""
    path, worst, seconds = exported(sizes, state, "torchscript", "net.pt")
    _, example, _, _ = export_case(sizes, state)
    module = torch.jit.load(str(path), map_location=sizes.device)
    with ieee_float32(), torch.no_grad():
        got = module(example.to(sizes.device))[0].cpu().numpy()
    export_rows(sizes, state, dry, f"TorchScript ({net_name(sizes)} net), run on {sizes.device}", got, worst,
                seconds)


def onnx_session(path, device):
    """An ONNX Runtime session of the model at `path`: its CUDA provider first (TF32 off) when the
    check runs on CUDA and this ONNX Runtime has one, else the CPU provider alone."""
    from sec.export_trace import need_module
    ort = need_module("onnxruntime", "running the exported ONNX model")
    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, ("CUDAExecutionProvider", {"use_tf32": "0"}))
    return ort.InferenceSession(str(path), providers=providers)


def export_onnx(sizes, state, dry):
    """The ONNX file in ONNX Runtime; the row names the provider that ran it (ONNX Runtime falls
    back to the CPU when its CUDA libraries do not load)."""
    path, worst, seconds = exported(sizes, state, "onnx", "net.onnx")
    net, example, _, _ = export_case(sizes, state)
    session = onnx_session(path, sizes.device)
    got = session.run(None, {net.inputs[0]: example.numpy()})[0]
    provider = session.get_providers()[0].replace("ExecutionProvider", "")
    export_rows(sizes, state, dry, f"ONNX ({net_name(sizes)} net), ONNX Runtime {provider}", got, worst, seconds)


# ---- 3. TensorBoard under torchrun ----------------------------------------------------------

def run_group(command, timeout):
    """Run `command` in a process group of its own (torchrun's workers included): (exit status,
    stdout and stderr); RuntimeError after `timeout` seconds, the whole group killed."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    process = subprocess.Popen([str(part) for part in command], cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        print(output[-3000:], flush=True)
        raise RuntimeError(f"{Path(command[1]).name} did not finish in {timeout} s (killed; its output is above)")
    return process.returncode, output


def csv_column(path, column):
    with open(path, newline="") as handle:
        return [float(line[column]) for line in csv.DictReader(handle)]


def tensorboard_findings(board, run_dir, iterations=TB_ITERATIONS):
    """What the events under `board` (a --tensorboard DIR) show of the run in `run_dir`:
    files (every event file), writers (their processes: torch names a file ...<host>.<pid>.<n>),
    by_rank0 (time/forward_s equals rank 0's own forward times in losses.csv), rank1_ran
    (train_rank1.log), one_writer (one file, in DIR/<run name>, rank 0's, while rank 1 ran),
    complete (TB_TAGS logged at steps 0..iterations-1, once each), panels (likewise)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    files = sorted(Path(board).rglob("events.out.tfevents.*"))
    events = Path(board) / Path(run_dir).name
    reader = EventAccumulator(str(events), size_guidance={"scalars": 0, "images": 0})
    if events.is_dir():
        reader.Reload()
    scalars, images = set(reader.Tags()["scalars"]), set(reader.Tags()["images"])
    steps = list(range(iterations))
    logged = [e.value for e in reader.Scalars(RANK0_TAG)] if RANK0_TAG in scalars else []
    rank0 = csv_column(Path(run_dir) / "losses.csv", RANK0_COLUMN)
    found = SimpleNamespace(
        files=files, writers={path.name.split(".")[-2] for path in files},
        by_rank0=len(logged) == len(rank0) and np.allclose(logged, rank0, rtol=FLOAT32_RTOL, atol=0),
        rank1_ran=(Path(run_dir) / "train_rank1.log").is_file(),
        complete=[tag for tag in TB_TAGS if tag in scalars and [e.step for e in reader.Scalars(tag)] == steps],
        panels="panels" in images and [e.step for e in reader.Images("panels")] == steps)
    found.one_writer = len(files) == 1 and files[0].parent == events and found.by_rank0 and found.rank1_ran
    return found


def tensorboard_under_torchrun(sizes, state, dry):
    """train.py --gpus 2 --device cpu --tensorboard on the set; the events read back with
    TensorBoard's own reader (as tests/test_tensorboard.py)."""
    from sec import tensorboard
    tensorboard.require()
    dataset = default_set(state)
    scratch = state["scratch"] / "tensorboard"
    board, runs = scratch / "events", scratch / "runs"
    command = [sys.executable, REPO / "training" / "train.py", "--list", dataset / "train.txt",
               "--synthetic-dir", dataset, "--cues", dataset / "cues.pickle", "--iters", TB_ITERATIONS,
               "--batch", TB_PROCESSES, "--gpus", TB_PROCESSES, "--device", "cpu", "--threads", sizes.tb_threads,
               "--no-eval", "--name", TB_RUN, "--runs", runs, "--tensorboard", board, "--tensorboard-panels", 1]
    started = time.perf_counter()
    status, output = run_group(command, TB_TIMEOUT_S)
    seconds = time.perf_counter() - started
    if status != 0:
        print(output[-3000:], flush=True)
        raise RuntimeError(f"training/train.py --gpus {TB_PROCESSES} exited with status {status} (its output is above)")
    found = tensorboard_findings(board, runs / TB_RUN)
    row(f"TensorBoard, train.py --gpus {TB_PROCESSES} (gloo, CPU): event files",
        f"{len(found.files)} from {len(found.writers)} process(es), {'' if found.by_rank0 else 'not '}rank 0's",
        "1, rank 0's", agreement(found.one_writer, dry))
    absent = sorted(set(TB_TAGS) - set(found.complete))
    row(f"  scalar tags at steps 0..{TB_ITERATIONS - 1}, panels", f"{len(found.complete)} of {len(TB_TAGS)}, "
        f"{'yes' if found.panels else 'no'}" + (f" (not: {', '.join(absent)})" if absent else ""),
        f"{len(TB_TAGS)}, yes", agreement(not absent and found.panels, dry))
    row(f"  train.py wall s ({TB_ITERATIONS} iterations, torchrun included)", f"{seconds:.1f}")
