"""Evaluate predicted masks against ground truth: per-class IoU, mIoU, pixel accuracy.

    python deploy/evaluate.py --pred runs/x/masks --gt VOC2012/SegmentationClass \
        --list VOC2012/ImageSets/Segmentation/val.txt --classes voc --json results.json
    python deploy/evaluate.py --pred runs/x/masks --gt generated/synthetic/masks \
        --list generated/synthetic/val.txt --classes synthetic

Masks are PNGs read with Pillow: palette images (mode P) give their indices, greyscale
(mode L) their values; 255 in the ground truth is ignored. Prediction and ground truth are
matched by file stem (<id>.png). --gt may also be a VOC folder (the one holding
SegmentationClass/); its val list is then the default.

A missing prediction is counted as all wrong (every non-ignored ground-truth pixel misses its
class) and makes the exit status 1; --allow-missing leaves such images out instead. A --pred
folder that does not exist, or a --json that cannot be written, is bad input (checked before
any mask is read).
Exit status: 0 ok, 1 missing predictions, 2 bad input.
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
from sec.metrics import ConfusionMatrix
from sec.synthetic import CLASSES as SYNTHETIC_CLASSES

EXIT_MISSING = 1
EXIT_BAD_INPUT = 2
MASK_MODES = ("P", "L")


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


def read_mask(path):
    """A PNG mask as HxW uint8 indices (mode P: palette indices; mode L: values)."""
    try:
        with Image.open(path) as image:
            if image.mode not in MASK_MODES:
                raise EvaluationError(f"{path}: need a palette (P) or greyscale (L) PNG, "
                                      f"got mode {image.mode}")
            return np.asarray(image, dtype=np.uint8).copy()
    except (OSError, ValueError, SyntaxError) as err:
        if isinstance(err, EvaluationError):
            raise
        raise EvaluationError(f"cannot read mask {path}: {err}") from err


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


def evaluate(pred_dir, gt_dir, ids, num_classes, allow_missing=False):
    """Accumulate the confusion matrix; returns (ConfusionMatrix, list of missing ids)."""
    pred_dir = check_pred_dir(pred_dir)
    matrix = ConfusionMatrix(num_classes)
    missing = []
    for image_id in ids:
        gt_path = Path(gt_dir) / f"{image_id}.png"
        if not gt_path.is_file():
            raise EvaluationError(f"ground truth not found: {gt_path}")
        gt = read_mask(gt_path)
        pred_path = Path(pred_dir) / f"{image_id}.png"
        if not pred_path.is_file():
            missing.append(image_id)
            if not allow_missing:
                matrix.update_missing(gt, name=str(gt_path))
            continue
        pred = read_mask(pred_path)
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
    parser = argparse.ArgumentParser(description="Per-class IoU and mIoU of predicted masks.")
    parser.add_argument("--pred", required=True, help="folder of predicted PNG masks (<id>.png)")
    parser.add_argument("--gt", required=True,
                        help="folder of ground-truth PNG masks, or a VOC folder with SegmentationClass/")
    parser.add_argument("--list", default=None,
                        help="ids to evaluate: one per line, or '<image> <id>' lines (default: every "
                             "ground-truth PNG; for a VOC folder ImageSets/Segmentation/val.txt)")
    parser.add_argument("--classes", default="voc", help="class names: voc, synthetic or a number N")
    parser.add_argument("--json", default=None, help="write the results as JSON to this file")
    parser.add_argument("--allow-missing", action="store_true",
                        help="leave out images without a prediction instead of counting them all wrong")
    return parser


def main(args):
    try:
        names = class_names(args.classes)
        check_pred_dir(args.pred)
        if args.json:
            check_json_path(args.json)
        gt_dir, ids = resolve_inputs(args.gt, args.list)
        matrix, missing = evaluate(args.pred, gt_dir, ids, len(names), args.allow_missing)
        summary = matrix.summary(names)
        summary["missing"] = missing
        summary["missing_counted_as_wrong"] = not args.allow_missing
        print(format_table(summary))
        if args.json:
            write_json(args.json, summary)
    except EvaluationError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
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
