"""Generate SEC's localization cues with the two trained localization nets.

    python training/make_cues.py                      # synthetic set, nets of train_localization.py
    python training/make_cues.py --preset voc --list input_list.txt --root VOC2012/JPEGImages \
        --voc VOC2012 --fg-weights fg.caffemodel --bg-weights bg.caffemodel --out cues.pickle

Writes the original pickle: '<id>_labels' (int64 foreground classes 1..C-1) and '<id>_cues'
(int64 (3, K): class, row, column on the cue grid), protocol 2. Image-level labels come from
--labels (a JSON {"<id>": [classes]} file, or a cue pickle's '<id>_labels') or, with --voc, from
the segmentation ground truth (SegmentationClass, else SegmentationClassAug). Images go through the
nets in batches, decoded ahead by worker threads; every --save-every images the results so far are
saved to <out>.partial (keyed by id, with the nets and settings, and per image a digest of its
file and labels) and a rerun skips the images whose cues would be the same. With --report, a text report and a PNG
(seeds per image, class balance, precision/recall against ground truth when there is some).

Every input, flag and output folder is checked before the first image. Exit status: 0 done; 2 a
missing or unusable input, flag value or output (a read-only --out, a full disk: the message names
the file; what was done is saved to <out>.partial); 130 Ctrl-C (likewise saved).
"""
import argparse
import hashlib
import json
import os
import pickle
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
PICKLE_PROTOCOL = 2          # readable by the original Python 2 code
PARTIAL_SUFFIX = ".partial"
PARTIAL_FORMAT = 2           # 1: a fingerprint without labels, root and images (issue 19)
EXIT_BAD_INPUT = 2           # a missing or unusable input, flag or output folder; also a full disk
EXIT_INTERRUPTED = 130       # Ctrl-C; the images done so far are kept in <out>.partial


class OutputError(OSError):
    """An output (cues, .partial, report) that cannot be written: the message names the file."""


def build_parser():
    from sec import localization as loc
    from sec.run_folder import float_in, nonnegative_int, positive_int
    parser = argparse.ArgumentParser(description="Generate SEC localization cues (original pickle format).")
    parser.add_argument("--preset", choices=sorted(loc.PRESETS), default="synthetic",
                        help="net prototxts, class count, cue grid and default paths")
    parser.add_argument("--list", type=Path, help="image list '<image> <id>' (synthetic default: train.txt of the set)")
    parser.add_argument("--root", type=Path, help="folder the list's image paths are relative to")
    parser.add_argument("--labels", type=Path, help="image-level labels: JSON {\"<id>\": [classes]} or a cue "
                        "pickle's '<id>_labels' (synthetic default: train_labels.json)")
    parser.add_argument("--voc", type=Path, help="VOC folder: labels (without --labels) and the report's ground "
                        "truth come from SegmentationClass(Aug)/<image stem>.png")
    parser.add_argument("--masks", type=Path, help="ground-truth folder <image stem>.png for the report "
                        "(synthetic default: masks/ of the set)")
    parser.add_argument("--fg-weights", type=Path, help="foreground (CAM) net .caffemodel")
    parser.add_argument("--bg-weights", type=Path, help="background (saliency) net .caffemodel")
    parser.add_argument("--fg-net", type=Path, help="foreground net prototxt (default: <preset models>/fg.prototxt)")
    parser.add_argument("--bg-net", type=Path, help="background net prototxt (default: <preset models>/bg.prototxt)")
    parser.add_argument("--out", type=Path, help="output cue pickle (default: runs/localization/<preset>/cues.pickle)")
    parser.add_argument("--threshold", type=float_in(0, 1, high_open=True), default=loc.FG_THRESHOLD,
                        help="foreground seeds: heat > threshold x the class's maximum heat; 0 <= threshold < 1 "
                        "(default %(default)s)")
    parser.add_argument("--percentile", type=float_in(0, 100), default=loc.BG_PERCENTILE,
                        help="background seeds: this percentage (0..100) of least salient cells "
                        "(default %(default)s)")
    parser.add_argument("--fg-bg-rule", choices=loc.FG_BG_RULES, default=loc.DEFAULT_FG_BG_RULE,
                        help="a cell that is both a foreground and a background seed: drop it or give it to one side")
    parser.add_argument("--batch", type=positive_int, default=16, help="images per forward pass (>= 1)")
    parser.add_argument("--workers", type=nonnegative_int, default=min(2, os.cpu_count() or 1),
                        help="threads decoding images ahead of the nets (0 counts as 1)")
    parser.add_argument("--save-every", type=positive_int, default=500,
                        help="save partial results to <out>.partial every N images (>= 1)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    parser.add_argument("--report", type=Path, help="folder for report.txt, report.json and report.png "
                        "(default: beside --out)")
    parser.add_argument("--no-report", action="store_true", help="skip the report")
    parser.add_argument("--restart", action="store_true", help="ignore (and replace) the partial results of an "
                        "earlier run in <out>.partial; without it they are reused when every input and setting "
                        "that decides the cues is the same")
    return parser


