"""Evaluate predicted masks against ground truth: per-class IoU, mIoU, pixel accuracy.

    python deploy/evaluate.py --pred runs/x/masks --gt VOC2012/SegmentationClass \
        --list VOC2012/ImageSets/Segmentation/val.txt --classes voc --json results.json
    python deploy/evaluate.py --pred runs/x/masks --gt generated/synthetic/masks \
        --list generated/synthetic/val.txt --classes synthetic

Masks are PNGs read with Pillow. Greyscale (mode L) gives its values. A palette PNG (mode P)
whose colours are the dataset's (the PASCAL VOC colour map, also the synthetic set's) gives its
indices; one whose palette differs (an image editor re-saved it: same colours, other indices) is
read by colour, mapping each colour to its VOC class, and an RGB PNG likewise; a palette with
colours outside the VOC map keeps its indices, with a warning. 255 in the ground truth is
ignored. Prediction and ground truth are matched by file stem (<id>.png). --gt may also be a VOC
folder (the one holding SegmentationClass/); its val list is then the default.

Predictions written by deploy/deploy.py carry the model's class set in --pred's
deploy_manifest.json; one that is not the --classes set (a 7-class synthetic model scored as VOC)
is refused. A missing prediction is counted as all wrong (every non-ignored ground-truth pixel
misses its class) and makes the exit status 1; --allow-missing leaves such images out instead. A
--pred folder that does not exist, or a --json that cannot be written, is bad input (checked
before any mask is read).
Exit status: 0 ok, 1 missing predictions, 2 bad input, 130 Ctrl-C.
"""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from sec.data import VOC_CLASSES
from sec.deploy_files import MANIFEST_NAME, DeployError, read_manifest
from sec.metrics import ConfusionMatrix
from sec.synthetic import CLASSES as SYNTHETIC_CLASSES
from sec.visualize import palette_array

EXIT_MISSING = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
MASK_MODES = ("P", "L", "RGB")
PALETTE = palette_array()                     # the VOC colour map: class index -> RGB, all distinct
CLASS_OF_COLOUR = {tuple(int(v) for v in colour): index for index, colour in enumerate(PALETTE)}


class EvaluationError(ValueError):
    """Bad input to the evaluation (the message names the file)."""


def class_names(spec):
    """'voc' | 'synthetic' | N -> list of class names."""
    if spec == "voc":
        return list(VOC_CLASSES)
    if spec == "synthetic":
        return list(SYNTHETIC_CLASSES)
    try:
        count = int(spec)
    except ValueError:
        raise EvaluationError(f"--classes must be voc, synthetic or a number, got {spec!r}") from None
    if count < 1:
        raise EvaluationError(f"--classes needs a positive number, got {count}")
    return [f"class_{i}" for i in range(count)]


class MaskReadings:
    """How the masks were read: by palette index, by colour (another palette, RGB), or by index
    despite colours outside the VOC colour map (a warning), with an example file of each."""

    def __init__(self):
        self.by_colour = []
        self.foreign = []

    def notes(self):
        lines = []
        if self.by_colour:
            lines.append(f"note: {len(self.by_colour)} mask(s) have another palette than the VOC colour map or "
                         f"are RGB (e.g. {self.by_colour[0]}): their classes were read by colour")
        if self.foreign:
            lines.append(f"warning: {len(self.foreign)} palette mask(s) use colours outside the VOC colour map "
                         f"(e.g. {self.foreign[0]}): their palette indices were taken as the classes")
        return lines


def read_mask(path, readings=None):
    """A PNG mask as HxW uint8 class indices: mode L its values; mode P its indices when their
    colours are the VOC colour map's, else (another palette) the VOC class of each colour; mode
    RGB the VOC class of each colour. `readings` (MaskReadings) records the files read by colour
    and those whose palette holds colours outside the VOC map (read by index)."""
    try:
        with Image.open(path) as image:
            if image.mode not in MASK_MODES:
                raise EvaluationError(f"{path}: need a palette (P), greyscale (L) or RGB PNG, "
                                      f"got mode {image.mode}")
            values = np.asarray(image, dtype=np.uint8).copy()
            palette = image.getpalette() if image.mode == "P" else None
    except (OSError, ValueError, SyntaxError) as err:
        if isinstance(err, EvaluationError):
            raise
        raise EvaluationError(f"cannot read mask {path}: {err}") from err
    if values.ndim == 3:
        if readings is not None:
            readings.by_colour.append(str(path))
        return _classes_of_colours(values.reshape(-1, 3), path).reshape(values.shape[:2])
    if palette is None:
        return values
    colours = np.zeros((256, 3), np.uint8)
    given = np.asarray(palette, np.uint8).reshape(-1, 3)[:256]
    colours[:len(given)] = given
    used = np.flatnonzero(np.bincount(values.ravel(), minlength=256))
    if np.array_equal(colours[used], PALETTE[used]):
        return values
    if any(tuple(int(v) for v in colours[u]) not in CLASS_OF_COLOUR for u in used):
        if readings is not None:
            readings.foreign.append(str(path))
        return values
    if readings is not None:
        readings.by_colour.append(str(path))
    lookup = np.zeros(256, np.uint8)
    lookup[used] = _classes_of_colours(colours[used], path)
    return lookup[values]


