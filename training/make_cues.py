"""Generate SEC's localization cues with the two trained localization nets.

    python training/make_cues.py                      # synthetic set, nets of train_localization.py
    python training/make_cues.py --preset voc --list input_list.txt --root VOC2012/JPEGImages \
        --voc VOC2012 --fg-weights fg.caffemodel --bg-weights bg.caffemodel --out cues.pickle

Writes the original pickle: '<id>_labels' (int64 foreground classes 1..C-1) and '<id>_cues'
(int64 (3, K): class, row, column on the cue grid), protocol 2. Image-level labels come from
--labels (a JSON {"<id>": [classes]} file, or a cue pickle's '<id>_labels') or, with --voc, from
the segmentation ground truth (SegmentationClass, else SegmentationClassAug). Images go through the
nets in batches, decoded ahead by worker threads; every --save-every images the results so far are
saved to <out>.partial (keyed by id) and a rerun skips them. With --report, a text report and a PNG
(seeds per image, class balance, precision/recall against ground truth when there is some).
"""
import argparse
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


def build_parser():
    from sec import localization as loc
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
    parser.add_argument("--threshold", type=float, default=loc.FG_THRESHOLD,
                        help="foreground seeds: heat > threshold x the class's maximum heat")
    parser.add_argument("--percentile", type=float, default=loc.BG_PERCENTILE,
                        help="background seeds: this percentage of least salient cells")
    parser.add_argument("--fg-bg-rule", choices=loc.FG_BG_RULES, default=loc.DEFAULT_FG_BG_RULE,
                        help="a cell that is both a foreground and a background seed: drop it or give it to one side")
    parser.add_argument("--batch", type=int, default=16, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="threads decoding images ahead of the nets")
    parser.add_argument("--save-every", type=int, default=500, help="save partial results every N images")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    parser.add_argument("--report", type=Path, help="folder for report.txt, report.json and report.png "
                        "(default: beside --out)")
    parser.add_argument("--no-report", action="store_true", help="skip the report")
    parser.add_argument("--restart", action="store_true", help="ignore partial results of an earlier run")
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
    if args.batch < 1 or args.save_every < 1:
        raise ValueError(f"need --batch and --save-every >= 1, got {args.batch} and {args.save_every}")
    if args.workers < 0:
        raise ValueError(f"--workers: need 0 or more, got {args.workers}")
    return args


def truth_finder(args):
    """image file -> ground-truth mask path or None (from --masks or the VOC folder)."""
    if args.masks is not None:
        return lambda image_file: _existing(Path(args.masks) / (Path(image_file).stem + ".png"))
    if args.voc is not None:
        from sec.data import VOCLayout
        layout = VOCLayout(args.voc)

        def voc_truth(image_file):
            try:
                return layout.gt_path(Path(image_file).stem)
            except FileNotFoundError:
                return None
        return voc_truth
    return lambda image_file: None


def _existing(path):
    return path if path.is_file() else None


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
    """What the cues depend on; partial results of other settings are not reused."""
    def stamp(path):
        stat = Path(path).stat()
        return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]
    return {"fg": stamp(args.fg_weights), "bg": stamp(args.bg_weights), "fg_net": stamp(args.fg_net),
            "bg_net": stamp(args.bg_net), "threshold": args.threshold, "percentile": args.percentile,
            "rule": args.fg_bg_rule, "cue_size": args.cue_size, "list": stamp(args.list)}


def load_partial(path, key, restart):
    """{id: (labels, cues)} saved by an interrupted run with the same fingerprint, else {}."""
    if restart or not path.is_file():
        return {}
    with open(path, "rb") as handle:
        saved = pickle.load(handle)
    if saved.get("fingerprint") != key:
        print(f"make_cues: {path} was made with other weights/settings; starting over", file=sys.stderr)
        return {}
    print(f"make_cues: resuming, {len(saved['cues'])} images done in {path}")
    return saved["cues"]


def save_pickle(path, value):
    from sec.caffe import formats
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    formats.atomic_write_bytes(str(path), pickle.dumps(value, protocol=PICKLE_PROTOCOL))


def build_nets(args, device):
    import torch
    from sec import caffe
    from sec import localization as loc
    nets = []
    for prototxt, weights in ((args.fg_net, args.fg_weights), (args.bg_net, args.bg_weights)):
        net = caffe.Net(str(prototxt), str(weights), caffe.TEST)
        net.weight_report.require_complete()     # a layer left at its filler would make garbage cues
        net.to(torch.device(device))
        net.eval()
        nets.append(net)
    return loc.CueNets(nets[0], nets[1], args.cue_size)


def generate(args, entries, labels, nets, done):
    """Run the nets over the entries not in `done`; returns done updated {id: (labels, cues)}."""
    from sec import data
    from sec import localization as loc
    todo = [(image_file, image) for image_file, image, _ in entries if image not in done]
    sizes = {which: nets.input_size(which) for which in ("fg", "bg")}
    key = fingerprint(args)
    partial = Path(str(args.out) + PARTIAL_SUFFIX)

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
                save_pickle(partial, {"fingerprint": key, "cues": done})
                since_save = 0
    bar.close()
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
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.txt").write_text(text + "\n", encoding="utf-8")
    (folder / "report.json").write_text(json.dumps(stats.summary(class_names), indent=1) + "\n", encoding="utf-8")
    report.save_report_figure(folder / "report.png", stats, class_names, examples)
    print(text)
    print(f"wrote {folder / 'report.txt'}, report.json and report.png")
    return stats


def class_names_of(preset, num_classes):
    if preset == "synthetic":
        from sec.synthetic import CLASSES
        return list(CLASSES)
    from sec.data import VOC_CLASSES
    return list(VOC_CLASSES)[:num_classes]


def main(args):
    from sec.run_folder import check_image_list
    from sec.train import pick_device
    try:                      # every input checked (and both nets loaded) before the first image
        args = resolve(args)
        device = pick_device(args.device)
        entries = check_image_list(args.list, args.root)
        labels = image_labels(args, entries)
        started = time.perf_counter()
        nets = build_nets(args, device)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"make_cues: {err}", file=sys.stderr)
        return 2
    partial = Path(str(args.out) + PARTIAL_SUFFIX)
    done = load_partial(partial, fingerprint(args), args.restart)
    done = generate(args, entries, labels, nets, done)
    cues = {}
    for _, image, _ in entries:
        classes, points = done[image]
        cues[f"{image}_labels"] = np.asarray(classes, np.int64)
        cues[f"{image}_cues"] = np.asarray(points, np.int64).reshape(3, -1)
    save_pickle(args.out, cues)
    partial.unlink(missing_ok=True)
    print(f"wrote {args.out}: cues of {len(entries)} images in {time.perf_counter() - started:.1f} s")
    if not args.no_report:
        write_report(args, entries, cues, class_names_of(args.preset, args.num_classes))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))  # the checkout's `sec`, as train.sh's PYTHONPATH gives it
    sys.exit(main(build_parser().parse_args()))
