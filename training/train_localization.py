"""Train one of the two localization nets (foreground CAM net or background saliency net) from
image-level labels, with the Caffe SGD solver of the training stage.

    python training/train_localization.py --net fg        # synthetic set (generated/synthetic)
    python training/train_localization.py --net bg
    python training/train_localization.py --net fg --preset voc --list input_list.txt \
        --root VOC2012/JPEGImages --labels localization_cues.pickle --weights vgg16.caffemodel

The net and solver are models/localization/<preset>/{fg,bg}.prototxt and {fg,bg}_solver.prototxt;
flags give paths and overrides only. Labels: --labels (JSON {"<id>": [classes]} or a cue pickle's
'<id>_labels') or --voc (from the segmentation ground truth); they are written to
<run>/labels.json, which the net's ImageLabelsLayer reads. The run folder (default
runs/localization/<preset>/<net>/) holds snapshots, losses.csv/png and train.log; the final
weights are copied to --out (default runs/localization/<preset>/<net>.caffemodel), the file
make_cues.py reads. A run folder that already holds snapshots is refused unless --resume or
--overwrite. Exit status: 0 done, 2 a missing or unusable input or flag (nothing trained) or an
output that cannot be written (read-only folder, full disk; complete snapshots kept), 3 diverged
(NaN/Inf; earlier snapshots kept), 130 interrupted (snapshots kept).
"""
import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

from sec.run_folder import caffe_seed, positive_int

REPO_ROOT = Path(__file__).resolve().parents[1]
EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3
EXIT_INTERRUPTED = 130


def build_parser():
    from sec.localization import PRESETS
    parser = argparse.ArgumentParser(description="Train a SEC localization net from image-level labels.")
    parser.add_argument("--net", choices=("fg", "bg"), required=True,
                        help="fg: the CAM net (foreground cues); bg: the saliency net (background cues)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="synthetic",
                        help="models/localization/<preset>/ prototxts and default paths")
    parser.add_argument("--list", type=Path, help="training image list '<image> <id>' (synthetic default: train.txt)")
    parser.add_argument("--root", type=Path, help="folder the list's image paths are relative to")
    parser.add_argument("--labels", type=Path, help="image-level labels: JSON {\"<id>\": [classes]} or a cue "
                        "pickle's '<id>_labels' (synthetic default: train_labels.json)")
    parser.add_argument("--voc", type=Path, help="VOC folder: labels from SegmentationClass(Aug) when no --labels")
    parser.add_argument("--weights", type=Path, help="initial weights .caffemodel copied by layer name "
                        "(VOC: VGG16 ImageNet weights)")
    parser.add_argument("--solver", type=Path, help="solver prototxt (default: <preset models>/<net>_solver.prototxt)")
    parser.add_argument("--run-dir", type=Path, help="run folder (default: runs/localization/<preset>/<net>)")
    parser.add_argument("--out", type=Path, help="final weights (default: runs/localization/<preset>/<net>.caffemodel)")
    parser.add_argument("--iters", type=positive_int, help="override max_iter of the solver")
    parser.add_argument("--seed", type=caffe_seed, help="override random_seed of the solver (0..2**63-1)")
    parser.add_argument("--batch", type=positive_int, help="override batch_size of the net's ImageData layer")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    parser.add_argument("--resume", action="store_true", help="continue from the run's last readable "
                        ".solverstate or .solverstate.h5 (not with --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="delete an earlier run in --run-dir and start "
                        "again (without it such a folder is refused; not with --resume)")
    parser.add_argument("--tensorboard", type=Path, metavar="DIR", help="TensorBoard events in "
                        "DIR/localization-<preset>-<net>: every loss, the smoothed loss, lr, seconds per iteration "
                        "(needs `pip install tensorboard`; --resume appends)")
    return parser


