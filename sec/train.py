"""The SEC training run around `sec.caffe.SGDSolver`: run folder, loss log, plot, evaluation.

A run lives in `runs/<name>/`:
- `<name>_train.prototxt`: the train net actually used (the model's prototxt with the run's
  list, root folder, cues and batch size written in), `<name>_iter_<N>.caffemodel/.solverstate`
  (+ `.solverstate.rng`, see sec.caffe.solver) snapshots, or `.caffemodel.h5/.solverstate.h5` (+ `.rng`)
  with the solver's `snapshot_format: HDF5` (sec.run_folder sees both);
- `train.log` (Caffe-style solver log), `losses.csv` (one row per iteration: lr, total loss,
  smoothed loss, each loss blob, forward/backward/update seconds) and `losses.png`;
- `eval.json` and `panels.png` (image | ground truth | prediction) after evaluation.
After a finished run `runs/latest.json` names the final weights and the deploy prototxt
(read by deploy/deploy.py); it only ever names a file that exists.
A new run never replaces an earlier one silently: a folder that holds one is refused unless
`resume` (continue it) or `overwrite` (delete it first); see sec.run_folder, which also checks
the list, images and cues before the first iteration.
The synthetic recipe's earlier stages (localization nets and cues) are training/train.py's.
"""
import csv
import io
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from tqdm import tqdm

from sec import data, metrics, tensorboard, visualize
from sec.caffe import formats
from sec.caffe.solver import NetOverrides, apply_net_overrides, make_solver
from sec.deploy_files import atomic_save
from sec.run_folder import (RunInputError, check_cue_pairing, check_iterations,  # noqa: F401
                            check_train_net_inputs, latest_snapshot, missing_sidecar_note, prepare_new_run,
                            remove_stale_temporaries, require_some_weights, restore_newest_readable,
                            resume_snapshot)
from sec.tensorboard import PANEL_EVERY

log = logging.getLogger(__name__)

TIMING_FIELDS = ("forward", "backward", "update")
EVAL_BATCH = 16
NUM_PANELS = 6
LOG_FORMAT = "%(asctime)s %(levelname).1s %(name)s] %(message)s"


@dataclass
class RunConfig:
    """Everything one training run needs; None fields keep the prototxt's value."""
    name: str
    solver: Path
    net: Path
    deploy: Path
    runs_root: Path
    classes: str                    # "synthetic" or "voc" (for runs/latest.json)
    num_classes: int
    dataset: Path
    source: Path | None = None      # image list `<image> <id>`
    root_folder: str | None = None
    cues: Path | None = None
    weights: Path | None = None     # initialisation (.caffemodel, copied by layer name)
    batch: int | None = None        # global batch size
    iters: int | None = None
    seed: int | None = None
    device: str = "cpu"
    resume: bool = False
    overwrite: bool = False         # a new run may delete an earlier run in its folder
    list_written: bool = False      # `source` was written here (VOC: from trainaug.txt, ids 0..N-1), not given
    precision: str = "fp32"         # "bf16": autocast of the net body (sec.nn.speed)
    tf32: bool = True               # TF32 convolutions on CUDA (PyTorch's default)
    channels_last: bool = False     # NHWC parameters and inputs
    tensorboard: Path | None = None  # --tensorboard DIR: events in DIR/<name> (sec.tensorboard), rank 0
    tensorboard_panels: int = PANEL_EVERY   # a panel every N iterations (0: none)

    @property
    def run_dir(self):
        return Path(self.runs_root) / self.name

    @property
    def prefix(self):
        return self.run_dir / self.name


# ----- run folder ---------------------------------------------------------------------------------
def write_latest(runs_root, weights, deploy, classes, num_classes, dataset):
    """runs/latest.json as the contract describes it (absolute paths)."""
    if not Path(weights).is_file():
        raise FileNotFoundError(f"not writing {Path(runs_root) / 'latest.json'}: weights {weights} do not exist")
    info = {"weights": str(Path(weights).resolve()), "deploy_prototxt": str(Path(deploy).resolve()),
            "classes": classes, "num_classes": int(num_classes), "dataset": str(Path(dataset).resolve())}
    Path(runs_root).mkdir(parents=True, exist_ok=True)
    formats.atomic_write_bytes(str(Path(runs_root) / "latest.json"), (json.dumps(info, indent=1) + "\n").encode())
    return info


class RunLogHandler(logging.FileHandler):
    """train.log. A line that cannot be written (a full disk) raises its OSError, which stops the
    run with one message, instead of logging's traceback on stderr and a run that goes on."""

    def handleError(self, record):
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            raise error
        super().handleError(record)


