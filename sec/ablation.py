"""Machinery of SEC's ablation benchmarks (bench/ablation.py on the synthetic set,
bench/voc_shapes.py on the VOC stand-ins): variant nets, ground-truth cues and cue scoring,
resumable training runs two at a time, evaluation with and without the dense CRF, the benches'
shared flags (aggregation over seeds, the table and the chart: sec.ablation_report).

Variants of a train prototxt are made on the parsed NetParameter: loss layers removed by name
(and any layer left feeding nothing, e.g. the CRF layer once loss-Constrain is gone), the
ExpandLossLayer's param_str replaced. A run is a subprocess (`train_command` of its job) writing
`<run_dir>/<name>_iter_<iters>.caffemodel`, then scored by `evaluate_both`; its record goes to
`<run_dir>/scores.json`, and a run whose weights and scores exist is not redone.

Cue conventions are sec.localization's: a cue dict is the original pickle's ('<id>_labels',
'<id>_cues' (3, K) int64: class, row, column); masks are palette PNGs of class indices, 255
ignored; the cue grid meets a mask at corner-aligned positions (sec.synthetic.grid_sample).
"""
import json
import math
import multiprocessing
import os
import pickle
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.ndimage
from google.protobuf import text_format
from PIL import Image

from pylayers import functions as loss_functions
from sec import data, localization, metrics, synthetic
from sec.caffe import formats
from sec.localization import UNSEEDED
from sec.proto import caffe_pb2

REPO_ROOT = Path(__file__).resolve().parents[1]
IGNORE = metrics.IGNORE_LABEL
PICKLE_PROTOCOL = 2                                     # the original cue pickles' protocol
PERCENT = 100.0
OUTPUT_TAIL_LINES = 30
EVAL_BATCH = 16
BOUNDARY_BAND_PX = 10       # mask pixels either side of a ground-truth boundary: the band scored apart

LOSS_LAYERS = {"S": "loss-Seed", "E": "loss-Expand", "C": "loss-Constrain"}
EXPAND_LAYER = "ExpandLossLayer"
PAPER_EXPAND = {"pooling": "gwrp", "q_fg": loss_functions.Q_FG, "q_bg": loss_functions.Q_BG}


@dataclass(frozen=True)
class Variant:
    """One trained configuration: which losses, the ExpandLoss param_str, which cues."""
    key: str
    losses: str                      # letters of LOSS_LAYERS kept
    expand: dict = field(default=None, hash=False)   # ExpandLossLayer param_str values; None: leave it
    cues: str = "cam"                # which cue file the bench gives it (e.g. "cam", "gt", "own")


# ----- variant nets ---------------------------------------------------------------------------------
def _prune_unused(layers):
    """Drop layers none of whose tops is read by a later layer and that carry no loss weight
    (e.g. the CRF layer once loss-Constrain is gone), until none is left."""
    layers = list(layers)
    while True:
        unused = [i for i, layer in enumerate(layers)
                  if layer.top and not any(w > 0 for w in layer.loss_weight)
                  and not any(top in later.bottom for top in layer.top for later in layers[i + 1:])]
        if not unused:
            return layers
        layers = [layer for i, layer in enumerate(layers) if i not in unused]


def make_variant_net(base, losses, expand=None, source="<net>"):
    """A copy of the NetParameter `base` keeping the loss layers named by `losses` (letters of
    LOSS_LAYERS) and, when `expand` is given, with the ExpandLossLayer's param_str set to it."""
    if not losses or set(losses) - set(LOSS_LAYERS):
        raise ValueError(f"need losses made of {sorted(LOSS_LAYERS)}, got {losses!r}")
    names = [layer.name for layer in base.layer]
    missing = [name for name in LOSS_LAYERS.values() if name not in names]
    if missing:
        raise ValueError(f"{source}: no layer named {missing}; the loss layers must be {list(LOSS_LAYERS.values())}")
    dropped = {name for letter, name in LOSS_LAYERS.items() if letter not in losses}
    net = caffe_pb2.NetParameter()
    net.CopyFrom(base)
    net.ClearField("layer")
    for layer in _prune_unused(layer for layer in base.layer if layer.name not in dropped):
        net.layer.add().CopyFrom(layer)
    if expand is not None:
        found = [layer for layer in net.layer if layer.type == "Python" and layer.python_param.layer == EXPAND_LAYER]
        if len(found) != 1:
            raise ValueError(f"{source}: need exactly one {EXPAND_LAYER} for param_str {expand}, found {len(found)}")
        found[0].python_param.param_str = json.dumps(expand, sort_keys=True)
    return net


