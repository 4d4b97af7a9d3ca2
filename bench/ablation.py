"""The paper's ablations on the synthetic benchmark: which loss and which pooling buys what.

One localization stage (the pipeline's fg CAM net, bg saliency net and cues, made by
`training/train.py --localization-only` into <out>/runs/localization/synthetic/) is shared by
every run; every SEC run starts from the fg net's trunk, trains the same number of iterations
(`training/train.py` as a subprocess, --jobs at a time) and is scored on the synthetic val split
without and with the dense CRF (sec.train.evaluate). Variants of models/synthetic/train.prototxt
are made on the parsed NetParameter: loss layers removed by name (and the CRF layer, which then
feeds nothing), the ExpandLossLayer's param_str replaced.

Reference rows: the cues alone on val (made with the same fg/bg nets; the 21 x 21 seed map is
upsampled to the mask size by nearest cell, corners aligned as sec.synthetic.grid_positions),
scored on seeded pixels only and with unseeded pixels counted as background; and a fully
supervised bound: the same net and seed loss on ground-truth cues (every cell of the 21 x 21 grid
seeded with the grid-sampled mask class).

    python bench/ablation.py                    # 5 seeds -> results/ablation/ablation.{md,png,json}
    python bench/ablation.py --quick            # tiny set, few iterations, 1 seed: the machinery
A run whose final weights and scores.json exist is skipped, so an interrupted ablation resumes.
"""
import argparse
import json
import math
import multiprocessing
import os
import pickle
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from google.protobuf import text_format  # noqa: E402
from PIL import Image  # noqa: E402
from pylayers import functions as loss_functions, load_cues  # noqa: E402

from sec import data, localization, metrics, synthetic  # noqa: E402
from sec.localization import UNSEEDED  # noqa: E402
from sec.caffe import formats  # noqa: E402
from sec.proto import caffe_pb2  # noqa: E402

TRAIN_SCRIPT = REPO_ROOT / "training" / "train.py"
CUES_SCRIPT = REPO_ROOT / "training" / "make_cues.py"
MODELS = REPO_ROOT / "models" / "synthetic"
BASE_NET, DEPLOY_NET, SOLVER = (MODELS / f for f in ("train.prototxt", "deploy.prototxt", "solver.prototxt"))
DEFAULT_DATA = REPO_ROOT / "generated" / "synthetic"
DEFAULT_OUT = REPO_ROOT / "results" / "ablation"
QUICK_OUT = REPO_ROOT / "results" / "ablation-quick"
LOCALIZATION = Path("localization") / "synthetic"     # under <out>/runs, as train.py lays it out
CUE_SIZE = 21
NUM_CLASSES = len(synthetic.CLASSES)
IGNORE = metrics.IGNORE_LABEL
PICKLE_PROTOCOL = 2                                     # the original cue pickles' protocol
QUICK_TRAIN_IMAGES, QUICK_VAL_IMAGES = 48, 24
QUICK_LOC_ITERS, QUICK_SEC_ITERS = 30, 20
DEFAULT_SEEDS = 5                                       # 3 understated the spread (see README)
PERCENT = 100.0
OUTPUT_TAIL_LINES = 30

LOSS_LAYERS = {"S": "loss-Seed", "E": "loss-Expand", "C": "loss-Constrain"}
EXPAND_LAYER = "ExpandLossLayer"
PAPER_EXPAND = {"pooling": "gwrp", "q_fg": loss_functions.Q_FG, "q_bg": loss_functions.Q_BG}


@dataclass(frozen=True)
class Variant:
    """One trained configuration: which losses, the ExpandLoss param_str, which cues."""
    key: str
    losses: str                      # letters of LOSS_LAYERS kept
    expand: dict = field(default=None, hash=False)   # ExpandLossLayer param_str values; None: leave it
    cues: str = "cam"                # "cam": the localization cues; "gt": ground-truth cues


def _gwrp(q_fg):
    return dict(PAPER_EXPAND, q_fg=q_fg)