def resolve(args):
    from sec import tensorboard
    from sec.localization import preset_paths
    from sec.run_folder import RunInputError
    if args.resume and args.overwrite:
        raise RunInputError("--resume continues the run in --run-dir and --overwrite deletes it: pass one of them")
    if args.tensorboard is not None:
        tensorboard.require()
    preset = preset_paths(args.preset, REPO_ROOT)
    dataset = preset["dataset"]
    if args.list is None and dataset is not None:
        if not (dataset / "train.txt").is_file():
            raise FileNotFoundError(f"synthetic set not found in {dataset}: generate it first "
                                    f"(python -m sec.synthetic --out {dataset} --train 1000 --val 200)")
        args.list = dataset / "train.txt"
        args.root = args.root or dataset / "images"
        args.labels = args.labels or dataset / "train_labels.json"
    args.solver = args.solver or preset["models"] / f"{args.net}_solver.prototxt"
    args.run_dir = args.run_dir or preset["runs"] / args.net
    args.out = args.out or preset["runs"] / f"{args.net}.caffemodel"
    args.num_classes = preset["num_classes"]
    if args.list is None or args.root is None:
        raise FileNotFoundError(f"--preset {args.preset} needs --list and --root")
    if args.labels is None and args.voc is None:
        raise FileNotFoundError("need --labels or --voc (labels from the segmentation ground truth)")
    if args.batch is not None and args.batch < 1:
        raise ValueError(f"--batch: need at least 1, got {args.batch}")
    for flag, path in (("--list", args.list), ("--labels", args.labels), ("--solver", args.solver),
                       ("--weights", args.weights)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{flag}: {path} not found")
    return args


def write_run_labels(args):
    """<run>/labels.json from --labels or the VOC ground truth; returns its path."""
    from sec import data
    from sec import localization as loc
    entries = data.read_image_list(args.list)
    if args.labels is not None:
        labels = loc.load_image_labels(args.labels, args.num_classes)
    else:
        layout = data.VOCLayout(args.voc)
        labels = loc.labels_from_masks([(f, i) for f, i, _ in entries],
                                       lambda f: layout.gt_path(Path(f).stem), args.num_classes)
    missing = [image for _, image, _ in entries if image not in labels]
    if missing:
        raise KeyError(f"no labels for {len(missing)} image id(s) of {args.list}, e.g. {missing[:5]}")
    path = args.run_dir / "labels.json"
    loc.write_labels(path, {image: labels[image] for _, image, _ in entries})
    return path


def build_solver(args, labels_path, device):
    from sec.caffe.solver import NetOverrides, SGDSolver
    overrides = NetOverrides(source=str(args.list), root_folder=str(args.root) + "/", batch_size=args.batch,
                             python_params={"ImageLabelsLayer": {"labels": str(labels_path)}})
    return SGDSolver(args.solver, max_iter=args.iters, snapshot_prefix=args.run_dir / args.net,
                     net_overrides=overrides, device=device, random_seed=args.seed)


def prepare_run_folder(args):
    """Inputs checked, then the run folder: refuse an earlier run unless --resume/--overwrite,
    remove stale temporary files, write labels.json; returns its path."""
    from sec import run_folder
    run_folder.check_image_list(args.list, args.root)
    if args.out.is_dir():
        raise run_folder.RunInputError(f"--out: {args.out} is a folder; need the .caffemodel file to write")
    run_folder.check_writable_folder(args.out.parent, "--out")
    run_folder.check_writable_folder(args.run_dir, "--run-dir")
    if args.resume:
        run_folder.resume_snapshot(args.run_dir, args.net)
    else:
        for path in run_folder.prepare_new_run(args.run_dir, args.net, args.overwrite):
            print(f"--overwrite: deleted {path}")
    args.run_dir.mkdir(parents=True, exist_ok=True)
    run_folder.remove_stale_temporaries(args.run_dir, args.net)
    return write_run_labels(args)


def train(args, labels_path, device):
    """Build the solver, resume or load the initial weights, train; returns the solver."""
    from sec import run_folder
    from sec import train as sec_train
    solver = build_solver(args, labels_path, device)
    if args.resume:
        state, skipped = run_folder.restore_newest_readable(solver, args.run_dir, args.net)
        for bad, reason in skipped:
            print(f"--resume: skipped unreadable snapshot {bad} ({reason})")
        print(f"resuming from {state} at iteration {solver.iter} (weights {solver.restored_from[1]})")
        warning = run_folder.missing_sidecar_note(state)
        if warning:
            print(warning, file=sys.stderr)
    elif args.weights is not None:
        run_folder.require_some_weights(solver.load_weights(args.weights), args.weights)
    board = None
    if args.tensorboard is not None:
        from sec import tensorboard
        log_dir = tensorboard.run_log_dir(args.tensorboard, f"localization-{args.preset}-{args.net}")
        board = tensorboard.TrainingLog(log_dir, resume_iter=solver.iter if args.resume else None)
    sec_train.run_loop(solver, args.run_dir, resume_iter=solver.iter if args.resume else None, board=board)
    return solver


def main(args):
    from sec import train as sec_train
    from sec.caffe.solver import NonFiniteLossError, snapshot_paths
    from sec.deploy_files import atomic_save
    from sec.run_folder import describe_os_error
    bad_input = (FileNotFoundError, ValueError, KeyError)   # every project input error is a ValueError
    try:
        args = resolve(args)
        device = sec_train.pick_device(args.device)
        labels_path = prepare_run_folder(args)
    except bad_input as err:
        print(f"train_localization: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:
        print(f"train_localization: {describe_os_error(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("train_localization: interrupted before training; nothing was trained", file=sys.stderr)
        return EXIT_INTERRUPTED
    started = time.perf_counter()
    kept = "every complete snapshot is kept (continue with --resume)"
    try:
        handler = sec_train.attach_log_file(args.run_dir / "train.log")
        try:
            solver = train(args, labels_path, device)
        finally:
            for name in ("sec", "pylayers"):
                logging.getLogger(name).removeHandler(handler)
            handler.close()
        final = Path(snapshot_paths(args.run_dir / args.net, solver.iter)[0])
        atomic_save(args.out, lambda tmp: shutil.copyfile(final, tmp))   # never a half-copied --out
    except NonFiniteLossError as err:
        print(f"train_localization: {err}", file=sys.stderr)
        return EXIT_NONFINITE
    except bad_input as err:
        print(f"train_localization: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:
        print(f"train_localization: {describe_os_error(err, args.run_dir)}; {kept}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"train_localization: interrupted; the snapshots in {args.run_dir} are kept (continue with --resume)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"{args.net} net: {solver.iter} iterations in {time.perf_counter() - started:.1f} s, "
          f"final loss {solver.smoothed_loss:.4f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))  # the checkout's `sec`, as train.sh's PYTHONPATH gives it
    sys.exit(main(build_parser().parse_args()))