def write_net(net, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    formats.atomic_write_bytes(str(path), text_format.MessageToString(net).encode())
    return Path(path)


# ----- cues: ground truth, and scoring cues alone -----------------------------------------------------
def read_mask(mask_folder, image_file):
    """(mask array, its path) of `<mask_folder>/<image stem>.png`."""
    path = Path(mask_folder) / (Path(image_file).stem + ".png")
    if not path.is_file():
        raise FileNotFoundError(f"no ground-truth mask {path} for {image_file}")
    return np.asarray(Image.open(path)), path


def ground_truth_cues(image_list, mask_folder, cue_size, num_classes):
    """Cue dict in the original format with every grid cell seeded by the mask's class there
    (sec.synthetic.grid_sample; cells on the ignore label stay unseeded)."""
    cues = {}
    for image_file, image_id, _ in data.read_image_list(image_list):
        mask, path = read_mask(mask_folder, image_file)
        grid = synthetic.grid_sample(mask, cue_size).astype(np.int64)
        seeds = np.where(grid == IGNORE, UNSEEDED, grid)
        if seeds.max() >= num_classes:
            raise ValueError(f"{path}: class {int(seeds.max())} outside 0..{num_classes - 1}")
        present = np.unique(mask[(mask > 0) & (mask != IGNORE)]).astype(np.int64)
        cues[f"{image_id}_labels"] = present
        cues[f"{image_id}_cues"] = localization.seeds_to_cues(seeds)
    return cues


def write_cues(cues, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    formats.atomic_write_bytes(str(path), pickle.dumps(cues, protocol=PICKLE_PROTOCOL))
    return Path(path)


def seed_map(points, cue_size, source):
    """(3, K) cues -> cue_size x cue_size map of classes, UNSEEDED where no seed
    (sec.localization.cues_to_seeds, with the image named when a cell holds two seeds)."""
    try:
        return localization.cues_to_seeds(points, cue_size)
    except ValueError as err:
        raise ValueError(f"{source}: a cell carries two seeds; cue scoring needs one class per cell") from err


def score_cues(cues, image_list, mask_folder, num_classes, cue_size):
    """Cues alone against the masks: (seeded pixels only, unseeded as background) confusion
    matrices and the fraction of non-ignored pixels that carry a seed. The seed map is enlarged
    to the mask's size by the nearest cell, corners aligned (sec.synthetic.grid_upsample)."""
    seeded_only, as_background = metrics.ConfusionMatrix(num_classes), metrics.ConfusionMatrix(num_classes)
    covered = total = 0
    for image_file, image_id, _ in data.read_image_list(image_list):
        mask, path = read_mask(mask_folder, image_file)
        key = f"{image_id}_cues"
        if key not in cues:
            raise KeyError(f"{image_list}: image id {image_id} has no {key!r} in the cues")
        seeds = synthetic.grid_upsample(seed_map(cues[key], cue_size, f"image id {image_id}"), mask.shape)
        unseeded = seeds == UNSEEDED
        prediction = np.where(unseeded, 0, seeds)
        as_background.update(mask, prediction, name=str(path))
        seeded_only.update(np.where(unseeded, IGNORE, mask).astype(mask.dtype), prediction, name=str(path))
        valid = mask != IGNORE
        covered += int((valid & ~unseeded).sum())
        total += int(valid.sum())
    return seeded_only, as_background, covered / max(total, 1)


# ----- evaluation ----------------------------------------------------------------------------------
def enlarge_labels(labels, shape):
    """Nearest-neighbour resize of an h x w label map to `shape`, pixel centres aligned (the
    inverse geometry of sec.voc_render.downsample_mask); unchanged when the sizes agree."""
    labels = np.asarray(labels)
    if labels.shape == tuple(shape):
        return labels
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0]).astype(int), labels.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1]).astype(int), labels.shape[1] - 1)
    return labels[np.ix_(rows, cols)]


def boundary_band(gt, width=BOUNDARY_BAND_PX):
    """Boolean H x W mask of the pixels within `width` pixels (Euclidean) of a ground-truth
    boundary: a pixel whose horizontal or vertical neighbour holds another value (the ignore label
    counts as a value, so the annotators' void band marks boundaries too)."""
    gt = np.asarray(gt)
    edge = np.zeros(gt.shape, bool)
    across, down = gt[:, 1:] != gt[:, :-1], gt[1:, :] != gt[:-1, :]
    edge[:, :-1] |= across
    edge[:, 1:] |= across
    edge[:-1, :] |= down
    edge[1:, :] |= down
    if not edge.any():
        return edge
    return scipy.ndimage.distance_transform_edt(~edge) <= width


SCORES = ("plain", "crf", "band", "band_crf")   # evaluate_both's confusion matrices