VARIANTS = (
    Variant("S", "S"), Variant("SE", "SE", PAPER_EXPAND), Variant("SC", "SC"),
    Variant("SEC", "SEC", PAPER_EXPAND),
    Variant("GMP", "SEC", {"pooling": "gmp"}), Variant("GAP", "SEC", {"pooling": "gap"}),
    Variant("q0.9", "SEC", _gwrp(0.9)), Variant("q0.99", "SEC", _gwrp(0.99)),
    Variant("q0.999", "SEC", _gwrp(0.999)),
    Variant("GT", "S", cues="gt"),
)
# Table layout: (section, [(row label, variant key)]); S+E+C appears in each section it belongs to.
SECTIONS = (
    ("losses (GWRP)", [("S (seed only)", "S"), ("S+E", "SE"), ("S+C", "SC"), ("S+E+C (SEC)", "SEC")]),
    ("expansion pooling (S+E+C)", [("GMP", "GMP"), ("GAP", "GAP"), ("GWRP q_fg 0.996 (= SEC)", "SEC")]),
    ("GWRP q_fg, q_bg 0.999 (S+E+C)", [("q_fg 0.9", "q0.9"), ("q_fg 0.99", "q0.99"),
                                       ("q_fg 0.996 (= SEC)", "SEC"), ("q_fg 0.999", "q0.999")]),
    ("upper bound", [("ground-truth cues, seed loss", "GT")]),
)


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
    path = Path(mask_folder) / (Path(image_file).stem + ".png")
    if not path.is_file():
        raise FileNotFoundError(f"no ground-truth mask {path} for {image_file}")
    return np.asarray(Image.open(path)), path


def ground_truth_cues(image_list, mask_folder, cue_size=CUE_SIZE, num_classes=NUM_CLASSES):
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


def score_cues(cues, image_list, mask_folder, num_classes=NUM_CLASSES, cue_size=CUE_SIZE):
    """Cues alone against the masks: (seeded pixels only, unseeded as background) confusion
    matrices and the fraction of non-ignored pixels that carry a seed."""
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


# ----- one run (in a worker process) ------------------------------------------------------------------
def run_one(job):
    """Train (training/train.py subprocess) and score one run; returns its record. Skips the
    training when the final weights exist and everything when scores.json exists too."""
    run_dir, name = Path(job["run_dir"]), job["name"]
    weights = run_dir / f"{name}_iter_{job['iters']}.caffemodel"
    scores_path, timing_path = run_dir / "scores.json", run_dir / "train_time.json"
    if weights.is_file() and scores_path.is_file():
        return dict(json.loads(scores_path.read_text()), skipped=True)
    print(f"  start {name}", flush=True)
    if not weights.is_file() or not timing_path.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        train_subprocess(job, run_dir / "train.out")
        if not weights.is_file():
            raise FileNotFoundError(f"{name}: training finished without {weights}")
        timing_path.write_text(json.dumps({"train_s": time.perf_counter() - started}))
    import torch
    from sec.train import evaluate
    torch.set_num_threads(job["threads"])
    record = {"name": name, "variant": job["variant"], "seed": job["seed"], "iters": job["iters"],
              "weights": str(weights), "train_s": json.loads(timing_path.read_text())["train_s"]}
    dataset = Path(job["dataset"])
    for suffix, crf in (("", False), ("_crf", True)):
        started = time.perf_counter()
        confusion = evaluate(DEPLOY_NET, weights, dataset / "val.txt", dataset / "images", dataset / "masks",
                             NUM_CLASSES, device="cpu", crf=crf)
        record[f"eval{suffix}_s"] = time.perf_counter() - started
        record[f"miou{suffix}"] = confusion.miou()
        record[f"iou{suffix}"] = nan_to_none(confusion.iou())
    formats.atomic_write_bytes(str(scores_path), (json.dumps(record, indent=1) + "\n").encode())
    return dict(record, skipped=False)


def train_subprocess(job, log_path):
    command = [sys.executable, str(TRAIN_SCRIPT), "--synthetic-dir", job["dataset"], "--runs", job["runs"],
               "--name", job["name"], "--seed", str(job["seed"]), "--iters", str(job["iters"]),
               "--threads", str(job["threads"]), "--net", job["net"], "--cues", job["cues"],
               "--weights", job["init"], "--no-eval", "--overwrite"]   # an unfinished run starts again
    run_logged(command, log_path, what=f"run {job['name']}")


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


