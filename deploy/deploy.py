"""Segment every image in a folder with a trained SEC net: one palette PNG mask per image.

    python deploy/deploy.py --images DIR --out DIR [--weights W.caffemodel]
        [--prototxt models/sec/deploy.prototxt] [--crf] [--overlay] [--probs]
        [--device cpu|cuda] [--batch N] [--jobs N] [--overwrite]

With no --weights, the net of the last `training/train.sh` run is used (runs/latest.json).
Exit status: 0 when every image was segmented (or already was), 1 when some image could not be
read (each is reported with its reason; the others are still written), 2 on a setup error.
"""
import argparse
import sys
from pathlib import Path

from sec import deploy as pipeline

REPO_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_LATEST = REPO_ROOT / "runs" / "latest.json"
DEFAULT_PROTOTXT = REPO_ROOT / "models" / "sec" / "deploy.prototxt"
EXIT_SOME_FAILED = 1
EXIT_SETUP_ERROR = 2


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--images", required=True, type=Path,
                        help="folder of images (jpg, png, ...; any size, RGB or greyscale)")
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
                        help="also save the net's class probabilities to OUT/probs/<name>.npz")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the network runs (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=4,
                        help="images per network forward (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="threads decoding images ahead of the network (default: %(default)s)")
    parser.add_argument("--crf-threads", type=int, default=0,
                        help="threads for the CRFs of a batch, 0 = all cores "
                             "(default: %(default)s)")
    parser.add_argument("--output-blob", default=None,
                        help="score blob to read (default: the net's only output)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing outputs (default: keep them, so a run resumes)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def load_segmenter(spec, args):
    """The net of `spec` (from the flags or runs/latest.json), wrapped for deploying."""
    print(f"model: {spec.weights} with {spec.prototxt} (from {spec.source})", file=sys.stderr)
    net = pipeline.load_net(spec, args.device)
    segmenter = pipeline.Segmenter(net, args.device, args.output_blob, args.crf, args.crf_threads)
    if spec.num_classes is not None and spec.num_classes != segmenter.num_classes:
        raise pipeline.DeployError(f"{args.latest} says {spec.num_classes} classes, but "
                                   f"{spec.prototxt} outputs {segmenter.num_classes}")
    return segmenter


def list_inputs(args):
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
        images = list_inputs(args)
        segmenter = load_segmenter(spec, args)
        report = pipeline.deploy(images, args.out, segmenter, overlay=args.overlay,
                                 probs=args.probs, batch=args.batch, jobs=args.jobs,
                                 overwrite=args.overwrite, progress=not args.quiet)
    except pipeline.DeployError as err:
        print(f"deploy.py: error: {err}", file=sys.stderr)
        return EXIT_SETUP_ERROR
    print(f"{len(report.written)} written, {len(report.skipped)} kept (already there), "
          f"{len(report.failed)} failed -> {args.out}", file=sys.stderr)
    for _, reason in report.failed:
        print(f"  failed: {reason}", file=sys.stderr)
    return EXIT_SOME_FAILED if report.failed else 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
