"""Train SEC: `bash training/train.sh [flags]` (this script is what train.sh runs).

No flags: the built-in synthetic dataset (generated into generated/synthetic if absent), a short
classification pre-training of the small synthetic net on the image-level labels
(models/synthetic/pretrain.prototxt, run runs/synthetic_pretrain/; the synthetic analogue of SEC's
ImageNet initialisation), SEC training from those weights (models/synthetic/), CPU or the GPU when
there is one, then evaluation on the synthetic val split (per-class IoU, mIoU, panels). With --voc/--cues/--weights: the paper's
recipe with models/sec/ (DeepLab-LargeFOV, 8000 iterations at batch 15).
Everything not given by a flag comes from the prototxts. Runs go to runs/<name>/ and, once
finished, runs/latest.json names the weights for deploy/deploy.py.
"""
import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS = REPO_ROOT / "models"
SYNTHETIC_DIR = REPO_ROOT / "generated" / "synthetic"
PRETRAIN_NET = MODELS / "synthetic" / "pretrain.prototxt"
PRETRAIN_SOLVER = MODELS / "synthetic" / "pretrain_solver.prototxt"
SYNTHETIC_TRAIN_IMAGES = 1000
SYNTHETIC_VAL_IMAGES = 200
SYNTHETIC_IMAGE_SIZE = 160
SYNTHETIC_CUE_SIZE = 21
VOC_NUM_CLASSES = 21
VOC_TRAIN_SPLIT = "trainaug"
EXIT_MISSING_INPUT = 2
EXIT_NONFINITE = 3


def build_parser():
    parser = argparse.ArgumentParser(
        description="Train SEC with Caffe's SGD on the PyTorch engine (synthetic set by default).",
        epilog="Examples: bash training/train.sh | bash training/train.sh --voc VOC2012 "
               "--cues localization_cues.pickle --weights vgg16_20M.caffemodel --gpus 2")
    parser.add_argument("--voc", type=Path, help="PASCAL VOC 2012 folder (holding JPEGImages/); "
                        "switches to the paper's recipe (needs --cues and --weights)")
    parser.add_argument("--cues", type=Path, help="localization cue pickle (original format, plain or .gz); "
                        "its ids must be the image list's ids")
    parser.add_argument("--weights", type=Path, help="initial weights .caffemodel, copied by layer name "
                        "(e.g. DeepLab's vgg16_20M.caffemodel)")
    parser.add_argument("--list", type=Path, help="training image list '<image> <id>' (default with --voc: "
                        f"written from ImageSets/Segmentation/{VOC_TRAIN_SPLIT}.txt with ids 0..N-1; "
                        "pass the original input_list.txt to match the original cue ids)")
    parser.add_argument("--gpus", type=int, default=1, help="data-parallel processes (torchrun, one per GPU; "
                        "with --device cpu they run on the gloo backend); the global batch is split across them")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    parser.add_argument("--engine", choices=("torch", "caffe"), default="torch",
                        help="torch: this project's engine; caffe: hand the same solver to an installed `caffe train`")
    parser.add_argument("--resume", action="store_true", help="continue the run from its last .solverstate")
    parser.add_argument("--name", help="run name: folder runs/<name>/ (default: synthetic or voc)")
    parser.add_argument("--runs", type=Path, default=REPO_ROOT / "runs", help="folder of runs and latest.json")
    parser.add_argument("--solver", type=Path, help="solver prototxt (default: models/<recipe>/solver.prototxt)")
    parser.add_argument("--net", type=Path, help="train net prototxt (default: models/<recipe>/train.prototxt)")
    parser.add_argument("--synthetic-dir", type=Path, default=SYNTHETIC_DIR,
                        help="synthetic dataset folder (generated when absent or incomplete)")
    parser.add_argument("--iters", type=int, help="override max_iter of the solver")
    parser.add_argument("--batch", type=int, help="override the global batch size of the ImageData layer")
    parser.add_argument("--seed", type=int, help="override random_seed of the solver")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    parser.add_argument("--no-pretrain", action="store_true", help="synthetic recipe: skip the classification "
                        "pre-training and train SEC from the fillers (pre-training is also skipped with "
                        "--weights, --resume and --engine caffe)")
    parser.add_argument("--pretrain-iters", type=int, help="override max_iter of the pre-training solver "
                        "(models/synthetic/pretrain_solver.prototxt)")
    parser.add_argument("--threads", type=int, help="torch intra-op CPU threads (default: torch's, one per "
                        "core)")
    return parser