def attach_log_file(path):
    """Send the solver's Caffe-style log lines to `path` (the console keeps the progress bar)."""
    handler = RunLogHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    for name in ("sec", "pylayers"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
    return handler


# ----- distributed --------------------------------------------------------------------------------
def rank_batch(global_batch, rank, world_size):
    """This rank's share of the global batch: sizes differ by at most one, lower ranks first."""
    if global_batch < world_size:
        raise ValueError(f"global batch {global_batch} is smaller than the {world_size} processes")
    return global_batch // world_size + (1 if rank < global_batch % world_size else 0)


def shard_list(source, out_path, rank, world_size):
    """Write every world_size-th line of the image list (from line `rank`) to out_path."""
    entries = data.read_image_list(source)
    shard = [(image, image_id) for image, image_id, _ in entries[rank::world_size]]
    data.write_image_list(out_path, shard)
    return out_path


def global_batch_of(net_path):
    """batch_size of the (first) ImageData layer of a train prototxt."""
    for layer in formats.read_net_prototxt(str(net_path)).layer:
        if layer.type == "ImageData":
            return layer.image_data_param.batch_size
    raise ValueError(f"{net_path}: no ImageData layer")


# ----- loss log -----------------------------------------------------------------------------------
class LossLog:
    """losses.csv: one row per iteration; on resume, rows from the resumed iteration on are dropped,
    and so is a last row cut short (a full disk). The kept rows are rewritten atomically (a failure
    leaves the old file whole), then new rows are appended."""

    def __init__(self, path, resume_iter=None):
        self.path = Path(path)
        self.fields = None
        self.rows = []
        if resume_iter is not None and self.path.is_file():
            with open(self.path, newline="") as handle:
                reader = csv.DictReader(handle)
                self.fields = reader.fieldnames
                self.rows = [row for row in reader if _complete(row) and int(row["iter"]) < resume_iter]
        self._handle = None
        self._writer = None

    def append(self, solver):
        outputs = dict(solver.last_outputs)
        row = {"iter": solver.iter - 1, "lr": solver.last_lr, "loss": outputs.pop("loss"),
               "smoothed_loss": solver.smoothed_loss}
        row.update(outputs)
        row.update({f"{k}_s": solver.last_timings.get(k, float("nan")) for k in TIMING_FIELDS})
        if self._writer is None:
            self._open(list(row))
        self._writer.writerow(row)
        self._handle.flush()

    def _open(self, fields):
        self.fields = self.fields or fields
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=self.fields)
        writer.writeheader()
        writer.writerows(self.rows)
        formats.atomic_write_bytes(str(self.path), text.getvalue().encode())
        self._handle = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._handle, fieldnames=self.fields)

    def close(self):
        if self._handle is not None:
            handle, self._handle = self._handle, None
            handle.close()


def _complete(row):
    """A csv row with every field (a row cut short by a full disk has None or '' at its end)."""
    return all(value not in (None, "") for value in row.values()) and None not in row


