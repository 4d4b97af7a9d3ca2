"""What the parts of the GPU check (bench/gpu_check.py, bench/gpu_check_features.py) share: the
table they print, peak GPU memory, TF32 switched off for a comparison, and a prototxt copied at
another input size."""
import contextlib
import gc
import re
from pathlib import Path

import torch

COLUMNS = (58, 30, 10)
MISSED = "MISSED"


def row(check, value="", target="", status=""):
    """Print one row of the table now (flushed: a timeout later loses nothing printed)."""
    widths = iter(COLUMNS)
    print(" ".join(str(c).ljust(next(widths, 0)) for c in (check, value, target, status)).rstrip(), flush=True)


def verdict(ok, dry):
    """Status of a speed target: CPU numbers of a dry run are not judged."""
    return "dry run" if dry else ("ok" if ok else MISSED)


def agreement(ok, dry):
    """Status of a correctness target (outputs that must agree, files that must be there): judged
    in a dry run too, where both sides run on the CPU and must agree all the more."""
    return verdict(True, dry) if ok else MISSED


class Peak:
    """Peak GPU memory (GiB) of a block, counted from a collected heap; 'n/a' on CPU.

    gc.collect() first: a net is held in a reference cycle (Net -> step -> ctx -> Net) until the
    collector runs, so the previous part's net would otherwise count in this part's peak."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.gib = None

    def __enter__(self):
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.gib = torch.cuda.max_memory_allocated() / 2 ** 30

    def text(self):
        return "n/a (CPU)" if self.gib is None else f"{self.gib:.2f} GiB"


@contextlib.contextmanager
def ieee_float32():
    """IEEE float32 cuDNN convolutions inside the block, for a CUDA-vs-CPU comparison that tests
    the code and not TF32 (as the tests' ieee_float32 fixture); the setting is restored after."""
    from sec.nn import speed
    saved = speed.tf32_enabled()
    speed.set_tf32(False)
    try:
        yield
    finally:
        speed.set_tf32(saved)


def input_sized(prototxt, side, folder):
    """A copy of `prototxt` in `folder` whose Input layer takes side x side images (its declared
    square size, 'dim: S dim: S', replaced)."""
    text = Path(prototxt).read_text()
    text, count = re.subn(r"dim: (\d+) dim: \1\b", f"dim: {side} dim: {side}", text)
    if count != 1:
        raise RuntimeError(f"{prototxt}: found {count} square input shapes 'dim: S dim: S', need exactly 1")
    path = Path(folder) / Path(prototxt).name
    path.write_text(text)
    return path
