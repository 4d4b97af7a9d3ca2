"""The paper's ablations on the synthetic benchmark: which loss and which pooling buys what.

One localization stage (the pipeline's fg CAM net, bg saliency net and cues, made by
`training/train.py --localization-only` into <out>/runs/localization/synthetic/) is shared by
every run; every SEC run starts from the fg net's trunk, trains the same number of iterations
(`training/train.py` as a subprocess, --jobs at a time) and is scored on the synthetic val split
without and with the dense CRF (one forward pass, sec.ablation.evaluate_both). Variants of models/synthetic/train.prototxt
are made on the parsed NetParameter: loss layers removed by name (and the CRF layer, which then
feeds nothing), the ExpandLossLayer's param_str replaced. The machinery (variant nets, runs,
aggregation, table, chart) is sec.ablation's, shared with bench/voc_shapes.py.

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
import os
import sys
import time
from functools import partial
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pylayers import load_cues  # noqa: E402

from sec import data, synthetic  # noqa: E402
from sec.ablation import (PAPER_EXPAND, PERCENT, Variant, command_line, is_newer,  # noqa: E402,F401
                          make_variant_net, nan_to_none, run_jobs, run_logged, write_cues, write_net)
from sec.ablation_report import aggregate, bar_chart, chart_entries, mean_std, padded_row, table_lines  # noqa: E402,F401
from sec import ablation as lib  # noqa: E402
from sec.caffe import formats  # noqa: E402

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
QUICK_TRAIN_IMAGES, QUICK_VAL_IMAGES = 48, 24
QUICK_LOC_ITERS, QUICK_SEC_ITERS = 30, 20
DEFAULT_SEEDS = 5                                       # 3 understated the spread (see README)


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


# Cue helpers of the library with this set's cue grid and classes.
ground_truth_cues = partial(lib.ground_truth_cues, cue_size=CUE_SIZE, num_classes=NUM_CLASSES)
score_cues = partial(lib.score_cues, num_classes=NUM_CLASSES, cue_size=CUE_SIZE)


# ----- aggregation and reports ------------------------------------------------------------------------
def markdown_table(rows, cue_reference, settings):
    lines = table_lines(rows, SECTIONS)
    if cue_reference:
        lines.append(padded_row(lines, "**cues alone (no training)**"))
        for split, what in (("val", "val cues"), ("train", "train cues (what SEC trains on)")):
            ref = cue_reference[split]
            lines.append(padded_row(lines, f"{what}, seeded pixels only ({PERCENT * ref['coverage']:.0f}% of pixels "
                                        f"seeded)", f"{PERCENT * ref['miou_seeded']:.1f}", "n/a", fill="-"))
            lines.append(padded_row(lines, f"{what}, unseeded pixels as background",
                                        f"{PERCENT * ref['miou_background']:.1f}", "n/a", fill="-"))
    header = (f"Synthetic val ({settings['val_images']} images), {settings['iters']} SEC iterations per run, "
              f"mean ± std (ddof 1) over seeds {settings['seeds']}; `{settings['command']}`; "
              f"whole ablation {settings['wall_s'] / 60:.1f} min wall ({settings['runs_trained']} runs trained, "
              f"{settings['runs_skipped']} reused).")
    return header + "\n\n" + "\n".join(lines) + "\n"


def ablation_chart(rows, cue_reference, path):
    """The variants' bars, then the val cues alone as single bars."""
    entries = chart_entries(rows, SECTIONS)
    if cue_reference:
        for label, field_name in (("val cues alone, seeded pixels only", "miou_seeded"),
                                  ("val cues alone, unseeded = background", "miou_background")):
            entries.append((label, {"mean": PERCENT * cue_reference["val"][field_name], "std": None}, None))
    bar_chart(entries, path, "mIoU % on synthetic val")


# ----- the ablation ----------------------------------------------------------------------------------
def build_parser():
    parser = argparse.ArgumentParser(description="SEC's ablations (losses, pooling, q_fg, CRF) on the synthetic set.")
    lib.add_run_flags(parser, default_seeds=DEFAULT_SEEDS, default_out=DEFAULT_OUT, quick_out=QUICK_OUT,
                      quick_help=f"a {QUICK_TRAIN_IMAGES}/{QUICK_VAL_IMAGES}-image set in <out>/data, "
                      f"{QUICK_LOC_ITERS} localization and {QUICK_SEC_ITERS} SEC iterations",
                      solver=SOLVER, variant_keys=[v.key for v in VARIANTS])
    parser.add_argument("--loc-iters", type=int, help="iterations of the fg and bg localization nets "
                        "(default: their solvers')")
    parser.add_argument("--synthetic-dir", type=Path, help=f"synthetic set (default {DEFAULT_DATA.relative_to(REPO_ROOT)}, "
                        "generated by train.py when absent; --quick: <out>/data)")
    return parser


def settings_of(args):
    s = lib.run_settings(args, VARIANTS, default_out=DEFAULT_OUT, quick_out=QUICK_OUT, quick_iters=QUICK_SEC_ITERS,
                         solver=SOLVER)
    s["loc_iters"] = args.loc_iters or (QUICK_LOC_ITERS if s["quick"] else None)
    s["dataset"] = (args.synthetic_dir or (s["out"] / "data" if s["quick"] else DEFAULT_DATA)).resolve()
    return s


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
            cues = gt_cues if variant.cues == "gt" else stage["cues"]
            command = [sys.executable, TRAIN_SCRIPT, "--synthetic-dir", s["dataset"], "--runs", s["runs"],
                       "--name", name, "--seed", seed, "--iters", s["iters"], "--threads", threads, "--net", net,
                       "--cues", cues, "--weights", stage["fg"], "--no-eval", "--overwrite"]  # unfinished: anew
            jobs.append({"name": name, "variant": variant.key, "seed": seed, "iters": s["iters"],
                         "threads": threads, "run_dir": str(s["runs"] / name), "train_command": command,
                         "eval": {"deploy": DEPLOY_NET, "image_list": s["dataset"] / "val.txt",
                                  "root_folder": s["dataset"] / "images", "mask_folder": s["dataset"] / "masks",
                                  "num_classes": NUM_CLASSES, "threads": threads}})
    return jobs


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
    settings = {"command": command_line(args, build_parser(), "bench/ablation.py"),
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
    ablation_chart(rows, cue_reference, out / "ablation.png")
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


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