# ----- aggregation and reports ------------------------------------------------------------------------
def mean_std(values):
    """(mean, sample std (ddof 1; None for a single value), count) of a list of numbers."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("need at least one value")
    std = float(values.std(ddof=1)) if values.size > 1 else None
    return float(values.mean()), std, int(values.size)


def aggregate(records):
    """Per variant key: mean/std of mIoU without and with CRF (in %) and of the times."""
    rows = {}
    for key in sorted({r["variant"] for r in records}):
        mine = [r for r in records if r["variant"] == key]
        row = {"seeds": sorted(r["seed"] for r in mine)}
        for field_name in ("miou", "miou_crf"):
            mean, std, _ = mean_std([PERCENT * r[field_name] for r in mine])
            row[field_name] = {"mean": mean, "std": std}
        for field_name in ("train_s", "eval_s", "eval_crf_s"):
            row[field_name] = mean_std([r[field_name] for r in mine])[0]
        rows[key] = row
    return rows


def _pm(stat):
    return f"{stat['mean']:.1f}" if stat["std"] is None else f"{stat['mean']:.1f} ± {stat['std']:.1f}"


def markdown_table(rows, cue_reference, settings):
    lines = ["| configuration | mIoU % | mIoU % with CRF | seeds | time per run, s (train + eval + CRF eval) |",
             "|---|---|---|---|---|"]
    for section, entries in SECTIONS:
        entries = [(label, key) for label, key in entries if key in rows]
        if entries:
            lines.append(f"| **{section}** | | | | |")
        for label, key in entries:
            r = rows[key]
            lines.append(f"| {label} | {_pm(r['miou'])} | {_pm(r['miou_crf'])} | {len(r['seeds'])} | "
                         f"{r['train_s']:.0f} + {r['eval_s']:.0f} + {r['eval_crf_s']:.0f} |")
    if cue_reference:
        lines.append("| **cues alone (no training)** | | | | |")
        for split, what in (("val", "val cues"), ("train", "train cues (what SEC trains on)")):
            ref = cue_reference[split]
            lines.append(f"| {what}, seeded pixels only ({PERCENT * ref['coverage']:.0f}% of pixels seeded) | "
                         f"{PERCENT * ref['miou_seeded']:.1f} | n/a | - | - |")
            lines.append(f"| {what}, unseeded pixels as background | {PERCENT * ref['miou_background']:.1f} "
                         "| n/a | - | - |")
    header = (f"Synthetic val ({settings['val_images']} images), {settings['iters']} SEC iterations per run, "
              f"mean ± std (ddof 1) over seeds {settings['seeds']}; `{settings['command']}`; "
              f"whole ablation {settings['wall_s'] / 60:.1f} min wall ({settings['runs_trained']} runs trained, "
              f"{settings['runs_skipped']} reused).")
    return header + "\n\n" + "\n".join(lines) + "\n"


def chart_rows():
    """(label, key) of every variant once, in table order (S+E+C only in its first section)."""
    seen, entries = set(), []
    for section, rows in SECTIONS:
        for label, key in rows:
            if key not in seen:
                seen.add(key)
                entries.append((f"{label} [{section.split(' (')[0]}]", key))
    return entries


def bar_chart(rows, cue_reference, path):
    """Horizontal bars, without and with CRF, std error bars; the cue rows as single bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, plain, crf = [], [], []
    for label, key in chart_rows():
        if key in rows:
            labels.append(label)
            plain.append(rows[key]["miou"])
            crf.append(rows[key]["miou_crf"])
    if cue_reference:
        for label, field_name in (("val cues alone, seeded pixels only", "miou_seeded"),
                                  ("val cues alone, unseeded = background", "miou_background")):
            labels.append(label)
            plain.append({"mean": PERCENT * cue_reference["val"][field_name], "std": None})
            crf.append(None)
    y = np.arange(len(labels))[::-1]
    height = 0.4
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(labels) + 1.5))
    for offset, stats, name in ((height / 2, plain, "no CRF"), (-height / 2, crf, "CRF at test time")):
        kept = [(yy, s) for yy, s in zip(y, stats) if s is not None]
        ax.barh([yy + offset for yy, _ in kept], [s["mean"] for _, s in kept], height,
                xerr=[s["std"] or 0.0 for _, s in kept], capsize=3, label=name)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel("mIoU % on synthetic val")
    ax.set_xlim(0, 100)
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----- the ablation ----------------------------------------------------------------------------------
def build_parser():
    parser = argparse.ArgumentParser(description="SEC's ablations (losses, pooling, q_fg, CRF) on the synthetic set.")
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS,
                        help=f"seeds per configuration (default {DEFAULT_SEEDS}; --quick: 1)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed + seeds - 1 "
                        "(another value repeats the ablation on new seeds)")
    parser.add_argument("--out", type=Path, help=f"results folder (default {DEFAULT_OUT.relative_to(REPO_ROOT)}, "
                        f"--quick: {QUICK_OUT.relative_to(REPO_ROOT)}); runs go to <out>/runs/")
    parser.add_argument("--quick", action="store_true", help=f"check the machinery: a {QUICK_TRAIN_IMAGES}/"
                        f"{QUICK_VAL_IMAGES}-image set in <out>/data, {QUICK_LOC_ITERS} localization and "
                        f"{QUICK_SEC_ITERS} SEC iterations, 1 seed")
    parser.add_argument("--jobs", type=int, default=2, help="SEC runs trained at the same time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--iters", type=int, help="SEC iterations of every run (default: max_iter of "
                        "models/synthetic/solver.prototxt)")
    parser.add_argument("--loc-iters", type=int, help="iterations of the fg and bg localization nets "
                        "(default: their solvers')")
    parser.add_argument("--synthetic-dir", type=Path, help=f"synthetic set (default {DEFAULT_DATA.relative_to(REPO_ROOT)}, "
                        "generated by train.py when absent; --quick: <out>/data)")
    parser.add_argument("--only", help="comma-separated variant keys to run (default all: "
                        + ",".join(v.key for v in VARIANTS) + ")")
    return parser


