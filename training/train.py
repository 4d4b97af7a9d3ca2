"""Train SEC: `bash training/train.sh [flags]` (this script is what train.sh runs).

No flags: the whole weakly supervised pipeline on the built-in synthetic dataset, every stage a
file that the next one reads and that can be rerun alone (the command of each stage is printed):
  0. the dataset            generated/synthetic/                  (python -m sec.synthetic)
  1. foreground CAM net     runs/localization/synthetic/fg.caffemodel  (training/train_localization.py --net fg)
  2. background saliency net runs/localization/synthetic/bg.caffemodel (training/train_localization.py --net bg)
  3. localization cues      runs/localization/synthetic/cues.pickle    (training/make_cues.py, + report)
  4. SEC                    runs/synthetic/synthetic_iter_600.caffemodel (models/synthetic/, initialised
                            from the fg net's trunk, the synthetic stand-in for ImageNet weights)
  5. evaluation on the synthetic val split (per-class IoU, mIoU, panels)
A stage whose file exists (and is newer than the dataset) is kept; delete the file, or pass
--redo-localization, to redo it. --cues FILE skips stages 2-3, --cues and --weights skip 1-3.
A run folder that already holds a run is refused unless --resume (continue it) or --overwrite
(delete it and start again); the list, its images and the cues are checked before training.
With --voc/--cues/--weights: the paper's recipe with models/sec/ (DeepLab-LargeFOV, 8000 iterations
at batch 15). Everything not given by a flag comes from the prototxts. Runs go to runs/<name>/ and,
once finished, runs/latest.json names the weights for deploy/deploy.py.
"""
import argparse
import os
import resource
import sys
import time
from pathlib import Path

from sec import launch
from sec.run_folder import caffe_seed, nonnegative_int, positive_int, run_name
from sec.tensorboard import PANEL_EVERY

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS = REPO_ROOT / "models"
SYNTHETIC_DIR = REPO_ROOT / "generated" / "synthetic"
TRAIN_LOCALIZATION = REPO_ROOT / "training" / "train_localization.py"
MAKE_CUES = REPO_ROOT / "training" / "make_cues.py"
LOCALIZATION_PRESET = "synthetic"
SYNTHETIC_TRAIN_IMAGES = 1000
SYNTHETIC_VAL_IMAGES = 200
SYNTHETIC_IMAGE_SIZE = 160
SYNTHETIC_CUE_SIZE = 21
VOC_NUM_CLASSES = 21
VOC_TRAIN_SPLIT = "trainaug"
EXIT_MISSING_INPUT = 2         # a missing or unusable input, flag or run folder, or outputs that cannot be
                               # written (read-only, disk full); nothing finished is lost