def recipe(args):
    """RunConfig of the chosen recipe (synthetic or VOC), checking that the inputs exist."""
    from sec import synthetic
    from sec.data import VOCLayout
    from sec.train import RunConfig, pick_device

    voc = args.voc is not None
    kind = "voc" if voc else "synthetic"
    models = MODELS / ("sec" if voc else "synthetic")
    name = args.name or kind
    common = dict(name=name, solver=args.solver or models / "solver.prototxt",
                  net=args.net or models / "train.prototxt", deploy=models / "deploy.prototxt",
                  runs_root=args.runs, weights=args.weights, batch=args.batch, iters=args.iters,
                  seed=args.seed, device=pick_device(args.device), resume=args.resume, classes=kind)
    for path in (common["solver"], common["net"]):
        if not Path(path).is_file():
            raise FileNotFoundError(f"prototxt not found: {path}")
    if args.weights is not None and not args.weights.is_file():
        raise FileNotFoundError(f"--weights: {args.weights} not found")
    if not voc:
        return RunConfig(num_classes=len(synthetic.CLASSES), dataset=args.synthetic_dir,
                         source=args.list or args.synthetic_dir / "train.txt",
                         root_folder=str(args.synthetic_dir / "images") + "/",
                         cues=args.cues or args.synthetic_dir / "cues.pickle", **common)
    if not args.voc.is_dir():
        raise FileNotFoundError(f"--voc: folder {args.voc} not found")
    if args.cues is None or not args.cues.is_file():
        raise FileNotFoundError(f"--cues: cue pickle {args.cues} not found (SEC's localization_cues.pickle)")
    if args.weights is None:
        raise FileNotFoundError("--weights is required with --voc (e.g. vgg16_20M.caffemodel)")
    layout = VOCLayout(args.voc)
    source = args.list
    if source is None:
        source = args.runs / name / "input_list.txt"
        layout.write_image_list(VOC_TRAIN_SPLIT, source)
    elif not source.is_file():
        raise FileNotFoundError(f"--list: {source} not found")
    return RunConfig(num_classes=VOC_NUM_CLASSES, dataset=args.voc, source=source,
                     root_folder=str(layout.images) + "/", cues=args.cues, **common)


def prepare_synthetic(folder):
    from sec import synthetic
    manifest = synthetic.generate(folder, SYNTHETIC_TRAIN_IMAGES, SYNTHETIC_VAL_IMAGES, seed=0,
                                  image_size=SYNTHETIC_IMAGE_SIZE, cue_size=SYNTHETIC_CUE_SIZE,
                                  workers=min(2, os.cpu_count() or 1), progress=True)
    return manifest


def relaunch_with_torchrun(args, argv):
    """Re-run this script under torchrun with one process per GPU (or CPU process with gloo)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={args.gpus}", str(Path(__file__).resolve()), *argv]
    return subprocess.call(command)


def run_with_caffe(cfg):
    """--engine caffe: write the run's net and solver prototxts and call `caffe train` (not tested here)."""
    from sec.train import latest_snapshot, write_caffe_files

    caffe = shutil.which("caffe")
    if caffe is None:
        print("train.py: --engine caffe: no `caffe` executable on PATH", file=sys.stderr)
        return EXIT_MISSING_INPUT
    solver_path = write_caffe_files(cfg)
    command = [caffe, "train", f"--solver={solver_path}"]
    state = latest_snapshot(cfg.run_dir, cfg.name) if cfg.resume else None
    if cfg.resume and state is None:
        print(f"train.py: --resume: no {cfg.name}_iter_*.solverstate in {cfg.run_dir}", file=sys.stderr)
        return EXIT_MISSING_INPUT
    if state is not None:
        command.append(f"--snapshot={state}")
    elif cfg.weights is not None:
        command.append(f"--weights={cfg.weights}")
    if cfg.device.startswith("cuda"):
        command.append("--gpu=all")
    print(" ".join(command), flush=True)
    return subprocess.call(command)


def main(args, argv=()):
    from sec.caffe.solver import NonFiniteLossError
    from sec import train as sec_train

    if args.gpus > 1 and "WORLD_SIZE" not in os.environ and args.engine == "torch":
        return relaunch_with_torchrun(args, argv)
    try:
        cfg = recipe(args)
        if cfg.classes == "synthetic" and args.list is None:
            prepare_synthetic(args.synthetic_dir)
        for path in (cfg.source, cfg.cues):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{path} not found")
    except FileNotFoundError as err:
        print(f"train.py: {err}", file=sys.stderr)
        return EXIT_MISSING_INPUT
    if args.engine == "caffe":
        return run_with_caffe(cfg)
    rank, world_size, local_rank = sec_train.environment_world()
    if world_size > 1:
        sec_train.init_distributed(cfg, local_rank)
    if args.threads is not None:
        import torch
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    try:
        if wants_pretraining(args, cfg):
            stage = sec_train.pretrain_config(cfg, PRETRAIN_SOLVER, PRETRAIN_NET, args.pretrain_iters)
            cfg.weights = sec_train.train(stage)
            if rank == 0:
                print(f"pre-trained weights: {cfg.weights}", flush=True)
        weights = sec_train.train(cfg)
    except NonFiniteLossError as err:
        print(f"train.py: {err}", file=sys.stderr)
        return EXIT_NONFINITE
    except FileNotFoundError as err:
        print(f"train.py: {err}", file=sys.stderr)
        return EXIT_MISSING_INPUT
    if rank != 0:
        return 0
    print(f"weights: {weights}")
    sec_train.finish(cfg, weights, evaluate_after=not args.no_eval)
    print(f"time: {time.perf_counter() - started:.0f} s wall, {cpu_seconds():.0f} s CPU "
          f"(this process, data generation excluded)")
    return 0


def wants_pretraining(args, cfg):
    """The synthetic recipe pre-trains unless told not to or given weights or resuming."""
    return cfg.classes == "synthetic" and cfg.weights is None and not cfg.resume and not args.no_pretrain


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    argv = sys.argv[1:]
    sys.exit(main(build_parser().parse_args(argv), argv))
