"""TensorBoard logging of a training run (`--tensorboard DIR` of training/train.py, train.sh and
training/train_localization.py), through torch.utils.tensorboard; the `tensorboard` package from
PyPI is an optional dependency (`pip install tensorboard`; a clear error when it is missing).

Events go to DIR/<run name>/ (`tensorboard --logdir DIR` then compares runs). Steps are iteration
indices, 0-based as in losses.csv. Every iteration:
  loss/<name>      every loss output of the net (loss-Seed, loss-Expand, loss-Constrain, ...),
  loss/total       the weighted sum the solver minimises, loss/smoothed  Caffe's smoothed loss,
  lr               the learning rate of the iteration,
  time/iteration_s wall seconds since the previous iteration ended (or since logging began),
  time/<part>_s    forward, backward and update seconds (the solver's timings),
  test<i>/<name>   a test net's scores when the solver tested at that iteration (test_interval),
and eval/mIoU (0..1) once, at the last iteration, when the run is evaluated (synthetic set).
Every `panel_every` iterations an image `panels`: for the first PANEL_IMAGES images of the batch,
a row image | cues | prediction | CRF output (the SEC nets' blobs PANEL_BLOBS, VOC colours, cells
not seeded in white); a net without those blobs (the localization nets) logs no panels.

Only rank 0 logs under torchrun (the callers create no logger elsewhere). A resumed run appends:
the writer purges events at and after the resumed iteration (the interrupted run's tail), keeps
the rest; a new run purges every earlier event of its folder (`purge_step` 0), as --overwrite
replaced that run.
"""
import time
from pathlib import Path

import numpy as np

from sec import visualize
from sec.data import MEAN_BGR
from sec.run_folder import RunInputError

PANEL_EVERY = 50
PANEL_IMAGES = 2
# The SEC training nets' blobs (models/sec, models/synthetic): what each panel column shows.
PANEL_BLOBS = {"image": "images", "cues": "cues", "prediction": "fc8-SEC-Softmax", "crf": "fc8-SEC-CRF-log"}
UNSEEDED = 255          # palette index shown for cue cells without a seed (VOC's light "ignore" colour)
TIMING_PARTS = ("forward", "backward", "update")


class TensorBoardError(RunInputError):
    """--tensorboard cannot be used (the package is missing); the message says what to install.
    A RunInputError, so the training scripts report it as a bad flag (one line, exit 2)."""


def require():
    """torch.utils.tensorboard.SummaryWriter, or TensorBoardError naming the package to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise TensorBoardError(f"--tensorboard needs the 'tensorboard' package: pip install tensorboard "
                               f"({err})") from err
    return SummaryWriter


def summary_writer(log_dir, purge_step=None):
    return require()(log_dir=str(log_dir), purge_step=purge_step)


def run_log_dir(root, name):
    """DIR/<run name>: the folder of one run's events."""
    return Path(root) / name


class TrainingLog:
    """Scalars and panels of one run; `iteration(solver)` is a solver on_iteration_end callback."""

    def __init__(self, log_dir, resume_iter=None, panel_every=PANEL_EVERY):
        self.writer = summary_writer(log_dir, purge_step=resume_iter or 0)
        self.panel_every = panel_every
        self._tick = time.perf_counter()
        self._tested = None

    def iteration(self, solver):
        step = solver.iter - 1
        now = time.perf_counter()
        outputs = dict(solver.last_outputs)
        total = outputs.pop("loss")
        scalars = {f"loss/{name}": value for name, value in outputs.items()}
        scalars.update({"loss/total": total, "loss/smoothed": solver.smoothed_loss, "lr": solver.lr,
                        "time/iteration_s": now - self._tick})
        scalars.update({f"time/{part}_s": solver.last_timings[part] for part in TIMING_PARTS
                        if part in solver.last_timings})
        if solver.test_results and solver.test_results is not self._tested:
            self._tested = solver.test_results
            for index, scores in enumerate(solver.test_results):
                for name, values in scores.items():
                    for k, value in enumerate(values):
                        scalars[f"test{index}/{name}" + (f"/{k}" if len(values) > 1 else "")] = value
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, float(value), step)
        if self.panel_every and step % self.panel_every == 0:
            panel = training_panel(solver.net)
            if panel is not None:
                self.writer.add_image("panels", panel, step, dataformats="HWC")
        self.writer.flush()
        self._tick = time.perf_counter()

    def close(self):
        self.writer.close()


def log_evaluation(log_dir, step, miou):
    """eval/mIoU of the finished run at its last iteration, appended to its events."""
    writer = summary_writer(log_dir)
    writer.add_scalar("eval/mIoU", float(miou), step)
    writer.close()


def _nearest(mask, height, width):
    rows = np.arange(height) * mask.shape[0] // height
    cols = np.arange(width) * mask.shape[1] // width
    return mask[rows][:, cols]


def training_panel(net, count=PANEL_IMAGES):
    """HWC uint8 rows image | cues | prediction | CRF of the net's last forward (first `count`
    images of the batch), the columns PANEL_BLOBS the net has; None without images and at least
    one other column."""
    present = {column: blob for column, blob in PANEL_BLOBS.items() if blob in net.blobs}
    if "image" not in present or len(present) < 2:
        return None
    images = net.blobs[present["image"]].data          # N x 3 x H x W, BGR, mean-subtracted
    rows = []
    for index in range(min(count, images.shape[0])):
        bgr = images[index].transpose(1, 2, 0) + np.asarray(MEAN_BGR, np.float32)
        picture = np.clip(np.round(bgr[:, :, ::-1]), 0, 255).astype(np.uint8)
        height, width = picture.shape[:2]
        cells = [picture]
        for column in ("cues", "prediction", "crf"):
            if column not in present:
                continue
            maps = net.blobs[present[column]].data[index]   # L x h x w: cue indicators, probs, log-probs
            labels = maps.argmax(axis=0)
            if column == "cues":
                labels = np.where(maps.max(axis=0) > 0, labels, UNSEEDED)
            cells.append(visualize.colorize(_nearest(labels.astype(np.uint8), height, width)))
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0)