EXIT_NONFINITE = 3             # training diverged (NaN/Inf); the earlier snapshots are kept
EXIT_STAGE_FAILED = 4          # a pipeline stage (subprocess) failed; its message is above
EXIT_INTERRUPTED = 130         # Ctrl-C; the snapshots written so far are kept (--resume)


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
    parser.add_argument("--gpus", type=positive_int, default=1, help="data-parallel processes (torchrun, one per GPU; "
                        "with --device cpu they run on the gloo backend); the global batch is split across them")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    parser.add_argument("--engine", choices=("torch", "caffe"), default="torch",
                        help="torch: this project's engine; caffe: hand the same net and solver to BVLC Caffe's "
                        "`caffe train` (one process; its Python layers run in Caffe's own Python: see --caffe-python)")
    parser.add_argument("--caffe-python", help="--engine caffe: the Python pycaffe was built for, with "
                        "krahenbuhl2013 installed (`PY -m pip install ./pylayers ./CRF`); default "
                        "$SEC_CAFFE_PYTHON, else /opt/caffe/venv/bin/python. `caffe train` runs with its folder first "
                        "on PATH and PYTHONPATH set to the checkout's pylayers only, so Caffe's embedded Python "
                        "imports its own numpy, not this Python's; a failing Python layer prints its traceback")
    parser.add_argument("--caffe-bin", help="--engine caffe: the `caffe` binary (default: beside that Python's "
                        "pycaffe, <prefix>/bin/caffe, else `caffe` on PATH)")
    parser.add_argument("--resume", action="store_true", help="continue the run from its last readable .solverstate "
                        "(or .solverstate.h5: the newest iteration in either format; not with --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="delete an earlier run of the same name in its "
                        "folder (snapshots, losses, log) and start again; without it such a folder is refused "
                        "(not with --resume)")
    parser.add_argument("--name", type=run_name, help="run name, a plain name (letters, digits, '.', '_', '-'): "
                        "folder <runs>/<name>/ (default: synthetic or voc)")
    parser.add_argument("--runs", type=Path, default=REPO_ROOT / "runs", help="folder of runs and latest.json "
                        "(must be writable; checked before anything runs)")
    parser.add_argument("--solver", type=Path, help="solver prototxt (default: models/<recipe>/solver.prototxt)")
    parser.add_argument("--net", type=Path, help="train net prototxt (default: models/<recipe>/train.prototxt)")
    parser.add_argument("--synthetic-dir", type=Path, default=SYNTHETIC_DIR,
                        help="synthetic dataset folder (generated when absent or incomplete)")
    parser.add_argument("--iters", type=positive_int, help="override max_iter of the solver")
    parser.add_argument("--batch", type=positive_int, help="override the global batch size of the ImageData layer")
    parser.add_argument("--seed", type=caffe_seed, help="override random_seed of the solver (0..2**63-1)")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    parser.add_argument("--localization-only", action="store_true", help="synthetic recipe: stop after the "
                        "localization stages (fg net, bg net, cues; not with --voc or --list)")
    parser.add_argument("--redo-localization", action="store_true", help="synthetic recipe: redo the "
                        "localization stages even when their files exist (not with --voc or --list)")
    parser.add_argument("--loc-iters", type=positive_int, help="override max_iter of the two localization solvers "
                        "(models/localization/synthetic/{fg,bg}_solver.prototxt; not with --voc or --list)")
    parser.add_argument("--threads", type=positive_int, help="torch intra-op CPU threads (default: torch's, one per "
                        "core; torch engine only)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: the net body runs under "
                        "bf16 autocast (losses and CRF stay float32); default fp32 (torch engine only)")
    parser.add_argument("--no-tf32", dest="tf32", action="store_false", help="full IEEE float32 convolutions on "
                        "CUDA (default: TF32 allowed, PyTorch's default; torch engine only)")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format for the net (CUDA; "
                        "torch engine only)")
    parser.add_argument("--tensorboard", type=Path, metavar="DIR", help="TensorBoard events in DIR/<run name>: "
                        "every loss, the smoothed loss, lr, seconds per iteration, the evaluation's mIoU, and "
                        "every 50 iterations a panel of image, cues, prediction and CRF output; the synthetic "
                        "localization stages log to DIR/localization-synthetic-{fg,bg}. Needs `pip install "
                        "tensorboard`; rank 0 only; --resume appends (torch engine only)")
    parser.add_argument("--tensorboard-panels", type=nonnegative_int, metavar="N",
                        help="with --tensorboard: a panel of image, cues, prediction and CRF every N iterations "
                             f"(0: none; default {PANEL_EVERY})")
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
                  seed=args.seed, device=pick_device(args.device), resume=args.resume,
                  overwrite=args.overwrite, classes=kind)
    for path in (common["solver"], common["net"]):
        if not Path(path).is_file():
            raise FileNotFoundError(f"prototxt not found: {path}")
    if args.weights is not None and not args.weights.is_file():
        raise FileNotFoundError(f"--weights: {args.weights} not found")
    if not voc:
        return RunConfig(num_classes=len(synthetic.CLASSES), dataset=args.synthetic_dir,
                         source=args.list or args.synthetic_dir / "train.txt",
                         root_folder=str(args.synthetic_dir / "images") + "/",
                         cues=args.cues or localization_files(args.runs)["cues"], **common)
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
                     root_folder=str(layout.images) + "/", cues=args.cues, list_written=args.list is None, **common)


