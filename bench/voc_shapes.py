"""SEC's ablation on the VOC stand-ins: the real PASCAL VOC 2012 masks, rendered photographs
(sec.voc_render), the authors' real localization cues, scored against the real masks.

Stages, each a file the next one reads, each kept when it is newer than what it is made from
(so an interrupted benchmark resumes):
  1. the masks (../shared/data/voc12_masks.tar.gz, unpacked into generated/voc12/) and their
     renders (generated/voc_shapes/, sec.voc_render; --quick: a few ids into <out>/renders/);
  2. lists: the SEC training subset of SEC's input_list.txt (--train-images ids, a fixed random
     choice, with their original ids, so the authors' cue pickle applies), the val list;
  3. the classification net (models/voc_shapes/cls.prototxt), trained on the renders' image-level
     labels (the cue pickle's '<id>_labels', never the masks) over the whole train_aug list by
     training/train_localization.py; it initialises every SEC run (conv1_1 ... fc7);
  4. the project's own cues on the training subset: training/make_cues.py with that net as both
     the CAM and the saliency net; ground-truth cues (every cell of the 41 x 41 grid seeded with
     the grid-sampled real mask); the cue reports of the authors' and the own cues, the same code
     (sec.localization_report) against the same real masks;
  5. the SEC runs (training/train.py --voc, one torch thread each, --jobs at a time): S, S+E, S+C,
     S+E+C (= GWRP), GMP, GAP with the authors' cues, S+E+C with the own cues, the seed loss on
     ground-truth cues (upper bound), each for --seeds seeds; each scored on the 1,449 val renders
     without and with the dense CRF against the real full-size masks (sec.ablation.evaluate_both);
  6. results/voc_shapes/table.{md,json}, chart.png, cue_report_{authors,own}.{txt,json,png}.

    python bench/voc_shapes.py              # the full table (see docs/voc_shapes.md for times)
    python bench/voc_shapes.py --quick      # the machinery on a few images, 1 seed (CI)

Needs ../shared/data (voc12_masks.tar.gz, localization_cues.pickle.gz, input_list.txt; set
SEC_SHARED_DATA to point elsewhere); nothing from it is ever written into the repository.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pylayers import load_cues  # noqa: E402

from sec import ablation as lib  # noqa: E402
from sec import ablation_report as report  # noqa: E402
from sec import data, localization_report, voc_render  # noqa: E402
from sec.ablation import PAPER_EXPAND, PERCENT, Variant  # noqa: E402
from sec.caffe import formats  # noqa: E402

SHARED_DATA = Path(os.environ.get("SEC_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
MASKS_TAR, AUTHORS_CUES, INPUT_LIST = "voc12_masks.tar.gz", "localization_cues.pickle.gz", "input_list.txt"
TRAIN_SCRIPT = REPO_ROOT / "training" / "train.py"
CLS_SCRIPT = REPO_ROOT / "training" / "train_localization.py"
CUES_SCRIPT = REPO_ROOT / "training" / "make_cues.py"
MODELS = REPO_ROOT / "models" / "voc_shapes"
BASE_NET, DEPLOY_NET, SOLVER = (MODELS / f for f in ("train.prototxt", "deploy.prototxt", "solver.prototxt"))
CLS_NET, CLS_SOLVER = MODELS / "cls.prototxt", MODELS / "cls_solver.prototxt"
GENERATED = REPO_ROOT / "generated"
DEFAULT_RENDERS = GENERATED / "voc_shapes"
DEFAULT_OUT = REPO_ROOT / "results" / "voc_shapes"
QUICK_OUT = REPO_ROOT / "results" / "voc_shapes-quick"
CUE_SIZE = 41
NUM_CLASSES = len(data.VOC_CLASSES)
DEFAULT_SEEDS = 3
DEFAULT_TRAIN_IMAGES = 2500
SUBSET_SEED = 0                      # the training subset: numpy default_rng(SUBSET_SEED) choice
QUICK_TRAIN_IMAGES, QUICK_VAL_IMAGES = 32, 16
QUICK_CLS_ITERS, QUICK_SEC_ITERS = 10, 6
EXAMPLES_IN_REPORT = localization_report.NUM_EXAMPLES

VARIANTS = (
    Variant("S", "S"), Variant("SE", "SE", PAPER_EXPAND), Variant("SC", "SC"),
    Variant("SEC", "SEC", PAPER_EXPAND),
    Variant("GMP", "SEC", {"pooling": "gmp"}), Variant("GAP", "SEC", {"pooling": "gap"}),
    Variant("OWN", "SEC", PAPER_EXPAND, cues="own"),
    Variant("GT", "S", cues="gt"),
)
# Table layout: (section, [(row label, variant key)]); S+E+C appears in each section it belongs to.
SECTIONS = (
    ("losses (authors' cues, GWRP)", [("S (seed only)", "S"), ("S+E", "SE"), ("S+C", "SC"),
                                      ("S+E+C (SEC)", "SEC")]),
    ("expansion pooling (S+E+C, authors' cues)", [("GMP", "GMP"), ("GAP", "GAP"),
                                                   ("GWRP q_fg 0.996 (= SEC)", "SEC")]),
    ("cues (S+E+C)", [("the authors' cues (= SEC)", "SEC"), ("the project's own cues (CAM + saliency)", "OWN")]),
    ("upper bound", [("ground-truth cues, seed loss", "GT")]),
)
CUE_SETS = (("authors", "the authors' cues (localization_cues.pickle.gz)"),
            ("own", "the project's own cues (CAM + saliency on the renders)"))


# ----- inputs ---------------------------------------------------------------------------------------
def shared_inputs():
    """Paths of the real data; FileNotFoundError naming the first one missing."""
    paths = {"tar": SHARED_DATA / MASKS_TAR, "cues": SHARED_DATA / AUTHORS_CUES, "list": SHARED_DATA / INPUT_LIST}
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the real VOC masks, cues and list live in ../shared/data "
                                    "(set SEC_SHARED_DATA)")
    return paths


def training_subset(entries, count, seed=SUBSET_SEED):
    """`count` entries of an image list chosen at random (numpy default_rng(seed)), in list order."""
    if count >= len(entries):
        return list(entries)
    chosen = np.sort(np.random.default_rng(seed).choice(len(entries), size=count, replace=False))
    return [entries[i] for i in chosen]


def write_lists(s, shared):
    """<out>/lists/{cls,train,val}.txt: the classification net's list (all train_aug ids; --quick:
    the subset), SEC's training subset (original ids), val (ids 0..N-1). A list whose content is
    unchanged keeps its file (and time stamp: later stages are made from it)."""
    entries = [(image, image_id) for image, image_id, _ in data.read_image_list(shared["list"])]
    subset = training_subset(entries, s["train_images"])
    val_ids = voc_render.read_ids(s["masks"] / "val.txt")[:s["val_images"]]
    lists = {"cls": subset if s["quick"] else entries, "train": subset,
             "val": [(f"{image_id}.jpg", k) for k, image_id in enumerate(val_ids)]}
    paths = {}
    for name, content in lists.items():
        paths[name] = s["out"] / "lists" / f"{name}.txt"
        text = "".join(f"{image} {image_id}\n" for image, image_id in content)
        if not paths[name].is_file() or paths[name].read_text() != text:
            data.write_image_list(paths[name], content)
    return paths


def render(s, lists):
    """Render the ids the lists name (all of train_aug and val unless --quick)."""
    def stems(path):
        return [Path(image).stem for image, _, _ in data.read_image_list(path)]
    splits = {"train_aug": list(dict.fromkeys(stems(lists["cls"]) + stems(lists["train"]))),
              "val": stems(lists["val"])}
    return voc_render.render_folder(s["masks"], s["renders"], splits=splits, workers=os.cpu_count() or 1,
                                    progress=not s["quick"])


# ----- classification net and cues -----------------------------------------------------------------
def classification_net(s, shared, lists):
    """<out>/cls.caffemodel (kept when newer than the renders' manifest and the list)."""
    weights = s["out"] / "cls.caffemodel"
    if lib.is_newer(weights, s["renders"] / "manifest.json", lists["cls"], CLS_NET, CLS_SOLVER):
        return weights
    run_dir = s["runs"] / "cls"
    from sec.run_folder import latest_snapshot
    again = ["--resume"] if latest_snapshot(run_dir, "fg") is not None else ["--overwrite"]
    command = [sys.executable, CLS_SCRIPT, "--net", "fg", "--preset", "voc", "--solver", CLS_SOLVER,
               "--list", lists["cls"], "--root", s["renders"] / "JPEGImages", "--labels", shared["cues"],
               "--run-dir", run_dir, "--out", weights, "--device", "cpu", *again]
    command += ["--iters", s["cls_iters"]] if s["cls_iters"] else []
    print(f"classification net -> {weights} ...", flush=True)
    lib.run_logged(command, s["out"] / "cls.out", "classification net")
    return weights


def own_cues(s, shared, lists, cls_weights):
    """<out>/own_cues.pickle: training/make_cues.py with the classification net as both nets."""
    path = s["out"] / "own_cues.pickle"
    if lib.is_newer(path, cls_weights, lists["train"]):
        return path
    command = [sys.executable, CUES_SCRIPT, "--preset", "voc", "--list", lists["train"],
               "--root", s["renders"] / "JPEGImages", "--labels", shared["cues"],
               "--fg-net", CLS_NET, "--bg-net", CLS_NET, "--fg-weights", cls_weights, "--bg-weights", cls_weights,
               "--out", path, "--device", "cpu", "--no-report"]
    print(f"own cues -> {path} ...", flush=True)
    lib.run_logged(command, s["out"] / "own_cues.out", "own cues")
    return path


def gt_cues(s, lists):
    path = s["out"] / "gt_cues.pickle"
    if not lib.is_newer(path, lists["train"]):
        lib.write_cues(lib.ground_truth_cues(lists["train"], s["mask_folder"], CUE_SIZE, NUM_CLASSES), path)
    return path


def cue_report(cue_path, name, title, s, lists):
    """The cue report (sec.localization_report, as make_cues.py writes it) of one cue file on the
    training subset, against the real masks: <out>/cue_report_<name>.{txt,json,png}; plus the
    cues alone scored as segmentations (sec.ablation.score_cues). Returns the summary."""
    cues = load_cues(str(cue_path))
    entries = data.read_image_list(lists["train"])
    ids = [image_id for _, image_id, _ in entries]
    image_of = {image_id: image for image, image_id, _ in entries}

    def truth_of(image_id):
        return lib.read_mask(s["mask_folder"], image_of[image_id])[0]
    stats = localization_report.cue_statistics(cues, ids, NUM_CLASSES, CUE_SIZE, truth_of)
    text = localization_report.format_report(stats, list(data.VOC_CLASSES), title=title)
    examples = [(f"{Path(image).stem}", data.load_image(s["renders"] / "JPEGImages" / image),
                 localization_report.seed_mask(cues[f"{image_id}_cues"], CUE_SIZE), truth_of(image_id))
                for image, image_id, _ in entries[:EXAMPLES_IN_REPORT]]
    base = s["out"] / f"cue_report_{name}"
    base.with_suffix(".txt").write_text(text + "\n")
    summary = stats.summary(list(data.VOC_CLASSES))
    seeded, background, coverage = lib.score_cues(cues, lists["train"], s["mask_folder"], NUM_CLASSES, CUE_SIZE)
    summary.update({"cues": str(cue_path), "miou_seeded": seeded.miou(), "miou_background": background.miou(),
                    "pixel_coverage": coverage, "background_share": float(stats.class_seeds[0] / max(1, stats.class_seeds.sum()))})
    base.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    localization_report.save_report_figure(base.with_suffix(".png"), stats, list(data.VOC_CLASSES), examples)
    return summary


# ----- runs -----------------------------------------------------------------------------------------
def make_jobs(s, lists, cues, cls_weights, threads):
    """One job per variant and seed, seed by seed (an interrupted benchmark has whole seeds)."""
    base = formats.read_net_prototxt(BASE_NET)
    nets = {variant.key: lib.write_net(lib.make_variant_net(base, variant.losses, variant.expand, str(BASE_NET)),
                                       s["out"] / "nets" / f"{variant.key}.prototxt")
            for variant in s["variants"]}
    jobs = []
    for seed in s["seeds"]:
        for variant in s["variants"]:
            name = f"{variant.key}_seed{seed}"
            command = [sys.executable, TRAIN_SCRIPT, "--voc", s["renders"], "--list", lists["train"],
                       "--cues", cues[variant.cues], "--weights", cls_weights, "--net", nets[variant.key],
                       "--solver", SOLVER, "--runs", s["runs"], "--name", name, "--seed", seed, "--iters", s["iters"],
                       "--threads", threads, "--device", "cpu", "--no-eval", "--overwrite"]  # unfinished: anew
            jobs.append({"name": name, "variant": variant.key, "seed": seed, "iters": s["iters"],
                         "threads": threads, "run_dir": str(s["runs"] / name), "train_command": command,
                         "eval": {"deploy": DEPLOY_NET, "image_list": lists["val"],
                                  "root_folder": s["renders"] / "JPEGImages", "mask_folder": s["mask_folder"],
                                  "num_classes": NUM_CLASSES, "threads": threads}})
    return jobs


# ----- reports --------------------------------------------------------------------------------------
def markdown_table(rows, cue_summaries, settings):
    lines = report.table_lines(rows, SECTIONS)
    lines.append(report.padded_row(lines, "**cues alone on the training subset (no training)**"))
    for name, what in CUE_SETS:
        ref = cue_summaries[name]
        lines.append(report.padded_row(lines, f"{what}: {PERCENT * ref['precision']:.1f} % precise, "
                                    f"{PERCENT * ref['seeded_fraction']:.1f} % of cells seeded; seeded pixels only",
                                    f"{PERCENT * ref['miou_seeded']:.1f}", "n/a", fill="-"))
        lines.append(report.padded_row(lines, f"{what}, unseeded pixels as background",
                                    f"{PERCENT * ref['miou_background']:.1f}", "n/a", fill="-"))
    partial = (f"**Partial: {len(settings['runs_missing'])} run(s) not finished: "
               f"{', '.join(settings['runs_missing'])}.** " if settings["runs_missing"] else "")
    header = partial + (f"VOC 2012 val stand-ins ({settings['val_images']} renders, scored against the real masks at full "
              f"size), SEC trained on {settings['train_images']} of the 10,582 train_aug renders, {settings['iters']} "
              f"iterations at batch 15 per run; mean ± std (ddof 1) over seeds {settings['seeds']}; "
              f"`{settings['command']}`; {'table written' if settings['report_only'] else 'whole benchmark'} "
              f"{settings['wall_s'] / 60:.1f} min wall "
              f"({settings['runs_trained']} runs trained, {settings['runs_skipped']} reused; load average "
              f"{settings['load_average_start']:.1f} at the start, {settings['load_average_end']:.1f} at the end).")
    return header + "\n\n" + "\n".join(lines) + "\n"


def write_reports(out, rows, cue_summaries, records, settings):
    table = markdown_table(rows, cue_summaries, settings)
    (out / "table.md").write_text(table)
    entries = report.chart_entries(rows, SECTIONS)
    for name, what in CUE_SETS:
        entries.append((f"{what.split(' (')[0]} alone (training subset), unseeded = background",
                        {"mean": PERCENT * cue_summaries[name]["miou_background"], "std": None}, None))
    report.bar_chart(entries, out / "chart.png", "mIoU % on the VOC 2012 val stand-ins (real masks)")
    summary = {"settings": settings, "rows": rows, "cues": cue_summaries,
               "runs": [{k: v for k, v in r.items() if k != "skipped"} for r in records]}
    (out / "table.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(table)


# ----- the benchmark -------------------------------------------------------------------------------------
def build_parser():
    parser = argparse.ArgumentParser(description="SEC's ablation on VOC stand-ins rendered from the real masks, "
                                     "with the authors' real cues.")
    lib.add_run_flags(parser, default_seeds=DEFAULT_SEEDS, default_out=DEFAULT_OUT, quick_out=QUICK_OUT,
                      quick_help=f"{QUICK_TRAIN_IMAGES} train and {QUICK_VAL_IMAGES} val renders in <out>/renders, "
                      f"{QUICK_CLS_ITERS} classification and {QUICK_SEC_ITERS} SEC iterations",
                      solver=SOLVER, variant_keys=[v.key for v in VARIANTS])
    parser.add_argument("--cls-iters", type=int, help="iterations of the classification net (default: "
                        "models/voc_shapes/cls_solver.prototxt's)")
    parser.add_argument("--train-images", type=int, default=DEFAULT_TRAIN_IMAGES,
                        help=f"SEC's training subset of the 10,582 train_aug images (default {DEFAULT_TRAIN_IMAGES})")
    parser.add_argument("--renders", type=Path, help=f"render folder (default {DEFAULT_RENDERS.relative_to(REPO_ROOT)}; "
                        "--quick: <out>/renders)")
    parser.add_argument("--report-only", action="store_true", help="train nothing: write the table of the runs "
                        "finished so far (e.g. while or after an interrupted benchmark), naming the missing ones")
    return parser


def settings_of(args):
    s = lib.run_settings(args, VARIANTS, default_out=DEFAULT_OUT, quick_out=QUICK_OUT, quick_iters=QUICK_SEC_ITERS,
                         solver=SOLVER)
    if args.train_images < 1:
        raise ValueError(f"--train-images: need at least 1, got {args.train_images}")
    quick, masks = s["quick"], GENERATED / "voc12"
    s.update(cls_iters=args.cls_iters or (QUICK_CLS_ITERS if quick else None),
             train_images=QUICK_TRAIN_IMAGES if quick else args.train_images,
             val_images=QUICK_VAL_IMAGES if quick else None,
             renders=(args.renders or (s["out"] / "renders" if quick else DEFAULT_RENDERS)).resolve(),
             masks=masks, mask_folder=masks / voc_render.MASK_FOLDER)
    return s


def main(args):
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    try:
        s = settings_of(args)
        shared = shared_inputs()
    except (ValueError, FileNotFoundError) as err:
        print(f"voc_shapes: {err}", file=sys.stderr)
        return 2
    s["out"].mkdir(parents=True, exist_ok=True)
    voc_render.extract_masks(shared["tar"], GENERATED)
    lists = write_lists(s, shared)
    render(s, lists)
    print(f"renders in {s['renders']} ({time.perf_counter() - started:.0f} s elapsed)", flush=True)
    if args.report_only:
        cls_weights, cues = s["out"] / "cls.caffemodel", {"cam": shared["cues"], "own": s["out"] / "own_cues.pickle",
                                                           "gt": s["out"] / "gt_cues.pickle"}
        missing = [str(path) for path in (cls_weights, cues["own"], cues["gt"]) if not path.is_file()]
        if missing:
            print(f"voc_shapes: --report-only: nothing to report yet, {missing[0]} does not exist", file=sys.stderr)
            return 2
    else:
        cls_weights = classification_net(s, shared, lists)
        cues = {"cam": shared["cues"], "own": own_cues(s, shared, lists, cls_weights), "gt": gt_cues(s, lists)}
    print(f"classification net and cues done ({time.perf_counter() - started:.0f} s elapsed)", flush=True)
    cue_summaries = {"authors": cue_report(cues["cam"], "authors", CUE_SETS[0][1], s, lists),
                     "own": cue_report(cues["own"], "own", CUE_SETS[1][1], s, lists)}
    for name, ref in cue_summaries.items():
        print(f"{name} cues on the training subset: precision {PERCENT * ref['precision']:.1f} %, "
              f"{PERCENT * ref['seeded_fraction']:.1f} % of cells seeded, {PERCENT * ref['background_share']:.1f} % "
              "of seeds background", flush=True)
    jobs = make_jobs(s, lists, cues, cls_weights, args.threads)
    print(f"{len(jobs)} SEC runs, {s['iters']} iterations each, {args.jobs} at a time", flush=True)
    records = lib.finished_records(jobs) if args.report_only else lib.run_jobs(jobs, args.jobs, started)
    if not records:
        print("voc_shapes: --report-only: no run has finished yet", file=sys.stderr)
        return 2
    settings = {"command": lib.command_line(args, build_parser(), "bench/voc_shapes.py"),
                "iters": s["iters"], "seeds": s["seeds"], "renders": str(s["renders"]),
                "generator": voc_render.GENERATOR, "generator_version": voc_render.GENERATOR_VERSION,
                "train_images": len(data.read_image_list(lists["train"])),
                "val_images": len(data.read_image_list(lists["val"])),
                "runs_trained": sum(not r["skipped"] for r in records), "runs_skipped": sum(r["skipped"] for r in records),
                "jobs": args.jobs, "threads": args.threads, "wall_s": time.perf_counter() - started,
                "load_average_start": load_start, "load_average_end": os.getloadavg()[0],
                "classes": list(data.VOC_CLASSES), "report_only": args.report_only,
                "runs_missing": sorted({job["name"] for job in jobs} - {r["name"] for r in records})}
    write_reports(s["out"], report.aggregate(records), cue_summaries, records, settings)
    print(f"voc_shapes: {settings['wall_s'] / 60:.1f} min wall; wrote {s['out'] / 'table.md'}, table.json, chart.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