def evaluate_both(deploy, weights, image_list, root_folder, mask_folder, num_classes, device="cpu", threads=0):
    """Segment every image of a list with the deploy net once, and score the masks without and
    with the dense CRF post-processing (sec.deploy.Segmenter; the CRF at the image's resolution)
    against `<mask_folder>/<image stem>.png`, over whole images and over the boundary band alone
    (boundary_band: the other pixels ignored). A mask larger than the image is scored at its own
    size, the prediction enlarged by nearest neighbour. threads: the CRF's threads (0: one per
    core). Returns ({name in SCORES: ConfusionMatrix}, {"plain": seconds of the net and the
    plain masks, "crf": seconds of the CRF masks})."""
    import torch

    from sec import caffe
    from sec.deploy import Segmenter

    net = caffe.Net(str(deploy), caffe.TEST, weights=str(weights))
    net.weight_report.require_complete()   # a layer at its filler would score plausible nonsense
    net.to(torch.device(device))
    net.eval()
    segmenters = {"plain": Segmenter(net, device=device),
                  "crf": Segmenter(net, device=device, crf=True, crf_threads=threads)}
    height, width = segmenters["plain"].input_size
    confusions = {name: metrics.ConfusionMatrix(num_classes) for name in SCORES}
    seconds = {"plain": 0.0, "crf": 0.0}
    entries = data.read_image_list(image_list)
    for start in range(0, len(entries), EVAL_BATCH):
        started = time.perf_counter()
        chunk = entries[start:start + EVAL_BATCH]
        images = [data.load_image(Path(root_folder) / image) for image, _, _ in chunk]
        masks = [read_mask(mask_folder, image) for image, _, _ in chunk]
        banded = [np.where(boundary_band(gt), gt, IGNORE).astype(gt.dtype) for gt, _ in masks]
        probs = segmenters["plain"].probabilities(np.stack([data.preprocess(image, height, width) for image in images]))
        seconds["plain"] += time.perf_counter() - started
        for name, segmenter in segmenters.items():
            started = time.perf_counter()
            for prediction, (gt, path), band_gt in zip(segmenter.masks(images, probs), masks, banded):
                prediction = enlarge_labels(prediction, gt.shape)
                confusions[name].update(gt, prediction, name=str(path))
                confusions["band" if name == "plain" else "band_crf"].update(band_gt, prediction, name=str(path))
            seconds[name] += time.perf_counter() - started
    return confusions, seconds


# ----- one run (in a worker process) ------------------------------------------------------------------
def run_one(job):
    """Train (job["train_command"], a subprocess) and score one run (job["eval"]: the keyword
    arguments of evaluate_both but weights); returns its record. Skips the training when the
    final weights exist and everything when scores.json exists too."""
    run_dir, name = Path(job["run_dir"]), job["name"]
    weights = run_dir / f"{name}_iter_{job['iters']}.caffemodel"
    scores_path, timing_path = run_dir / "scores.json", run_dir / "train_time.json"
    if weights.is_file() and scores_path.is_file():
        return dict(json.loads(scores_path.read_text()), skipped=True)
    print(f"  start {name}", flush=True)
    if not weights.is_file() or not timing_path.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        run_logged(job["train_command"], run_dir / "train.out", what=f"run {name}")
        if not weights.is_file():
            raise FileNotFoundError(f"{name}: training finished without {weights}")
        timing_path.write_text(json.dumps({"train_s": time.perf_counter() - started}))
    import torch
    torch.set_num_threads(job["threads"])
    record = {"name": name, "variant": job["variant"], "seed": job["seed"], "iters": job["iters"],
              "weights": str(weights), "train_s": json.loads(timing_path.read_text())["train_s"]}
    confusions, seconds = evaluate_both(weights=weights, **job["eval"])
    record["eval_s"], record["eval_crf_s"] = seconds["plain"], seconds["crf"]
    for name in SCORES:
        suffix = "" if name == "plain" else f"_{name}"
        record[f"miou{suffix}"] = confusions[name].miou()
        record[f"iou{suffix}"] = nan_to_none(confusions[name].iou())
    formats.atomic_write_bytes(str(scores_path), (json.dumps(record, indent=1) + "\n").encode())
    return dict(record, skipped=False)


def finished_records(jobs):
    """The records of the jobs whose final weights and scores.json exist (as run_one would reuse
    them), without training or scoring anything."""
    records = []
    for job in jobs:
        run_dir = Path(job["run_dir"])
        scores = run_dir / "scores.json"
        if (run_dir / f"{job['name']}_iter_{job['iters']}.caffemodel").is_file() and scores.is_file():
            records.append(dict(json.loads(scores.read_text()), skipped=True))
    return sorted(records, key=lambda r: (r["variant"], r["seed"]))


