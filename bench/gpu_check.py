"""The GPU check (bench/gpu_check.sh runs it): one table of what SEC does on one CUDA GPU.

1. `pytest -m cuda` (the CUDA tests; all must pass);
2. SEC training at 321x321, batch 15 (models/sec/train.prototxt on the synthetic set), seconds per
   iteration split by part (data wait, forward, each Python layer, backward, update), for
   fp32 with TF32 convolutions and for --precision bf16 (target <= 0.10 s);
3. deploy at 375x500 with the full-resolution CRF (sec.deploy.Segmenter: net, softmax,
   upsampling, CRF in torch on the GPU, argmax; decoding excluded), images per second
   (target >= 30);
4. the engine against the same net written directly in torch (bench/engine.py), DeepLab-LargeFOV
   forward + backward at 321x321, batch 15, ratio of medians (target <= 1.05);
5. peak GPU memory of each part.

    python bench/gpu_check.py          # CUDA; about 3-5 minutes on one H100/H200
    python bench/gpu_check.py --dry    # the same code on CPU at tiny sizes (CI, ~1 minute)

--dry forces the torch twins (SEC_LAYERS=torch) so that the code the GPU runs is what runs.
"""
import argparse
import importlib.util
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_ITERATION_S = 0.10
TARGET_DEPLOY_IMAGES_S = 30.0
TARGET_ENGINE_RATIO = 1.05
SEC_NET = ("models/sec/train.prototxt", "models/sec/solver.prototxt")
SYNTHETIC_NET = ("models/synthetic/train.prototxt", "models/synthetic/solver.prototxt")
FULL = SimpleNamespace(device="cuda", net=SEC_NET, size=321, batch=15, warmup=3, iters=10, deploy_shape=(375, 500),
                       deploy_images=24, deploy_batch=8, deploy_input=321, engine_size=321, engine_repeats=10, layers="auto",
                       tests=["tests"])
# --dry trains the small synthetic SEC net (same layers, same code) at 161 px: its cues are 21 x 21
DRY = SimpleNamespace(device="cpu", net=SYNTHETIC_NET, size=161, batch=2, warmup=1, iters=1, deploy_shape=(30, 40),
                      deploy_images=2, deploy_batch=2, deploy_input=33, engine_size=33, engine_repeats=2, layers="torch",
                      tests=["tests/test_nn_engine.py"])


def load_bench(name):
    """A bench/ script as a module (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Peak:
    """Peak GPU memory (GiB) of a block; 'n/a' on CPU."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.gib = None

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.gib = torch.cuda.max_memory_allocated() / 2 ** 30

    def text(self):
        return "n/a (CPU)" if self.gib is None else f"{self.gib:.2f} GiB"


def cuda_tests(sizes):
    """`pytest -m cuda` in a subprocess; (summary line, status). A test module that cannot be
    collected (a package this machine lacks) is reported, not fatal: the others still run."""
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", *sizes.tests]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else result.stderr.strip()[-200:]
    if result.returncode not in (0, 5):   # 5: nothing collected
        print(result.stdout[-4000:], result.stderr[-2000:], sep="\n")
    if "failed" in summary or not re.search(r"\d+ (passed|skipped)", summary):
        return summary, "MISSED"
    return summary, "ok, with collection errors (above)" if "error" in summary else "ok"


def caffe_resize_or_zoom():
    """The training data layer resizes with OpenCV (Caffe's cv::resize); on a machine without it
    the check's data layer uses scipy's zoom instead (same sizes, timing only) and says so."""
    try:
        import cv2  # noqa: F401
        return None
    except ImportError:
        pass
    from sec import data
    data._RESIZERS["caffe"] = data._resize_zoom
    return "OpenCV (cv2) is not installed: the check's ImageData resizes with scipy zoom"