def plot_losses(csv_path, png_path):
    """losses.png: every loss column against the iteration, smoothed total loss in black."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
    skip = {"iter", "lr", "smoothed_loss", *(f"{k}_s" for k in TIMING_FIELDS)}
    iters = [int(r["iter"]) for r in rows]
    figure, axes = pyplot.subplots(figsize=(8, 4.5))
    for name in rows[0]:
        if name not in skip:
            axes.plot(iters, [float(r[name]) for r in rows], label=name, linewidth=0.8)
    axes.plot(iters, [float(r["smoothed_loss"]) for r in rows], color="black", label="smoothed total")
    axes.set_xlabel("iteration")
    axes.set_ylabel("loss")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    try:
        atomic_save(png_path, lambda tmp: figure.savefig(tmp, dpi=100))
    finally:
        pyplot.close(figure)
    return png_path


# ----- training -----------------------------------------------------------------------------------
def run_overrides(cfg, source=None, local_batch=None):
    """NetOverrides of a run: its list (or `source`, a rank's shard), root folder, cues, batch."""
    source = source if source is not None else cfg.source
    return NetOverrides(
        batch_size=local_batch if local_batch is not None else cfg.batch,
        source=str(source) if source is not None else None,
        root_folder=cfg.root_folder,
        python_params={"AnnotationLayer": {"cues": str(cfg.cues)}} if cfg.cues else None)


def check_inputs(cfg):
    """Everything a run reads, checked before anything is written or trained (RunInputError):
    iteration and batch counts, the list's images, the cue file and every id's cues, and, where
    ground-truth masks are at hand, that the cue ids are this list's ids (sec.run_folder.check_cue_pairing)."""
    check_iterations(cfg.iters, cfg.batch)
    netparam = apply_net_overrides(formats.read_net_prototxt(str(cfg.net)), run_overrides(cfg))
    for source, entries, cues_path, cues in check_train_net_inputs(netparam):
        note = check_cue_pairing(cues, cues_path, entries, source, mask_finder(cfg), cfg.num_classes,
                                 list_written=cfg.list_written)
        if note:
            print(note)


def mask_finder(cfg):
    """image file of the list -> its ground-truth mask path or None: VOC's SegmentationClass(Aug)/,
    the synthetic set's masks/."""
    from sec.localization import mask_finder as finder
    if cfg.classes == "voc":
        return finder(voc=cfg.dataset)
    return finder(masks=Path(cfg.dataset) / "masks")


def check_before_training(cfg):
    """What train() refuses before it writes anything, checked without writing (so that a launcher
    can check before it starts processes): check_inputs, --resume without a snapshot, an earlier run
    in the folder without --resume or --overwrite. Returns the .solverstate to resume from or None."""
    check_inputs(cfg)
    state = resume_snapshot(cfg.run_dir, cfg.name) if cfg.resume else None
    if not cfg.resume and not cfg.overwrite:
        prepare_new_run(cfg.run_dir, cfg.name, False, cfg.runs_root)  # refuses an earlier run, deletes nothing
    return state


def build_solver(cfg, rank=0, world_size=1):
    """The solver (SGD, or Adam by the solver's type) of a run: the model prototxts plus the run's paths and overrides."""
    global_batch = cfg.batch if cfg.batch is not None else global_batch_of(cfg.net)
    source = cfg.source
    if world_size > 1 and source is not None:
        source = shard_list(source, cfg.run_dir / f"list_rank{rank}.txt", rank, world_size)
    local_batch = rank_batch(global_batch, rank, world_size)
    overrides = run_overrides(cfg, source, local_batch if (cfg.batch is not None or world_size > 1) else None)
    from sec.nn.speed import net_factory
    return make_solver(cfg.solver, net=cfg.net, max_iter=cfg.iters, snapshot_prefix=cfg.prefix,
                     net_factory=net_factory(cfg.precision, cfg.tf32, cfg.channels_last),
                     net_overrides=overrides, device=cfg.device, random_seed=cfg.seed,
                     rank_weight=local_batch / global_batch)


def train(cfg):
    """Train (or resume) one run; returns the final weights' path (.caffemodel, or .caffemodel.h5 with
    snapshot_format: HDF5), on every rank.

    Raises RunInputError (bad flag, list, image, cues, an earlier run in the way, no readable
    snapshot to resume) before the first iteration, NonFiniteLossError on divergence."""
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    check_inputs(cfg)
    if cfg.resume:
        resume_snapshot(cfg.run_dir, cfg.name)
    if not cfg.resume and rank == 0:
        for path in prepare_new_run(cfg.run_dir, cfg.name, cfg.overwrite, cfg.runs_root):
            print(f"--overwrite: deleted {path}")
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        remove_stale_temporaries(cfg.run_dir, cfg.name)
    handler = attach_log_file(cfg.run_dir / ("train.log" if rank == 0 else f"train_rank{rank}.log"))
    try:
        if world_size > 1:
            dist.barrier()
        solver = build_solver(cfg, rank, world_size)
        if cfg.resume:
            state, skipped = restore_newest_readable(solver, cfg.run_dir, cfg.name)
            if rank == 0:
                for bad, reason in skipped:
                    print(f"--resume: skipped unreadable snapshot {bad} ({reason})")
                print(f"resuming from {state} at iteration {solver.iter} (weights {solver.restored_from[1]})")
                warning = missing_sidecar_note(state)
                if warning:
                    print(warning, file=sys.stderr)
        elif cfg.weights is not None:
            require_some_weights(solver.load_weights(cfg.weights), cfg.weights)
        board = None
        if cfg.tensorboard is not None and rank == 0:
            board = tensorboard.TrainingLog(tensorboard.run_log_dir(cfg.tensorboard, cfg.name),
                                            resume_iter=solver.iter if cfg.resume else None,
                                            panel_every=cfg.tensorboard_panels)
        run_loop(solver, cfg.run_dir, resume_iter=solver.iter if cfg.resume else None, show=rank == 0,
                 board=board)
        return solver.snapshot_files(solver.iter)[0]     # in the solver's snapshot_format
    finally:
        for name in ("sec", "pylayers"):
            logging.getLogger(name).removeHandler(handler)
        handler.close()


def run_loop(solver, run_dir, resume_iter=None, show=True, board=None):
    """solver.solve() with a tqdm bar (loss, ETA), losses.csv and losses.png; `board` (a
    sec.tensorboard.TrainingLog) logs every iteration too, and is closed at the end."""
    csv_path = Path(run_dir) / "losses.csv"
    losses = LossLog(csv_path, resume_iter) if show else None
    bar = tqdm(total=solver.param.max_iter, initial=solver.iter, desc="train", unit="it",
               dynamic_ncols=True, disable=not show)

    def on_iteration_end(s):
        if losses is None:
            return
        losses.append(s)
        values = {k.replace("loss-", ""): f"{v:.3f}" for k, v in s.last_outputs.items() if k != "loss"}
        bar.set_postfix(loss=f"{s.smoothed_loss:.3f}", **values, refresh=False)
        bar.update(1)

    solver.on_iteration_end.append(on_iteration_end)
    if board is not None:
        solver.on_iteration_end.append(board.iteration)
    solved = False
    try:
        solver.solve()
        solved = True
    finally:
        bar.close()
        if board is not None:
            board.close()
        try:
            if losses is not None:
                losses.close()
                if csv_path.is_file():
                    plot_losses(csv_path, Path(run_dir) / "losses.png")
        except OSError:
            if solved:  # otherwise the error that stopped training is the one to report
                raise


# ----- evaluation ---------------------------------------------------------------------------------
def evaluate(deploy, weights, image_list, root_folder, mask_folder, num_classes, device="cpu",
             panels_path=None, num_panels=NUM_PANELS, crf=False):
    """Segment every image of a list with the deploy net (sec.deploy's pipeline; crf: with its
    dense CRF post-processing) and score it against `<mask_folder>/<image stem>.png`; returns a
    sec.metrics.ConfusionMatrix.

    panels_path: also write image | ground truth | prediction for the first num_panels images.
    """
    from sec import caffe
    from sec.deploy import Segmenter

    net = caffe.Net(str(deploy), caffe.TEST, weights=str(weights))
    net.weight_report.require_complete()   # a layer at its filler would score plausible nonsense
    net.to(torch.device(device))
    net.eval()
    segmenter = Segmenter(net, device=device, crf=crf)
    height, width = segmenter.input_size
    confusion = metrics.ConfusionMatrix(num_classes)
    entries = data.read_image_list(image_list)
    panels = []
    for start in range(0, len(entries), EVAL_BATCH):
        chunk = entries[start:start + EVAL_BATCH]
        images = [data.load_image(Path(root_folder) / image) for image, _, _ in chunk]
        inputs = np.stack([data.preprocess(image, height, width) for image in images])
        predictions = segmenter.masks(images, segmenter.probabilities(inputs))
        for (image_file, _, _), image, prediction in zip(chunk, images, predictions):
            mask_path = Path(mask_folder) / (Path(image_file).stem + ".png")
            if not mask_path.is_file():
                raise FileNotFoundError(f"{image_list}: no ground truth {mask_path} for {image_file}")
            gt = np.asarray(Image.open(mask_path))
            confusion.update(gt, prediction, name=str(mask_path))
            if len(panels) < num_panels:
                panels.append([image, gt, prediction])
    if panels_path is not None and panels:
        atomic_save(panels_path, lambda tmp: visualize.save_panels(panels, tmp))
    return confusion


def format_iou_table(confusion, class_names):
    """Per-class IoU lines and the mIoU line, as printed by train.sh."""
    lines = []
    present = confusion.present()
    for name, value, seen in zip(class_names, confusion.iou(), present):
        lines.append(f"  {name:<12s} {100 * value:6.2f}" if seen else f"  {name:<12s}    n/a")
    lines.append(f"  {'mIoU':<12s} {100 * confusion.miou():6.2f}")
    return "\n".join(lines)


def save_eval(path, confusion, class_names, extra=None):
    summary = confusion.summary(list(class_names))
    summary.update(extra or {})
    formats.atomic_write_bytes(str(path), (json.dumps(summary, indent=1) + "\n").encode())
    return summary


def pick_device(name):
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; 'cuda' without a GPU is an error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RunInputError(f"--device {name}: torch sees no CUDA device (use --device cpu or auto)")
    if name != "cpu" and not name.startswith("cuda"):
        raise RunInputError(f"--device {name}: need auto, cpu or cuda[:N]")
    return name


def check_gpus(gpus, device):
    """--gpus N on CUDA needs N devices (RunInputError naming both); on the CPU N gloo processes run."""
    if device.startswith("cuda") and gpus > 1 and gpus > torch.cuda.device_count():
        raise RunInputError(f"--gpus {gpus}: torch sees {torch.cuda.device_count()} CUDA device(s); "
                            "pass at most that many (or --device cpu for gloo processes)")


def environment_world():
    """(rank, world_size, local_rank) from torchrun's environment, or (0, 1, 0)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(cfg, local_rank):
    """torch.distributed for torchrun: NCCL on one GPU per process, gloo on CPU. Pair it with
    `close_distributed` when the process is done."""
    if cfg.device.startswith("cuda"):
        check_gpus(local_rank + 1, cfg.device)     # a process past the devices: one line, not "invalid device ordinal"
        torch.cuda.set_device(local_rank)
        cfg.device = f"cuda:{local_rank}"
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def close_distributed():
    """Destroy the process group of `init_distributed`, if any (NCCL warns at exit otherwise, and
    a process group left open can hold the GPU's communicators until the interpreter ends)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def write_caffe_files(cfg):
    """For `caffe train`: the run's train net and a solver pointing at it; returns the solver path."""
    from google.protobuf import text_format
    from sec.caffe.solver import apply_net_overrides

    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    overrides = NetOverrides(batch_size=cfg.batch, source=str(cfg.source) if cfg.source else None,
                             root_folder=cfg.root_folder,
                             python_params={"AnnotationLayer": {"cues": str(cfg.cues)}} if cfg.cues else None)
    net = apply_net_overrides(formats.read_net_prototxt(str(cfg.net)), overrides)
    net_path = cfg.run_dir / f"{cfg.name}_train.prototxt"
    formats.atomic_write_bytes(str(net_path), text_format.MessageToString(net).encode())
    solver = formats.read_solver_prototxt(str(cfg.solver))
    solver.net = str(net_path.resolve())
    solver.snapshot_prefix = str(cfg.prefix.resolve())
    if cfg.iters is not None:
        solver.max_iter = cfg.iters
    if cfg.seed is not None:
        solver.random_seed = cfg.seed
    solver.solver_mode = solver.GPU if cfg.device.startswith("cuda") else solver.CPU
    solver_path = cfg.run_dir / f"{cfg.name}_solver.prototxt"
    formats.atomic_write_bytes(str(solver_path), text_format.MessageToString(solver).encode())
    return solver_path


def snapshot_iteration(weights):
    """N of a snapshot `<prefix>_iter_N.caffemodel` (or Caffe's HDF5 `.caffemodel.h5`), else None."""
    match = re.fullmatch(r".*_iter_(\d+)\.caffemodel(\.h5)?", Path(weights).name)
    return int(match.group(1)) if match else None


def finish(cfg, weights, evaluate_after=True):
    """Write runs/latest.json; on the synthetic set, evaluate on val and print the IoU table."""
    info = write_latest(cfg.runs_root, weights, cfg.deploy, cfg.classes, cfg.num_classes, cfg.dataset)
    latest = Path(cfg.runs_root).resolve() / "latest.json"
    print(f"wrote {latest}")
    if cfg.classes != "synthetic":
        print(f"segment and score VOC val with this run's model:\n"
              f"  python deploy/deploy.py --latest {latest} --images IMAGES --out MASKS [--crf]\n"
              f"  python deploy/evaluate.py --pred MASKS --gt {Path(cfg.dataset).resolve()} --classes voc")
        return info
    if not evaluate_after:
        return info
    from sec import synthetic
    dataset = Path(cfg.dataset)
    confusion = evaluate(cfg.deploy, weights, dataset / "val.txt", dataset / "images", dataset / "masks",
                         cfg.num_classes, device=cfg.device, panels_path=cfg.run_dir / "panels.png")
    print(f"synthetic val ({confusion.num_images} images), IoU %:")
    print(format_iou_table(confusion, synthetic.CLASSES))
    save_eval(cfg.run_dir / "eval.json", confusion, synthetic.CLASSES, {"weights": str(weights)})
    print(f"wrote {cfg.run_dir / 'eval.json'} and {cfg.run_dir / 'panels.png'}")
    if cfg.tensorboard is not None:   # at the last iteration's step (0-based, as losses.csv)
        iterations = snapshot_iteration(weights)
        tensorboard.log_evaluation(tensorboard.run_log_dir(cfg.tensorboard, cfg.name),
                                   iterations - 1 if iterations else 0, confusion.miou())
    return info