def run_logged(command, log_path, what):
    """Run a command with its output into log_path; a failure raises with the log's tail."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    with open(log_path, "w") as log:
        code = subprocess.run([str(c) for c in command], stdout=log, stderr=subprocess.STDOUT, env=env,
                              cwd=REPO_ROOT).returncode
    if code != 0:
        tail = Path(log_path).read_text(errors="replace").replace("\r", "\n").splitlines()[-OUTPUT_TAIL_LINES:]
        raise RuntimeError(f"{what} failed (exit {code}): {' '.join(map(str, command))}\n"
                           f"last lines of {log_path}:\n" + "\n".join(tail))


def run_jobs(jobs, workers, started):
    """Run the jobs `workers` at a time (fresh interpreters); records sorted by variant, seed."""
    records = []
    context = multiprocessing.get_context("spawn")   # a fresh interpreter per worker: no forked torch state
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(run_one, job): job for job in jobs}
        for done, future in enumerate(as_completed(futures), start=1):
            record = future.result()
            records.append(record)
            how = ("reused" if record["skipped"] else
                   f"train {record['train_s']:.0f} s, eval {record['eval_s']:.0f} s + CRF {record['eval_crf_s']:.0f} s")
            print(f"[{done}/{len(jobs)}] {record['name']}: mIoU {PERCENT * record['miou']:.1f}, "
                  f"with CRF {PERCENT * record['miou_crf']:.1f} ({how}; {time.perf_counter() - started:.0f} s elapsed)",
                  flush=True)
    return sorted(records, key=lambda r: (r["variant"], r["seed"]))


def is_newer(path, *sources):
    """`path` exists and is at least as new as every existing source (else it is to be remade)."""
    path = Path(path)
    return path.is_file() and all(path.stat().st_mtime >= Path(p).stat().st_mtime for p in sources if Path(p).is_file())


# ----- flags and settings of the benches -------------------------------------------------------------
def add_run_flags(parser, *, default_seeds, default_out, quick_out, quick_help, solver, variant_keys):
    """The flags both benches share: --seeds, --first-seed, --out, --quick, --jobs, --threads,
    --iters, --only (paths shown relative to the repository)."""
    parser.add_argument("--seeds", type=int, default=default_seeds,
                        help=f"seeds per configuration (default {default_seeds}; --quick: 1)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed + seeds - 1 "
                        "(another value repeats the benchmark on new seeds)")
    parser.add_argument("--out", type=Path, help=f"results folder (default {default_out.relative_to(REPO_ROOT)}, "
                        f"--quick: {quick_out.relative_to(REPO_ROOT)}); runs go to <out>/runs/")
    parser.add_argument("--quick", action="store_true", help=f"check the machinery: {quick_help}, 1 seed")
    parser.add_argument("--jobs", type=int, default=2, help="SEC runs trained at the same time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--iters", type=int, help="SEC iterations of every run (default: max_iter of "
                        f"{solver.relative_to(REPO_ROOT)})")
    parser.add_argument("--only", help="comma-separated variant keys to run (default all: " + ",".join(variant_keys) + ")")
    return parser


def run_settings(args, variants, *, default_out, quick_out, quick_iters, solver):
    """The settings of add_run_flags' flags: out and runs folders, SEC iterations, seeds (one with
    --quick), the variants --only names; ValueError naming a bad flag."""
    quick = args.quick
    out = (args.out or (quick_out if quick else default_out)).resolve()
    iters = args.iters or (quick_iters if quick else formats.read_solver_prototxt(str(solver)).max_iter)
    known = [v.key for v in variants]
    keys = args.only.split(",") if args.only else known
    unknown = sorted(set(keys) - set(known))
    if unknown:
        raise ValueError(f"--only: unknown variant(s) {unknown}; known: {known}")
    seeds = list(range(args.first_seed, args.first_seed + (1 if quick else args.seeds)))
    if args.jobs < 1 or args.threads < 1 or iters < 1 or not seeds:
        raise ValueError("need --jobs, --threads, --iters and --seeds >= 1")
    return dict(out=out, runs=out / "runs", iters=iters, seeds=seeds, quick=quick,
                variants=[v for v in variants if v.key in keys])


def command_line(args, parser, script):
    """The command that reproduces a bench run: the script and its non-default flags."""
    defaults = parser.parse_args([])
    flags = []
    for name, value in sorted(vars(args).items()):
        if value != getattr(defaults, name):
            flag = "--" + name.replace("_", "-")
            flags += [flag] if value is True else [flag, str(value)]
    return " ".join([f"python {script}", *flags])


def nan_to_none(values):
    return [None if math.isnan(v) else float(v) for v in values]