def training(sizes, precision):
    """bench/train.py's breakdown at the check's size: (rows [(part, s)], s/iteration, peak)."""
    bench_train = load_bench("train")
    args = bench_train.build_parser().parse_args([
        "--device", sizes.device, "--size", str(sizes.size), "--batch", str(sizes.batch),
        "--layers", sizes.layers, "--precision", precision, "--net", str(REPO / sizes.net[0]),
        "--solver", str(REPO / sizes.net[1])])
    with Peak(sizes.device) as peak:
        solver = bench_train.build_solver(args, tag=f"gpu_check_{precision}")
        timer = bench_train.Timer(sizes.device)
        names = bench_train.instrument(solver.net, timer)
        trajectory = []
        rows, iteration, losses = bench_train.breakdown(solver, timer, names, sizes.iters, sizes.warmup, trajectory)
        for source in solver.net.data_layers():
            source.close()
    if not all(np.isfinite(v) for v in losses.values()):
        raise RuntimeError(f"training losses are not finite at {precision}: {losses}")
    return rows, iteration, peak, np.asarray(trajectory)


def deploy_prototxt(size, folder):
    """models/sec/deploy.prototxt with its input at size x size (the check's own copy)."""
    text = (REPO / "models" / "sec" / "deploy.prototxt").read_text()
    text, count = re.subn(r"dim: 321 dim: 321", f"dim: {size} dim: {size}", text)
    if count != 1:
        raise RuntimeError("models/sec/deploy.prototxt: input shape 'dim: 321 dim: 321' not found")
    path = Path(folder) / "deploy.prototxt"
    path.write_text(text)
    return path


def deploy(sizes):
    """Images per second of net + softmax + upsampling + full-resolution CRF + argmax, and peak."""
    from sec import caffe, data
    from sec.deploy import Segmenter
    device = torch.device(sizes.device)
    rng = np.random.default_rng(0)
    height, width = sizes.deploy_shape
    images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(sizes.deploy_batch)]
    inputs = np.stack([data.preprocess(image, sizes.deploy_input, sizes.deploy_input) for image in images])
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        net = caffe.Net(str(deploy_prototxt(sizes.deploy_input, folder)), caffe.TEST).to(device)
    net.eval()
    segmenter = Segmenter(net, device=sizes.device, crf=True)
    timer = load_bench("train").Timer(sizes.device)
    segmenter.masks(images, segmenter.probabilities(inputs))   # warm-up (cuDNN, lattice sizes)
    with Peak(sizes.device) as peak:
        start, done = timer.now(), 0
        while done < sizes.deploy_images:
            masks = segmenter.masks(images, segmenter.probabilities(inputs))
            done += len(masks)
        seconds = timer.now() - start
    if masks[0].shape != (height, width):
        raise RuntimeError(f"deploy masks have shape {masks[0].shape}, need {(height, width)}")
    return done / seconds, peak


def engine_ratio(sizes):
    """Median forward+backward of the engine and of the hand-written torch net, alternating."""
    bench_engine = load_bench("engine")
    device = torch.device(sizes.device)
    with Peak(sizes.device) as peak:
        args = bench_engine.parse_args(["--device", sizes.device, "--size", str(sizes.engine_size), "--batch",
                                        str(sizes.batch), "--phase", "train"])
        from sec import caffe
        torch.manual_seed(0)
        net = caffe.Net(str(args.prototxt), caffe.TRAIN).to(device)
        model = bench_engine.LargeFOV().to(device)
        bench_engine.copy_weights(net, model)
        x = torch.randn(sizes.batch, 3, sizes.engine_size, sizes.engine_size, device=device) * 50
        weights = torch.randn(sizes.batch, bench_engine.NUM_CLASSES, 1, 1, device=device)
        steps = {"engine": lambda: bench_engine.engine_step(net, x, weights),
                 "torch": lambda: bench_engine.torch_step(model, x, weights)}
        times = {k: [] for k in steps}
        for _ in range(2):
            for step in steps.values():
                step()
        for _ in range(sizes.engine_repeats):
            for k, step in steps.items():
                times[k].append(bench_engine.timed(step, device))
    return statistics.median(times["engine"]) / statistics.median(times["torch"]), times, peak


