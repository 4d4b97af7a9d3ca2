"""Caffe's process-wide state, as pycaffe's `_caffe` module exposes it: mode and device, the random
seed, the multi-GPU solver count and rank, logging, `Timer`, `NCCL`, the layer catalogue.

* `set_mode_cpu()` / `set_mode_gpu()` / `set_device(i)`: where nets built from then on live
  (`mode_device()`); set_mode_gpu raises when torch sees no CUDA device.
* `set_random_seed(seed)`: Caffe seeds its one generator (fillers, Dropout, shuffling); here that is
  torch's generator on every device (`torch.manual_seed`), which the engine's fillers and Dropout use.
* `set_solver_count` / `solver_count` / `set_solver_rank` / `solver_rank` / `set_multiprocess`: the
  numbers pycaffe's multi-GPU scripts set, kept for whoever asks (Caffe's data layers and solvers read
  them); the engine's own data parallelism is torch.distributed's (see sec.caffe.solver).
* `has_nccl()` is False and `NCCL` is the class of a Caffe built without NCCL (no `new_uid`): pycaffe's
  NCCL drives one Caffe solver per GPU through NCCL's C API, while this engine's multi-GPU training is
  torch.distributed, which the solver uses directly; nothing here would make a pycaffe NCCL script run.
* `init_log(level=0, stderr=False)` / `log(message)`: glog's severity levels (0 INFO, 1 WARNING,
  2 ERROR, 3 FATAL) on the engine's `sec` logger, written to stderr in glog's line format.
"""
import logging
import os
import sys
import time

import torch

__version__ = "1.0.0"
"""pycaffe's `caffe.__version__`: the Caffe release this engine follows (BVLC Caffe 1.0, 9b89154)."""

LOGGER = "sec"
GLOG_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.CRITICAL}
"""glog severity (FLAGS_minloglevel) -> the logging level of the same name."""

_STATE = {"device": "cpu", "index": 0, "solver_count": 1, "solver_rank": 0, "multiprocess": False}


def set_mode_cpu():
    """Nets built from now on live on the CPU."""
    _STATE["device"] = "cpu"


def set_mode_gpu():
    """Nets built from now on live on CUDA device `set_device(i)` (default 0)."""
    if not torch.cuda.is_available():
        raise RuntimeError("set_mode_gpu: CUDA is not available (torch.cuda.is_available() is False)")
    _STATE["device"] = "cuda"


def set_device(index):
    """The CUDA device used by set_mode_gpu."""
    _STATE["index"] = int(index)
    if torch.cuda.is_available():
        torch.cuda.set_device(_STATE["index"])


def mode_device():
    """The torch.device of the current mode."""
    if _STATE["device"] == "cuda":
        return torch.device("cuda", _STATE["index"])
    return torch.device("cpu")


def set_random_seed(seed):
    """Seed the engine's generator (torch's, every device): fillers and Dropout masks repeat."""
    torch.manual_seed(int(seed))


def solver_count():
    return _STATE["solver_count"]


def set_solver_count(count):
    _STATE["solver_count"] = int(count)


def solver_rank():
    return _STATE["solver_rank"]


def set_solver_rank(rank):
    _STATE["solver_rank"] = int(rank)


def set_multiprocess(multiprocess):
    _STATE["multiprocess"] = bool(multiprocess)


def multiprocess():
    return _STATE["multiprocess"]


def has_nccl():
    """False: see the module docstring (multi-GPU training here is torch.distributed's)."""
    return False


class NCCL:
    """pycaffe's NCCL as a Caffe built without NCCL has it: constructible, with no methods."""

    def __init__(self, solver, uid):
        self.solver = solver
        self.uid = uid


def layer_type_list():
    """The layer types a prototxt may name, sorted (Caffe's registry is a sorted std::map)."""
    from sec.caffe.layers import LAYER_TYPES
    return sorted(LAYER_TYPES)


class _GlogFormatter(logging.Formatter):
    """glog's line: `I1207 05:42:46.123456 12345 file.py:12] message`."""

    def format(self, record):
        letter = record.levelname[0] if record.levelname != "CRITICAL" else "F"
        stamp = time.strftime("%m%d %H:%M:%S", time.localtime(record.created))
        micros = int((record.created % 1) * 1e6)
        return (f"{letter}{stamp}.{micros:06d} {os.getpid()} {record.filename}:{record.lineno}] "
                f"{record.getMessage()}")


def init_log(level=0, stderr=False):
    """Caffe's InitLog(level, stderr): messages of glog severity >= `level` from the engine go to
    stderr in glog's format. (glog would also write files under /tmp unless `stderr`; here stderr is
    the one destination either way.)"""
    if level not in GLOG_LEVELS:
        raise ValueError(f"init_log: level must be one of {sorted(GLOG_LEVELS)} (glog's INFO..FATAL), got {level!r}")
    logger = logging.getLogger(LOGGER)
    logger.setLevel(GLOG_LEVELS[level])
    if not any(isinstance(h.formatter, _GlogFormatter) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_GlogFormatter())
        logger.addHandler(handler)


def log(message):
    """Caffe's LOG(INFO) << message."""
    logging.getLogger(LOGGER).info("%s", message)


class Timer:
    """Caffe's Timer: start(), stop(), `ms` (elapsed milliseconds of the last start..stop; reading it
    stops a running timer; 0 with a warning before the first start). In GPU mode the device is
    synchronised at start and stop, so the time covers the queued CUDA work."""

    def __init__(self):
        self._start = self._stop = None
        self._running = False

    def _now(self):
        if _STATE["device"] == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def start(self):
        if not self._running:
            self._start = self._now()
            self._running = True

    def stop(self):
        if self._running:
            self._stop = self._now()
            self._running = False

    @property
    def ms(self):
        if self._start is None:
            logging.getLogger(__name__).warning("Timer has never been run before reading time.")
            return 0.0
        self.stop()
        return (self._stop - self._start) * 1000.0