def settings_of(args):
    quick = args.quick
    out = (args.out or (QUICK_OUT if quick else DEFAULT_OUT)).resolve()
    iters = args.iters or (QUICK_SEC_ITERS if quick else formats.read_solver_prototxt(SOLVER).max_iter)
    loc_iters = args.loc_iters or (QUICK_LOC_ITERS if quick else None)
    dataset = (args.synthetic_dir or (out / "data" if quick else DEFAULT_DATA)).resolve()
    seeds = list(range(args.first_seed, args.first_seed + (1 if quick else args.seeds)))
    keys = args.only.split(",") if args.only else [v.key for v in VARIANTS]
    unknown = sorted(set(keys) - {v.key for v in VARIANTS})
    if unknown:
        raise ValueError(f"--only: unknown variant(s) {unknown}; known: {[v.key for v in VARIANTS]}")
    if args.jobs < 1 or args.threads < 1 or iters < 1 or not seeds:
        raise ValueError("need --jobs, --threads, --iters and --seeds >= 1")
    return dict(out=out, runs=out / "runs", iters=iters, loc_iters=loc_iters, dataset=dataset, seeds=seeds,
                variants=[v for v in VARIANTS if v.key in keys], quick=quick)


def localization_stage(s, threads):
    """fg/bg nets and train cues (training/train.py --localization-only, which keeps the stages
    whose files are newer than the dataset), then cues for val.txt with the same nets (remade
    when older than either net). Returns their paths."""
    folder = s["runs"] / LOCALIZATION
    stage = {"fg": folder / "fg.caffemodel", "bg": folder / "bg.caffemodel", "cues": folder / "cues.pickle",
             "val_cues": s["out"] / "val_cues.pickle"}
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, TRAIN_SCRIPT, "--synthetic-dir", s["dataset"], "--runs", s["runs"],
               "--localization-only", "--threads", threads]
    command += ["--loc-iters", s["loc_iters"]] if s["loc_iters"] else []
    run_logged(command, s["out"] / "localization.out", "localization stage")   # keeps fresh stages
    if not is_newer(stage["val_cues"], stage["fg"], stage["bg"]):
        d = s["dataset"]
        command = [sys.executable, CUES_SCRIPT, "--preset", "synthetic", "--list", d / "val.txt",
                   "--root", d / "images", "--labels", d / "val_labels.json", "--fg-weights", stage["fg"],
                   "--bg-weights", stage["bg"], "--out", stage["val_cues"], "--no-report"]
        run_logged(command, s["out"] / "val_cues.out", "cues for val.txt")
    return stage


def is_newer(path, *sources):
    """`path` exists and is at least as new as every existing source (else it is to be remade)."""
    path = Path(path)
    return path.is_file() and all(path.stat().st_mtime >= Path(p).stat().st_mtime for p in sources if Path(p).is_file())