def verdict(ok, dry):
    return "dry run" if dry else ("ok" if ok else "MISSED")


def print_table(rows):
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for k, row in enumerate(rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def main(args):
    sizes = DRY if args.dry else FULL
    if not args.dry and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device (use --dry to run the same code on CPU)", file=sys.stderr)
        return 2
    if args.dry:
        os.environ["SEC_LAYERS"] = "torch"
    if args.threads or args.dry:
        torch.set_num_threads(args.threads or 1)
    started = time.perf_counter()
    from sec.nn import speed
    speed.set_tf32(True)   # the default of every run (sec.nn.speed)
    name = torch.cuda.get_device_name() if sizes.device == "cuda" else platform.processor() or "CPU"
    print(f"gpu_check{' --dry' if args.dry else ''}: torch {torch.__version__}, Python {platform.python_version()}, "
          f"device {name}; TF32 convolutions {'on' if speed.tf32_enabled() else 'off'}")
    table = [("check", "value", "target", "status")]
    if not args.skip_tests:
        summary, status = cuda_tests(sizes)
        table.append(("pytest -m cuda", summary, "all pass", "dry run" if args.dry else status))
    note = caffe_resize_or_zoom()
    if note:
        print(f"note: {note}")
    parts, trajectories = {}, {}
    for precision in ("fp32", "bf16"):
        rows, iteration, peak, trajectories[precision] = training(sizes, precision)
        parts[precision] = rows
        label = "fp32/TF32" if precision == "fp32" else "bf16"
        table.append((f"{Path(sizes.net[0]).parent.name} train s/iter {label} ({sizes.size}px, batch {sizes.batch})",
                      f"{iteration:.4f}",
                      f"<= {TARGET_ITERATION_S}", verdict(iteration <= TARGET_ITERATION_S, args.dry)))
        table.append((f"  peak memory, train {label}", peak.text(), "", ""))
    # same seed, weights and batches: the loss trajectories differ by the precision alone
    change = np.abs(trajectories["bf16"] - trajectories["fp32"]) / np.abs(trajectories["fp32"])
    table.append((f"  bf16 vs fp32 total loss, {len(change)} iterations", f"max rel. diff {change.max():.2e}",
                  "", ""))
    rate, peak = deploy(sizes)
    table.append((f"deploy img/s {sizes.deploy_shape[0]}x{sizes.deploy_shape[1]}, full-res CRF", f"{rate:.1f}",
                  f">= {TARGET_DEPLOY_IMAGES_S:g}", verdict(rate >= TARGET_DEPLOY_IMAGES_S, args.dry)))
    table.append(("  peak memory, deploy", peak.text(), "", ""))
    ratio, times, peak = engine_ratio(sizes)   # DeepLab-LargeFOV, also in --dry (at the dry size)
    table.append(("engine / direct torch (fwd+bwd, medians)", f"{ratio:.3f}", f"<= {TARGET_ENGINE_RATIO}",
                  verdict(ratio <= TARGET_ENGINE_RATIO, args.dry)))
    table.append(("  peak memory, engine check", peak.text(), "", ""))
    for name, values in (("engine", times["engine"]), ("torch", times["torch"])):
        table.append((f"  {name} median s", f"{statistics.median(values):.4f}", "", ""))
    print()
    print_table(table)
    print()
    print_table([("training part (s/iter)", "fp32/TF32", "bf16")]
                + [(part, f"{a:.4f}", f"{b:.4f}") for (part, a), (_, b) in zip(parts["fp32"], parts["bf16"])])
    print(f"\ngpu_check took {time.perf_counter() - started:.0f} s")
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry", action="store_true", help="run the same code on CPU at tiny sizes")
    parser.add_argument("--skip-tests", action="store_true", help="leave out the pytest -m cuda run")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: torch's; --dry: 1, for a shared CI machine)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