def _classes_of_colours(colours, path):
    """K x 3 uint8 RGB -> their VOC class indices; EvaluationError naming a colour outside the map."""
    codes = (colours[:, 0].astype(np.int64) << 16) | (colours[:, 1].astype(np.int64) << 8) | colours[:, 2]
    unique, inverse = np.unique(codes, return_inverse=True)
    classes = np.zeros(len(unique), np.uint8)
    for k, code in enumerate(unique):
        colour = (int(code) >> 16, (int(code) >> 8) & 255, int(code) & 255)
        if colour not in CLASS_OF_COLOUR:
            raise EvaluationError(f"{path}: colour {colour} is not in the VOC colour map, so it names no class")
        classes[k] = CLASS_OF_COLOUR[colour]
    return classes[inverse.reshape(-1)]


def read_ids(list_path):
    """Ids from a list: one id per line (VOC ImageSets), or `<image> <id>` (the stem is used)."""
    list_path = Path(list_path)
    if not list_path.is_file():
        raise EvaluationError(f"list file not found: {list_path}")
    ids = []
    for line_no, line in enumerate(list_path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) > 2:
            raise EvaluationError(f"{list_path}:{line_no}: need '<id>' or '<image> <id>', "
                                  f"got {line!r}")
        ids.append(Path(fields[0]).stem)
    if not ids:
        raise EvaluationError(f"list file is empty: {list_path}")
    return ids


def resolve_inputs(gt, list_path):
    """(ground-truth folder, ids): a VOC folder becomes SegmentationClass + its val list."""
    gt = Path(gt)
    if not gt.is_dir():
        raise EvaluationError(f"ground-truth folder not found: {gt}")
    if (gt / "SegmentationClass").is_dir() and not any(gt.glob("*.png")):
        if list_path is None:
            list_path = gt / "ImageSets" / "Segmentation" / "val.txt"
        gt = gt / "SegmentationClass"
    if list_path is not None:
        return gt, read_ids(list_path)
    ids = sorted(path.stem for path in gt.glob("*.png"))
    if not ids:
        raise EvaluationError(f"no ground-truth PNGs in {gt}")
    return gt, ids


def check_pred_dir(pred_dir):
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        what = "is not a folder" if pred_dir.exists() else "not found"
        raise EvaluationError(f"prediction folder {what}: {pred_dir}")
    return pred_dir