def prepare_synthetic(folder):
    """The synthetic set in `folder`: a complete one of this generator version and geometry is
    used as it is (whatever its image counts); otherwise the default one is generated."""
    from sec import synthetic
    manifest = synthetic.existing_set(folder, SYNTHETIC_IMAGE_SIZE, SYNTHETIC_CUE_SIZE)
    if manifest is not None:
        return manifest
    return synthetic.generate(folder, SYNTHETIC_TRAIN_IMAGES, SYNTHETIC_VAL_IMAGES, seed=0,
                              image_size=SYNTHETIC_IMAGE_SIZE, cue_size=SYNTHETIC_CUE_SIZE,
                              workers=min(2, os.cpu_count() or 1), progress=True)


class StageError(RuntimeError):
    """A pipeline stage (a subprocess) failed; its own message is already on stderr."""


def localization_files(runs):
    """Files of the synthetic localization stages under a runs root."""
    folder = Path(runs) / "localization" / LOCALIZATION_PRESET
    return {"folder": folder, "fg": folder / "fg.caffemodel", "bg": folder / "bg.caffemodel",
            "cues": folder / "cues.pickle"}


def is_fresh(path, dataset):
    """`path` exists and is newer than the dataset's manifest (so it was made from this set)."""
    manifest = Path(dataset) / "manifest.json"
    return path.is_file() and (not manifest.is_file() or path.stat().st_mtime >= manifest.stat().st_mtime)