def make_jobs(s, stage, threads):
    base = formats.read_net_prototxt(BASE_NET)
    gt_cues = s["out"] / "gt_cues.pickle"
    if any(v.cues == "gt" for v in s["variants"]) and not is_newer(gt_cues, s["dataset"] / "manifest.json"):
        write_cues(ground_truth_cues(s["dataset"] / "train.txt", s["dataset"] / "masks"), gt_cues)
    jobs = []
    for variant in s["variants"]:
        net = write_net(make_variant_net(base, variant.losses, variant.expand, str(BASE_NET)),
                        s["out"] / "nets" / f"{variant.key}.prototxt")
        for seed in s["seeds"]:
            name = f"{variant.key}_seed{seed}"
            jobs.append({"name": name, "variant": variant.key, "seed": seed, "iters": s["iters"],
                         "threads": threads, "net": str(net), "run_dir": str(s["runs"] / name),
                         "runs": str(s["runs"]), "dataset": str(s["dataset"]), "init": str(stage["fg"]),
                         "cues": str(gt_cues if variant.cues == "gt" else stage["cues"])})
    return jobs


def run_jobs(jobs, workers, started):
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


def main(args):
    started = time.perf_counter()
    s = settings_of(args)
    s["out"].mkdir(parents=True, exist_ok=True)
    if s["quick"]:
        synthetic.generate(s["dataset"], QUICK_TRAIN_IMAGES, QUICK_VAL_IMAGES, image_size=160, cue_size=CUE_SIZE)
    print(f"localization stage into {s['runs'] / LOCALIZATION} ...", flush=True)
    stage = localization_stage(s, threads=os.cpu_count() or 1)
    print(f"  done ({time.perf_counter() - started:.0f} s elapsed)", flush=True)
    cue_reference = {"val": cue_summary(stage["val_cues"], s["dataset"] / "val.txt", s["dataset"] / "masks"),
                     "train": cue_summary(stage["cues"], s["dataset"] / "train.txt", s["dataset"] / "masks")}
    for split, ref in cue_reference.items():
        print(f"{split} cues alone: mIoU {PERCENT * ref['miou_seeded']:.1f} on seeded pixels "
              f"({PERCENT * ref['coverage']:.0f}% seeded), {PERCENT * ref['miou_background']:.1f} with unseeded "
              "as background", flush=True)
    jobs = make_jobs(s, stage, args.threads)
    print(f"{len(jobs)} SEC runs, {s['iters']} iterations each, {args.jobs} at a time", flush=True)
    records = run_jobs(jobs, args.jobs, started)
    rows = aggregate(records)
    settings = {"command": command_line(args),
                "iters": s["iters"], "seeds": s["seeds"], "dataset": str(s["dataset"]),
                "val_images": len(data.read_image_list(s["dataset"] / "val.txt")),
                "runs_trained": sum(not r["skipped"] for r in records), "runs_skipped": sum(r["skipped"] for r in records),
                "jobs": args.jobs, "threads": args.threads, "wall_s": time.perf_counter() - started,
                "classes": list(synthetic.CLASSES)}
    write_reports(s["out"], rows, cue_reference, records, settings)
    print(f"ablation: {settings['wall_s'] / 60:.1f} min wall; wrote {s['out'] / 'ablation.md'}, ablation.png, ablation.json")
    return 0


def write_reports(out, rows, cue_reference, records, settings):
    table = markdown_table(rows, cue_reference, settings)
    (out / "ablation.md").write_text(table)
    bar_chart(rows, cue_reference, out / "ablation.png")
    report = {"settings": settings, "rows": rows, "cue_reference": cue_reference,
              "runs": [{k: v for k, v in r.items() if k != "skipped"} for r in records]}
    (out / "ablation.json").write_text(json.dumps(report, indent=1) + "\n")
    print(table)


def cue_summary(cue_path, image_list, mask_folder):
    seeded, background, coverage = score_cues(load_cues(cue_path), image_list, mask_folder)
    return {"cues": str(cue_path), "miou_seeded": seeded.miou(), "miou_background": background.miou(),
            "coverage": coverage, "iou_seeded": nan_to_none(seeded.iou()),
            "iou_background": nan_to_none(background.iou()),
            "grid": f"{CUE_SIZE}x{CUE_SIZE} seed map upsampled to the mask size by nearest cell, corners aligned"}


def command_line(args):
    """The command that reproduces this ablation: the script and its non-default flags."""
    defaults = build_parser().parse_args([])
    flags = []
    for name, value in sorted(vars(args).items()):
        if value != getattr(defaults, name):
            flag = "--" + name.replace("_", "-")
            flags += [flag] if value is True else [flag, str(value)]
    return " ".join(["python bench/ablation.py", *flags])


def nan_to_none(values):
    return [None if math.isnan(v) else float(v) for v in values]


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