def check_json_path(path):
    """Create the folder of --json and make sure the file can be written there."""
    path = Path(path)
    if path.is_dir():
        raise EvaluationError(f"--json {path} is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            with open(path, "a", encoding="utf-8"):  # neither truncates nor changes it
                pass
        else:                                         # leaves no empty file behind
            with tempfile.TemporaryFile(dir=path.parent):
                pass
    except OSError as err:
        raise EvaluationError(f"cannot write --json {path}: {err}") from err
    return path


def write_json(path, summary):
    """Write the results to a temporary sibling, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(summary, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        raise EvaluationError(f"cannot write --json {path}: {err}") from err
    finally:
        tmp.unlink(missing_ok=True)


def check_prediction_classes(pred_dir, spec, names):
    """The class set recorded in --pred's deploy_manifest.json (by deploy/deploy.py) must be the
    --classes set: its name when both are named, its class count always. Nothing to check when
    there is no manifest (masks from elsewhere) or it predates the record."""
    if not (Path(pred_dir) / MANIFEST_NAME).is_file():
        return
    try:
        options = read_manifest(pred_dir)["options"]
    except DeployError as err:
        raise EvaluationError(str(err)) from None
    made, count = options.get("classes"), options.get("num_classes")
    named = spec in ("voc", "synthetic")
    if (named and made is not None and made != spec) or (count is not None and count != len(names)):
        model = f"a {made} model" if made else "a model"
        counted = f" of {count} classes" if count is not None else ""
        raise EvaluationError(
            f"{Path(pred_dir) / MANIFEST_NAME}: the masks in {pred_dir} were made by {model}{counted} "
            f"({options.get('weights')}), not one of the {len(names)} --classes {spec} classes: deploy the "
            f"{spec} model (e.g. deploy.py --latest <that run's runs folder>/latest.json, or --weights), or "
            "pass the --classes it was trained on")


def evaluate(pred_dir, gt_dir, ids, num_classes, allow_missing=False, readings=None):
    """Accumulate the confusion matrix; returns (ConfusionMatrix, list of missing ids).
    readings: a MaskReadings that records which masks were read by colour (see read_mask)."""
    pred_dir = check_pred_dir(pred_dir)
    matrix = ConfusionMatrix(num_classes)
    missing = []
    for image_id in ids:
        gt_path = Path(gt_dir) / f"{image_id}.png"
        if not gt_path.is_file():
            raise EvaluationError(f"ground truth not found: {gt_path}")
        gt = read_mask(gt_path, readings)
        pred_path = Path(pred_dir) / f"{image_id}.png"
        if not pred_path.is_file():
            missing.append(image_id)
            if not allow_missing:
                matrix.update_missing(gt, name=str(gt_path))
            continue
        pred = read_mask(pred_path, readings)
        if pred.shape != gt.shape:
            raise EvaluationError(f"{pred_path}: size {pred.shape[1]}x{pred.shape[0]} differs from "
                                  f"ground truth {gt_path} ({gt.shape[1]}x{gt.shape[0]})")
        try:
            matrix.update(gt, pred, name=f"{pred_path} vs {gt_path}")
        except ValueError as err:
            raise EvaluationError(str(err)) from err
    return matrix, missing


def format_table(summary):
    lines = [f"{'class':<16} {'IoU':>7}"]
    for entry in summary["classes"]:
        iou = "-" if entry["iou"] is None else f"{100 * entry['iou']:6.2f}"
        note = "" if entry["in_ground_truth"] else "  (not in ground truth, not in mean)"
        lines.append(f"{entry['name']:<16} {iou:>7}{note}")
    lines.append(f"{'mIoU':<16} {100 * summary['miou']:7.2f}")
    lines.append(f"{'pixel accuracy':<16} {100 * summary['pixel_accuracy']:7.2f}")
    lines.append(f"{'mean accuracy':<16} {100 * summary['mean_accuracy']:7.2f}")
    lines.append(f"images: {summary['num_images']}, missing predictions: {len(summary['missing'])}")
    return "\n".join(lines)


def build_parser():
    parser = argparse.ArgumentParser(
        description="Per-class IoU and mIoU of predicted masks. Palette PNGs are read by index when "
                    "their palette is the VOC colour map, else by colour (each colour's VOC class); RGB "
                    "PNGs by colour; greyscale PNGs by value.")
    parser.add_argument("--pred", required=True, help="folder of predicted PNG masks (<id>.png)")
    parser.add_argument("--gt", required=True,
                        help="folder of ground-truth PNG masks, or a VOC folder with SegmentationClass/")
    parser.add_argument("--list", default=None,
                        help="ids to evaluate: one per line, or '<image> <id>' lines (default: every "
                             "ground-truth PNG; for a VOC folder ImageSets/Segmentation/val.txt)")
    parser.add_argument("--classes", default="voc", help="class names: voc, synthetic or a number N; "
                        "predictions made by deploy/deploy.py must come from a model of this class set "
                        "(read from --pred's deploy_manifest.json)")
    parser.add_argument("--json", default=None, help="write the results as JSON to this file")
    parser.add_argument("--allow-missing", action="store_true",
                        help="leave out images without a prediction instead of counting them all wrong")
    return parser


def main(args):
    readings = MaskReadings()
    try:
        names = class_names(args.classes)
        check_pred_dir(args.pred)
        check_prediction_classes(args.pred, args.classes, names)
        if args.json:
            check_json_path(args.json)
        gt_dir, ids = resolve_inputs(args.gt, args.list)
        matrix, missing = evaluate(args.pred, gt_dir, ids, len(names), args.allow_missing, readings)
        for line in readings.notes():
            print(line, file=sys.stderr)
        summary = matrix.summary(names)
        summary["missing"] = missing
        summary["missing_counted_as_wrong"] = not args.allow_missing
        print(format_table(summary))
        if args.json:
            write_json(args.json, summary)
    except EvaluationError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("evaluate.py: interrupted; nothing written", file=sys.stderr)
        return EXIT_INTERRUPTED
    if missing:
        none_found = " (none of the predictions was found)" if len(missing) == len(ids) else ""
        print(f"missing predictions ({len(missing)}): {', '.join(missing[:10])}"
              f"{' ...' if len(missing) > 10 else ''} (looked for <id>.png in {args.pred})"
              f"{none_found}", file=sys.stderr)
        if not args.allow_missing:
            return EXIT_MISSING
    return 0


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