def resolve(args):
    """Fill the preset's defaults into args; check the inputs exist."""
    from sec.localization import preset_paths
    preset = preset_paths(args.preset, REPO_ROOT)
    dataset = preset["dataset"]
    runs = preset["runs"]
    if args.list is None and dataset is not None:
        args.list = dataset / "train.txt"
        args.root = args.root or dataset / "images"
        args.labels = args.labels or dataset / "train_labels.json"
        args.masks = args.masks or dataset / "masks"
    args.fg_net = args.fg_net or preset["models"] / "fg.prototxt"
    args.bg_net = args.bg_net or preset["models"] / "bg.prototxt"
    args.fg_weights = args.fg_weights or runs / "fg.caffemodel"
    args.bg_weights = args.bg_weights or runs / "bg.caffemodel"
    args.out = args.out or runs / "cues.pickle"
    args.report = args.report or args.out.parent
    args.num_classes, args.cue_size = preset["num_classes"], preset["cue_size"]
    if args.list is None or args.root is None:
        raise FileNotFoundError(f"--preset {args.preset} needs --list and --root")
    if args.labels is None and args.voc is None:
        raise FileNotFoundError("need --labels or --voc (labels from the segmentation ground truth)")
    for flag, path in (("--list", args.list), ("--fg-weights", args.fg_weights), ("--bg-weights", args.bg_weights),
                       ("--fg-net", args.fg_net), ("--bg-net", args.bg_net), ("--labels", args.labels)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{flag}: {path} not found")
    if not Path(args.root).is_dir():
        raise FileNotFoundError(f"--root: folder {args.root} not found")
    return args


def check_outputs(args):
    """--out and the report folder take files (checked before any image is read)."""
    from sec.run_folder import check_writable_folder
    if Path(args.out).is_dir():
        raise FileNotFoundError(f"--out: {args.out} is a folder; need the cue pickle's file name")
    check_writable_folder(Path(args.out).parent, "--out")
    if not args.no_report:
        check_writable_folder(args.report, "--report")


def truth_finder(args):
    """image file -> ground-truth mask path or None (from --masks or the VOC folder)."""
    from sec.localization import mask_finder
    return mask_finder(masks=args.masks, voc=args.voc)


def image_labels(args, entries):
    """{id: classes} for every list entry, from --labels or the VOC ground truth."""
    from sec import localization as loc
    if args.labels is not None:
        labels = loc.load_image_labels(args.labels, args.num_classes)
        missing = [image for _, image, _ in entries if image not in labels]
        if missing:
            raise KeyError(f"--labels {args.labels}: no labels for {len(missing)} image id(s) of {args.list}, "
                           f"e.g. {missing[:5]}")
        return labels
    from sec.data import VOCLayout
    layout = VOCLayout(args.voc)
    return loc.labels_from_masks([(image_file, image) for image_file, image, _ in entries],
                                 lambda image_file: layout.gt_path(Path(image_file).stem), args.num_classes)


def fingerprint(args):
    """The settings every image's cues depend on: the nets (prototxts and weights: resolved path,
    size, mtime) and the seed rules (threshold, percentile, fg/bg rule, grid, classes)."""
    return {"format": PARTIAL_FORMAT, "fg": _stamp(args.fg_weights), "bg": _stamp(args.bg_weights),
            "fg_net": _stamp(args.fg_net), "bg_net": _stamp(args.bg_net), "threshold": args.threshold,
            "percentile": args.percentile, "rule": args.fg_bg_rule, "cue_size": args.cue_size,
            "num_classes": args.num_classes}


def image_stamps(args, entries, labels):
    """{id: digest of what its own cues depend on}: its image file (resolved path under --root,
    size, mtime) and its image-level labels (from --labels or --voc)."""
    stamps = {}
    for image_file, image, _ in entries:
        record = [image, *_stamp(Path(args.root) / image_file), [int(c) for c in labels[image]]]
        stamps[image] = hashlib.sha256(json.dumps(record).encode()).hexdigest()
    return stamps


def _stamp(path):
    stat = Path(path).stat()
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def partial_record(key, stamps, done):
    """What <out>.partial holds: the settings, and per image done its cues and input digest."""
    return {"fingerprint": key, "cues": done, "inputs": {image: stamps[image] for image in done}}


def load_partial(path, key, stamps, restart):
    """{id: (labels, cues)} saved by an interrupted run with the same settings, for the images
    whose file and labels are unchanged, else {}. ValueError naming the file (and --restart)
    when it cannot be read."""
    if restart or not path.is_file():
        return {}
    try:
        with open(path, "rb") as handle:
            saved = pickle.load(handle)
        if not all(isinstance(saved.get(k), dict) for k in ("fingerprint", "cues")):
            raise ValueError("need a dict of 'fingerprint', 'cues' and 'inputs'")
    except Exception as err:  # a damaged pickle raises nearly any exception type
        raise ValueError(f"{path}: unreadable partial results of an earlier run ({type(err).__name__}: {err}); "
                         "pass --restart to ignore and replace them") from None
    if saved["fingerprint"] != key:
        changed = sorted(k for k in key if saved["fingerprint"].get(k) != key[k])
        print(f"make_cues: {path} was made with other nets or settings ({', '.join(changed)}); starting over",
              file=sys.stderr)
        return {}
    inputs = saved.get("inputs") if isinstance(saved.get("inputs"), dict) else {}
    done = {image: cues for image, cues in saved["cues"].items()
            if image in stamps and inputs.get(image) == stamps[image]}
    redo = len(saved["cues"]) - len(done)
    print(f"make_cues: resuming, {len(done)} images done in {path}"
          + (f" ({redo} others redone: their image file, labels or list entry changed)" if redo else ""))
    return done


def save_pickle(path, value):
    """Write `value` atomically (protocol 2); OutputError naming the file when it cannot be."""
    from sec.caffe import formats
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        formats.atomic_write_bytes(str(path), pickle.dumps(value, protocol=PICKLE_PROTOCOL))
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from None


def build_nets(args, device):
    import torch
    from sec import caffe
    from sec import localization as loc
    nets = []
    for prototxt, weights in ((args.fg_net, args.fg_weights), (args.bg_net, args.bg_weights)):
        net = caffe.Net(str(prototxt), caffe.TEST, weights=str(weights))
        net.weight_report.require_complete()     # a layer left at its filler would make garbage cues
        net.to(torch.device(device))
        net.eval()
        nets.append(net)
    return loc.CueNets(nets[0], nets[1], args.cue_size)


def generate(args, entries, labels, nets, done, key, stamps):
    """Run the nets over the entries not in `done`, adding {id: (labels, cues)} to it (so that a
    caller interrupted here keeps what was done); every --save-every images `done` is saved to
    <out>.partial (see partial_record). Returns done."""
    from sec import data
    from sec import localization as loc
    todo = [(image_file, image) for image_file, image, _ in entries if image not in done]
    sizes = {which: nets.input_size(which) for which in ("fg", "bg")}
    partial = partial_path(args)

    def load(item):
        """{"fg": input of the fg net, "bg": input of the bg net} (one array when the sizes agree)."""
        path = Path(args.root) / item[0]
        try:
            image = data.load_image(path)
        except data.ImageLoadError as err:
            raise data.ImageListError(f"{args.list}: {err}") from err
        inputs = {}
        for which, size in sizes.items():
            same = [v for k, v in inputs.items() if sizes[k] == size]
            inputs[which] = same[0] if same else data.preprocess(image, *size, method="caffe")
        return inputs

    batches = [todo[i:i + args.batch] for i in range(0, len(todo), args.batch)]
    since_save = flat = 0
    bar = tqdm(total=len(entries), initial=len(entries) - len(todo), desc="cues", unit="img")
    try:
        with ThreadPoolExecutor(max(1, args.workers)) as pool:
            pending = [pool.map(load, batch) for batch in batches[:2]]
            for index, batch in enumerate(batches):
                inputs = list(pending.pop(0))
                if index + 2 < len(batches):
                    pending.append(pool.map(load, batches[index + 2]))
                heat = nets.heatmaps(np.stack([x["fg"] for x in inputs]))
                saliency = nets.saliency(np.stack([x["bg"] for x in inputs]))
                flat += sum(int(s.max() == s.min()) for s in saliency)
                for (_, image), h, s in zip(batch, heat, saliency):
                    classes = labels[image]
                    done[image] = (classes, loc.image_cues(h, s, classes, args.threshold, args.percentile,
                                                           args.fg_bg_rule))
                since_save += len(batch)
                bar.update(len(batch))
                if since_save >= args.save_every and index + 1 < len(batches):
                    save_pickle(partial, partial_record(key, stamps, done))
                    since_save = 0
    finally:
        bar.close()               # a message that follows starts on a line of its own
    if flat:
        print(f"make_cues: WARNING: {flat} of {len(todo)} images got a constant saliency map (their "
              f"background seeds then say nothing): is {args.bg_weights} trained, "
              "or are its ReLUs dead?", file=sys.stderr)
    return done


def write_report(args, entries, cues, class_names):
    from sec import data
    from sec import localization_report as report
    find = truth_finder(args)
    paths = {image: find(image_file) for image_file, image, _ in entries}

    def truth_of(image):
        return np.asarray(Image.open(paths[image])) if paths[image] is not None else None

    ids = [image for _, image, _ in entries]
    stats = report.cue_statistics(cues, ids, args.num_classes, args.cue_size, truth_of)
    text = report.format_report(stats, class_names, title=str(args.out))
    examples = []
    for image_file, image, _ in entries[:report.NUM_EXAMPLES]:
        seeds = report.seed_mask(cues[f"{image}_cues"], args.cue_size)
        examples.append((f"id {image}", data.load_image(Path(args.root) / image_file), seeds, truth_of(image)))
    folder = Path(args.report)
    write_file(folder / "report.txt", lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
    summary = json.dumps(stats.summary(class_names), indent=1) + "\n"
    write_file(folder / "report.json", lambda tmp: Path(tmp).write_text(summary, encoding="utf-8"))
    write_file(folder / "report.png", lambda tmp: report.save_report_figure(tmp, stats, class_names, examples))
    print(text)
    print(f"wrote {folder / 'report.txt'}, report.json and report.png")
    return stats


def class_names_of(preset, num_classes):
    if preset == "synthetic":
        from sec.synthetic import CLASSES
        return list(CLASSES)
    from sec.data import VOC_CLASSES
    return list(VOC_CLASSES)[:num_classes]


def write_file(path, save):
    """save(temporary path) then rename it to `path` (a full disk leaves no half-written file);
    OutputError naming the file when it cannot be written."""
    from sec.deploy_files import atomic_save
    try:
        atomic_save(path, save)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from None


def partial_path(args):
    return Path(str(args.out) + PARTIAL_SUFFIX)


def main(args):
    """Exit status: 0 done, 2 a missing or unusable input, flag or output (also a full disk), 130 Ctrl-C."""
    from sec import data
    from sec.run_folder import check_image_list
    from sec.train import pick_device
    try:                      # every input checked (and both nets loaded) before the first image
        args = resolve(args)
        check_outputs(args)
        device = pick_device(args.device)
        entries = check_image_list(args.list, args.root)
        labels = image_labels(args, entries)
        key, stamps = fingerprint(args), image_stamps(args, entries, labels)
        done = load_partial(partial_path(args), key, stamps, args.restart)
        started = time.perf_counter()
        nets = build_nets(args, device)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"make_cues: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    written = False
    try:
        generate(args, entries, labels, nets, done, key, stamps)
        cues = {}
        for _, image, _ in entries:
            classes, points = done[image]
            cues[f"{image}_labels"] = np.asarray(classes, np.int64)
            cues[f"{image}_cues"] = np.asarray(points, np.int64).reshape(3, -1)
        save_pickle(args.out, cues)
        written = True
        partial_path(args).unlink(missing_ok=True)
        print(f"wrote {args.out}: cues of {len(entries)} images in {time.perf_counter() - started:.1f} s")
        if not args.no_report:
            write_report(args, entries, cues, class_names_of(args.preset, args.num_classes))
    except (OutputError, data.ImageListError, KeyboardInterrupt) as err:
        interrupted = isinstance(err, KeyboardInterrupt)
        what = "interrupted" if interrupted else str(err)
        print(f"make_cues: {what}{kept(args, entries, partial_record(key, stamps, done), written)}", file=sys.stderr)
        return EXIT_INTERRUPTED if interrupted else EXIT_BAD_INPUT
    return 0


def kept(args, entries, record, written):
    """After a failure or Ctrl-C mid-run: save what was done to <out>.partial (unless the cues
    were written) and say what a rerun will find."""
    if written:
        return f"; the cues of all {len(entries)} images are in {args.out}"
    done = record["cues"]
    if not done:
        return "; no image was done"
    try:
        save_pickle(partial_path(args), record)
    except OutputError as err:
        return f"; the {len(done)} images done could not be saved either ({err})"
    return f"; the {len(done)} of {len(entries)} images done are saved in {partial_path(args)} (a rerun resumes)"


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))  # the checkout's `sec`, as train.sh's PYTHONPATH gives it
    sys.exit(main(build_parser().parse_args()))
