"""Segment every image in a folder with a trained SEC net: one palette PNG mask per image.

    python deploy/deploy.py --images DIR --out DIR [--weights W.caffemodel]
        [--prototxt models/sec/deploy.prototxt] [--crf] [--overlay] [--probs]
        [--scales 0.75,1,1.25] [--flip] [--device cpu|cuda] [--batch N] [--jobs N] [--overwrite]

With no --weights, the net of the last `training/train.sh` run is used (runs/latest.json).
Before the model is loaded, the flags, the output folder (it must take files), the images'
headers and OUT/deploy_manifest.json (what made the masks already there) are checked.
Exit status: 0 when every image was segmented (or already was), 1 when some image could not be
used (each is reported with its reason; the others are still written), 2 on a usage or setup
error (bad flag value, unusable --out, outputs made with other options, no model, weights that
do not fit the net, an --output-blob that holds no class scores, outputs that cannot be written),
130 on Ctrl-C (every finished output is kept; a rerun resumes).
"""
import argparse
import sys
from pathlib import Path

from sec import deploy as pipeline
from sec import tta

REPO_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_LATEST = REPO_ROOT / "runs" / "latest.json"
DEFAULT_PROTOTXT = REPO_ROOT / "models" / "sec" / "deploy.prototxt"
EXIT_SOME_FAILED = 1
EXIT_SETUP_ERROR = 2
EXIT_INTERRUPTED = 130


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--images", required=True, type=Path,
                        help="folder of images (jpg, png, ...; RGB, greyscale, 16-bit or float "
                             "greyscale; with --crf at most 2**26 pixels each)")
    parser.add_argument("--out", required=True, type=Path,
                        help="folder for the masks <name>.png (created if needed)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="trained .caffemodel (default: the one named in runs/latest.json)")
    parser.add_argument("--prototxt", type=Path, default=None,
                        help="deploy net (default: the run's deploy_prototxt with no --weights, "
                             f"else {DEFAULT_PROTOTXT.relative_to(REPO_ROOT)})")
    parser.add_argument("--latest", type=Path, default=DEFAULT_LATEST,
                        help="run record written by training (default: %(default)s)")
    parser.add_argument("--crf", action="store_true",
                        help="dense CRF post-processing at full resolution (10 iterations)")
    parser.add_argument("--overlay", action="store_true",
                        help="also write image+mask blends to OUT/overlay/<name>.jpg")
    parser.add_argument("--probs", action="store_true",
                        help="also save the net's class probabilities to OUT/probs/<name>.npz (with "
                             "--scales/--flip: the averaged ones, at the image's size)")
    parser.add_argument("--scales", type=scales_flag, default=pipeline.NO_SCALES,
                        help="test-time augmentation: comma-separated input scales relative to the net's "
                             "input size, e.g. 0.75,1,1.25; the class probabilities of all scales are "
                             "averaged at the image's size, before the CRF (default: 1, the paper's "
                             "single scale)")
    parser.add_argument("--flip", action="store_true",
                        help="test-time augmentation: also run each scale mirrored left-right and "
                             "average its probabilities (flipped back) in")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the network runs (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=4,
                        help="images per network forward, >= 1 (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="threads decoding images ahead of the network, >= 1 "
                             "(default: %(default)s)")
    parser.add_argument("--crf-threads", type=int, default=0,
                        help="threads for the CRFs of a batch, 0 = all cores "
                             "(default: %(default)s)")
    parser.add_argument("--output-blob", default=None,
                        help="score blob to read when the net has several outputs (default: the net's "
                             "only output); it must hold class scores or probabilities, N x classes x h x w "
                             "with the class count of the net's outputs")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing outputs, also those made with other weights, "
                             "prototxt, --crf or --scales/--flip (default: keep them, so a run resumes)")
    parser.add_argument("--allow-missing-weights", action="store_true",
                        help="run even when the weights leave some parameter layer of the net "
                             "at its filler values (default: refuse, naming the layers); weights that "
                             "fill no layer at all are refused even so")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    for flag, value, low in (("--batch", args.batch, 1), ("--jobs", args.jobs, 1),
                             ("--crf-threads", args.crf_threads, 0)):
        if value < low:
            parser.error(f"{flag} must be >= {low}, got {value}")  # exit status 2
    return args


def scales_flag(text):
    try:
        return tta.parse_scales(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def load_segmenter(spec, args):
    """The net of `spec` (from the flags or runs/latest.json), wrapped for deploying."""
    print(f"model: {spec.weights} with {spec.prototxt} (from {spec.source})", file=sys.stderr)
    net = pipeline.load_net(spec, args.device, allow_missing_weights=args.allow_missing_weights)
    segmenter = pipeline.Segmenter(net, args.device, args.output_blob, args.crf, args.crf_threads,
                                   scales=args.scales, flip=args.flip)
    if spec.num_classes is not None and spec.num_classes != segmenter.num_classes:
        raise pipeline.DeployError(f"{args.latest} says {spec.num_classes} classes, but "
                                   f"{spec.prototxt} outputs {segmenter.num_classes}")
    return segmenter


def list_inputs(args):
    if args.out.exists() and not args.out.is_dir():
        raise pipeline.DeployError(f"--out: {args.out} exists and is not a folder")
    if args.images.resolve() == args.out.resolve():
        raise pipeline.DeployError("--out must differ from --images: masks are .png files and "
                                   "would replace PNG inputs of the same name")
    images = pipeline.list_images(args.images)
    if not images:
        raise pipeline.DeployError(f"no image files ({', '.join(pipeline.IMAGE_EXTENSIONS)}) in "
                                   f"{args.images}")
    return images


def main(args):
    """Run the deploy; returns the exit status."""
    try:
        spec = pipeline.resolve_model(args.weights, args.prototxt, args.latest, DEFAULT_PROTOTXT)
        options = pipeline.mask_options(spec, args.output_blob, args.crf, args.scales, args.flip)
        plan = pipeline.prepare(list_inputs(args), args.out, overlay=args.overlay,
                                probs=args.probs, overwrite=args.overwrite, crf=args.crf,
                                options=options)
        segmenter = load_segmenter(spec, args) if plan.todo else None
        if segmenter is not None:
            options["num_classes"] = segmenter.num_classes  # recorded with the first mask (plan.manifest)
        report = (pipeline.run(plan, segmenter, batch=args.batch, jobs=args.jobs,
                               progress=not args.quiet) if segmenter else plan.report)
    except pipeline.DeployError as err:
        print(f"deploy.py: error: {err}", file=sys.stderr)
        return EXIT_SETUP_ERROR
    except KeyboardInterrupt:
        print(f"deploy.py: interrupted; every finished output in {args.out} is kept (rerun the same "
              "command to resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"{len(report.written)} written, {len(report.skipped)} kept (already there), "
          f"{len(report.failed)} failed -> {args.out}", file=sys.stderr)
    for _, reason in report.failed:
        print(f"  failed: {reason}", file=sys.stderr)
    return EXIT_SOME_FAILED if report.failed else 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