def run_stage(name, command):
    command = [str(part) for part in command]
    print(f"== {name}: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    status, interrupted = launch.run_child(command)
    if interrupted:
        raise KeyboardInterrupt
    if status != 0:
        raise StageError(f"stage '{name}' failed with exit status {status}")
    print(f"== {name}: done in {time.perf_counter() - started:.0f} s", flush=True)


def localization_stages(args, stages):
    """Run the synthetic localization stages named in `stages` (fg, bg, cues) whose files are
    missing or stale; returns localization_files(args.runs)."""
    files = localization_files(args.runs)
    dataset = Path(args.synthetic_dir)
    inputs = ["--list", dataset / "train.txt", "--root", dataset / "images",
              "--labels", dataset / "train_labels.json", "--device", args.device]
    iters = [] if args.loc_iters is None else ["--iters", args.loc_iters]
    board = [] if args.tensorboard is None else ["--tensorboard", args.tensorboard]
    commands = {
        net: [sys.executable, TRAIN_LOCALIZATION, "--net", net, "--preset", LOCALIZATION_PRESET, *inputs,
              "--run-dir", files["folder"] / net, "--out", files[net], "--overwrite", *iters, *board]
        for net in ("fg", "bg")}
    commands["cues"] = [sys.executable, MAKE_CUES, "--preset", LOCALIZATION_PRESET, *inputs,
                        "--masks", dataset / "masks", "--fg-weights", files["fg"], "--bg-weights", files["bg"],
                        "--out", files["cues"]]   # an interrupted run resumes (make_cues checks the nets)
    new_net = False                      # the cues depend on both nets
    for stage in ("fg", "bg", "cues"):
        if stage not in stages:
            continue
        stale = args.redo_localization or not is_fresh(files[stage], dataset)
        if stage == "cues" and not stale:   # a net retrained since (here or by hand) makes them stale
            stale = new_net or any(files[net].is_file() and files[net].stat().st_mtime > files[stage].stat().st_mtime
                                   for net in ("fg", "bg"))
        if not stale:
            print(f"== {stage}: {files[stage]} exists, kept (delete it or pass --redo-localization to redo)")
            continue
        run_stage(stage, commands[stage])
        new_net = new_net or stage != "cues"
    return files


def needed_stages(args):
    """Localization stages the synthetic recipe needs: fg for the initial weights (unless
    --weights or --resume), all three for the cues (unless --cues)."""
    if args.voc is not None or args.list is not None:
        return set()
    if args.localization_only:
        return {"fg", "bg", "cues"}
    stages = set()
    if args.cues is None:
        stages |= {"fg", "bg", "cues"}
    if args.weights is None and not args.resume:
        stages.add("fg")
    return stages


def relaunch_with_torchrun(args, argv):
    """Re-run this script under torchrun with one process per GPU (or CPU process with gloo); returns
    the exit status of the first process that failed (sec.launch.torchrun)."""
    return launch.torchrun(Path(__file__).resolve(), args.gpus, argv)


def run_with_caffe(cfg, args):
    """--engine caffe: write the run's net and solver prototxts, run BVLC Caffe's `caffe train` on them
    in the environment of sec.bvlc_caffe (Caffe's own Python, the checkout's pylayers), then write
    runs/latest.json (and, on the synthetic set, evaluate Caffe's weights with this engine)."""
    from sec import bvlc_caffe
    from sec import train as sec_train
    from sec.caffe import formats

    try:
        # The same checks as the torch engine: inputs first, and an earlier run is never destroyed.
        state = sec_train.check_before_training(cfg)
    except expected_errors() as err:
        return report_failure(err)
    try:
        python = bvlc_caffe.find_caffe_python(args.caffe_python)
        env = bvlc_caffe.caffe_environment(python, bvlc_caffe.locate_pycaffe(python))
        found = bvlc_caffe.probe(python, env)
        caffe = bvlc_caffe.find_caffe_binary(args.caffe_bin, found["caffe"], env)
    except bvlc_caffe.CaffeUnavailable as err:
        return report_failure(err)
    try:
        if not cfg.resume and cfg.overwrite:  # only now that Caffe is there to train the new run
            for path in sec_train.prepare_new_run(cfg.run_dir, cfg.name, True, cfg.runs_root):
                print(f"--overwrite: deleted {path}")
        solver_path = sec_train.write_caffe_files(cfg)
    except OSError as err:
        return report_failure(err, cfg)
    command = [str(caffe), "train", f"--solver={solver_path}"]
    if state is not None:
        command.append(f"--snapshot={state}")
    elif cfg.weights is not None:
        command.append(f"--weights={cfg.weights}")
    if cfg.device.startswith("cuda"):
        command.append("--gpu=0")
    print(f"Caffe's Python: {python} (numpy {found['numpy']}; pylayers from {Path(found['pylayers']).parent})")
    print(" ".join(command), flush=True)
    status, interrupted = launch.run_child(command, env=env)
    if interrupted:       # Caffe's own SIGINT handling (-sigint_effect stop) snapshots, then exits 0
        print(f"train.py: interrupted; Caffe stopped after a snapshot, the snapshots in {cfg.run_dir} are kept "
              "(continue with --resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    if status != 0:
        how = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
        print(f"train.py: caffe train failed ({how}); a Python layer's traceback, if one failed, is above",
              file=sys.stderr)
        return EXIT_STAGE_FAILED
    max_iter = formats.read_solver_prototxt(str(solver_path)).max_iter
    weights = Path(f"{cfg.prefix.resolve()}_iter_{max_iter}.caffemodel")
    print(f"weights: {weights}")
    try:
        sec_train.finish(cfg, weights, evaluate_after=not args.no_eval)
    except (*expected_errors(), OSError) as err:
        return report_failure(err, cfg)
    return 0


TORCH_ENGINE_ONLY = (("--precision bf16", lambda args: args.precision != "fp32"),
                     ("--channels-last", lambda args: args.channels_last),
                     ("--no-tf32", lambda args: not args.tf32),
                     ("--threads", lambda args: args.threads is not None),
                     ("--gpus > 1", lambda args: args.gpus > 1),
                     ("--tensorboard", lambda args: args.tensorboard is not None))
CAFFE_ENGINE_ONLY = (("--caffe-python", lambda args: args.caffe_python is not None),
                     ("--caffe-bin", lambda args: args.caffe_bin is not None))
SYNTHETIC_STAGES_ONLY = (("--localization-only", lambda args: args.localization_only),
                         ("--redo-localization", lambda args: args.redo_localization),
                         ("--loc-iters", lambda args: args.loc_iters is not None))


def check_flags(args):
    """Flags that contradict each other or would be ignored: RunInputError naming them."""
    from sec.run_folder import RunInputError

    def used(table):
        return ", ".join(flag for flag, given in table if given(args))

    if args.resume and args.overwrite:
        raise RunInputError("--resume continues the run in its folder and --overwrite deletes it: pass one of them")
    if args.engine == "caffe" and used(TORCH_ENGINE_ONLY):
        raise RunInputError(f"{used(TORCH_ENGINE_ONLY)}: torch engine only; BVLC Caffe (--engine caffe) has no such "
                            "setting and trains on one GPU (Caffe's command line refuses Python layers on several)")
    if args.engine == "torch" and used(CAFFE_ENGINE_ONLY):
        raise RunInputError(f"{used(CAFFE_ENGINE_ONLY)}: only with --engine caffe")
    if (args.voc is not None or args.list is not None) and used(SYNTHETIC_STAGES_ONLY):
        raise RunInputError(f"{used(SYNTHETIC_STAGES_ONLY)}: the synthetic recipe's own localization stages, not with "
                            "--voc or --list (train localization nets with training/train_localization.py and make "
                            "cues with training/make_cues.py)")


def main(args, argv=()):
    """Exit status: 0 done, 2 a missing or unusable input, flag or run folder, or outputs that cannot be
    written, 3 diverged, 4 a pipeline stage failed, 130 Ctrl-C (see docs/troubleshooting.md)."""
    try:
        status = run(args, argv)
    except KeyboardInterrupt:
        print("train.py: interrupted; every finished stage and snapshot is kept (rerun the same command; "
              "SEC training continues with --resume)", file=sys.stderr)
        status = EXIT_INTERRUPTED
    launch.record_worker_status(status)
    return status


def run(args, argv):
    from sec import tensorboard
    from sec import train as sec_train
    from sec.caffe.solver import NonFiniteLossError
    from sec.run_folder import RunInputError, check_writable_folder

    under_torchrun = "WORLD_SIZE" in os.environ
    started = time.perf_counter()
    relaunch = args.gpus > 1 and not under_torchrun and args.engine == "torch"
    try:
        check_flags(args)
        if args.tensorboard is not None:
            tensorboard.require()                   # before any stage: the package is there
        elif args.tensorboard_panels is not None:
            raise RunInputError("--tensorboard-panels: only with --tensorboard DIR")
        device = sec_train.pick_device(args.device)          # before any stage runs on it
        if args.engine == "torch":
            sec_train.check_gpus(args.gpus, device)
        check_writable_folder(args.runs, "--runs")
        if not under_torchrun:
            prepare_inputs(args)
            if args.localization_only:
                print(f"localization stages done: {localization_files(args.runs)['folder']}")
                return 0
        cfg = recipe(args)
        cfg.precision, cfg.tf32, cfg.channels_last = args.precision, args.tf32, args.channels_last
        cfg.tensorboard = args.tensorboard
        if args.tensorboard_panels is not None:
            cfg.tensorboard_panels = args.tensorboard_panels
        for path in (cfg.source, cfg.cues):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{path} not found")
        if relaunch:            # a bad input is one line here, not one per process and torchrun's report
            sec_train.check_before_training(cfg)
    except (*expected_errors(), StageError, OSError) as err:
        return report_failure(err)
    if relaunch:
        return relaunch_with_torchrun(args, [*argv, *resolved_flags(args, argv)])
    if args.engine == "caffe":
        return run_with_caffe(cfg, args)
    rank, world_size, local_rank = sec_train.environment_world()
    if args.threads is not None:
        import torch
        torch.set_num_threads(args.threads)
    try:
        if world_size > 1:
            sec_train.init_distributed(cfg, local_rank)
        weights = sec_train.train(cfg)
    except (NonFiniteLossError, *expected_errors(), OSError) as err:
        return report_failure(err, cfg)
    except KeyboardInterrupt:
        print(f"train.py: interrupted; the snapshots in {cfg.run_dir} are kept (continue with --resume)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        sec_train.close_distributed()
    if rank != 0:
        return 0
    print(f"weights: {weights}")
    try:
        sec_train.finish(cfg, weights, evaluate_after=not args.no_eval)
    except (*expected_errors(), OSError) as err:
        return report_failure(err, cfg)
    print(f"time: {time.perf_counter() - started:.0f} s wall (the stages this process ran), "
          f"{cpu_seconds():.0f} s CPU (this process: SEC training and evaluation)")
    return 0


def expected_errors():
    """Exception types that mean a missing or unusable input (exit status 2, one line, no traceback):
    files, flags, run folder, image list and images, cues, prototxts, weights and snapshots."""
    from sec import data
    from sec.caffe import NetError
    from sec.caffe import formats
    from sec.caffe.solver import SnapshotError, SolverConfigError
    from sec.caffe.weights import MissingWeightsError
    from sec.run_folder import RunInputError
    return (FileNotFoundError, RunInputError, data.ImageListError, data.ImageLoadError, formats.PrototxtError,
            formats.CaffeFormatError, formats.WeightShapeError, SolverConfigError, SnapshotError,
            MissingWeightsError, NetError)


def report_failure(err, cfg=None):
    """Print an expected failure as one line and return its exit status (bad input, failed stage, NaN,
    an output that cannot be written: a read-only folder or a full disk)."""
    from sec.caffe.solver import NonFiniteLossError
    from sec.run_folder import describe_os_error
    for kind, status in ((StageError, EXIT_STAGE_FAILED), (NonFiniteLossError, EXIT_NONFINITE),
                         (expected_errors(), EXIT_MISSING_INPUT)):
        if isinstance(err, kind):
            print(f"train.py: {err}", file=sys.stderr)
            return status
    if isinstance(err, OSError):
        kept = "; every complete snapshot is kept (continue with --resume once it can be written)" if cfg else ""
        print(f"train.py: {describe_os_error(err, cfg.run_dir if cfg is not None else None)}{kept}", file=sys.stderr)
        return EXIT_MISSING_INPUT
    raise err


def prepare_inputs(args):
    """Synthetic recipe: the dataset, then the localization stages it needs; fills args.cues and
    args.weights with their files when the flags left them open."""
    if args.voc is not None or args.list is not None:
        return
    prepare_synthetic(args.synthetic_dir)
    stages = needed_stages(args)
    if not stages:
        return
    files = localization_stages(args, stages)
    if args.cues is None:
        args.cues = files["cues"]
    if args.weights is None and not args.resume:
        args.weights = files["fg"]
        print(f"SEC starts from the foreground net's trunk: {files['fg']}")


def resolved_flags(args, argv):
    """--cues/--weights that prepare_inputs chose, for the torchrun workers (they skip it)."""
    extra = []
    for flag, value in (("--cues", args.cues), ("--weights", args.weights)):
        if value is not None and flag not in argv:
            extra += [flag, str(value)]
    return extra


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    argv = sys.argv[1:]
    sys.exit(main(build_parser().parse_args(argv), argv))
