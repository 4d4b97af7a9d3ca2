"""The GPU check (bench/gpu_check.sh runs it): what SEC does on one CUDA GPU, one row per part,
each printed as soon as it is measured (docs/gpu.md says how to read them).

1. `pytest -m cuda` (the CUDA tests; all must pass);
2. host syncs and kernel launches of one training iteration, per part (bench/gpu_budget.py:
   at most 2 syncs, fewer than 300 launches in the CRF);
3. SEC training at 321x321, batch 15 (models/sec/train.prototxt on the synthetic set), seconds per
   iteration by part (data wait, forward, each Python layer, backward, update), for fp32 with
   TF32 convolutions and for --precision bf16 (target <= 0.10 s), with peak GPU memory;
4. deploy at 375x500 with the full-resolution CRF (sec.deploy.Segmenter: net, softmax,
   upsampling, CRF in torch on the GPU, argmax; decoding excluded) on photograph-like images
   (sec.synthetic scenes), images per second (target >= 30);
5. the engine against the same net written directly in torch (bench/engine.py), DeepLab-LargeFOV
   forward + backward at 321x321, batch 15, ratio of medians (target <= 1.05).

A part that fails prints its row as FAILED (the error in one line) and the others still run; a
part that would start after --budget seconds is skipped with a row saying so. Exit status 0 when
every part ran, 1 when one failed or was skipped.

    python bench/gpu_check.py          # CUDA; about 4 minutes on one H100
    python bench/gpu_check.py --dry    # the same code on CPU at tiny sizes (CI)

--dry forces the torch twins (SEC_LAYERS=torch) so that the code the GPU runs is what runs.
"""
import argparse
import gc
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from gpu_budget import TARGET_CRF_LAUNCHES, TARGET_SYNCS, count_step, load_bench, summary  # noqa: E402

TARGET_ITERATION_S = 0.10
TARGET_DEPLOY_IMAGES_S = 30.0
TARGET_ENGINE_RATIO = 1.05
DEFAULT_BUDGET_S = 420
"""Parts start only within this many seconds (bench/gpu_check.sh stops everything at 480)."""
SEC_NET = ("models/sec/train.prototxt", "models/sec/solver.prototxt")
SYNTHETIC_NET = ("models/synthetic/train.prototxt", "models/synthetic/solver.prototxt")
FULL = SimpleNamespace(device="cuda", net=SEC_NET, size=321, batch=15, warmup=3, iters=10, deploy_shape=(375, 500),
                       deploy_images=24, deploy_batch=8, deploy_input=321, engine_size=321, engine_repeats=10,
                       layers="auto", tests=["tests"])
# --dry trains the small synthetic SEC net (same layers, same code) at 161 px: its cues are 21 x 21
DRY = SimpleNamespace(device="cpu", net=SYNTHETIC_NET, size=161, batch=2, warmup=1, iters=1, deploy_shape=(30, 40),
                      deploy_images=2, deploy_batch=2, deploy_input=33, engine_size=33, engine_repeats=2,
                      layers="torch", tests=["tests/test_nn_engine.py"])
COLUMNS = (58, 30, 10)
FAILED, SKIPPED = "FAILED", "SKIPPED"


def row(check, value="", target="", status=""):
    """Print one row of the table now (flushed: a timeout later loses nothing printed)."""
    widths = iter(COLUMNS)
    print(" ".join(str(c).ljust(next(widths, 0)) for c in (check, value, target, status)).rstrip(), flush=True)


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


def verdict(ok, dry):
    return "dry run" if dry else ("ok" if ok else "MISSED")


def cuda_tests(sizes, dry):
    """`pytest -m cuda` in a subprocess. A test module that cannot be collected (a package this
    machine lacks) is reported, not fatal: the others still run."""
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", *sizes.tests]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    summary_line = lines[-1].strip("= ") if lines else result.stderr.strip()[-200:]
    if result.returncode not in (0, 5):   # 5: nothing collected
        print(result.stdout[-4000:], result.stderr[-2000:], sep="\n", flush=True)
    if "failed" in summary_line or not re.search(r"\d+ (passed|skipped)", summary_line):
        status = "MISSED"
    else:
        status = "ok, with collection errors (above)" if "error" in summary_line else "ok"
    row("pytest -m cuda", summary_line, "all pass", "dry run" if dry else status)


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


def train_args(sizes, precision, layers=None):
    bench_train = load_bench("train")
    return bench_train, bench_train.build_parser().parse_args([
        "--device", sizes.device, "--size", str(sizes.size), "--batch", str(sizes.batch),
        "--layers", layers or sizes.layers, "--precision", precision, "--net", str(REPO / sizes.net[0]),
        "--solver", str(REPO / sizes.net[1])])


def op_counts(sizes, state, dry):
    """One counted solver step (after one warm-up step) with the torch twins."""
    bench_train, args = train_args(sizes, "fp32", layers="torch")   # SEC_LAYERS=torch while it is built
    solver = bench_train.build_solver(args, tag="gpu_check_counts")
    solver.step(1)
    counter = count_step(solver, bench_train)
    for source in solver.net.data_layers():
        source.close()
    total, crf_syncs, crf_launches, rows = summary(counter)
    state["counts"] = {part: (syncs, launches) for part, syncs, launches, _ in rows}
    row("host syncs per training iteration (torch twins)", str(total), f"<= {TARGET_SYNCS}",
        verdict(total <= TARGET_SYNCS, dry))
    row("  CRF call: syncs, launching ops", f"{crf_syncs}, {crf_launches}", f"< {TARGET_CRF_LAUNCHES}",
        verdict(crf_launches < TARGET_CRF_LAUNCHES, dry))
    for part, syncs, launches, ops in rows:
        if syncs:
            row(f"  syncs in {part}", str(syncs), "", ", ".join(f"{k} x{v}" for k, v in ops.items()))


def training(sizes, precision, state, dry):
    """bench/train.py's breakdown at the check's size; the per-part times go to state."""
    bench_train, args = train_args(sizes, precision)
    with Peak(sizes.device) as peak:
        solver = bench_train.build_solver(args, tag=f"gpu_check_{precision}")
        timer = bench_train.Timer(sizes.device)
        names = bench_train.instrument(solver.net, timer)
        trajectory = []
        rows, iteration, losses = bench_train.breakdown(solver, timer, names, sizes.iters, sizes.warmup, trajectory)
        for source in solver.net.data_layers():
            source.close()
        del solver
    if not all(np.isfinite(v) for v in losses.values()):
        raise RuntimeError(f"training losses are not finite at {precision}: {losses}")
    label = "fp32/TF32" if precision == "fp32" else "bf16"
    state.setdefault("parts", {})[precision] = rows
    state.setdefault("trajectories", {})[precision] = np.asarray(trajectory)
    row(f"{Path(sizes.net[0]).parent.name} train s/iter {label} ({sizes.size}px, batch {sizes.batch})",
        f"{iteration:.4f}", f"<= {TARGET_ITERATION_S}", verdict(iteration <= TARGET_ITERATION_S, dry))
    row(f"  peak memory, train {label}", peak.text())
    if precision == "bf16" and "fp32" in state["trajectories"]:
        # same seed, weights and batches: the loss trajectories differ by the precision alone
        fp32, bf16 = state["trajectories"]["fp32"], state["trajectories"]["bf16"]
        change = np.abs(bf16 - fp32) / np.abs(fp32)
        row(f"  bf16 vs fp32 total loss, {len(change)} iterations", f"max rel. diff {change.max():.2e}")


def part_table(state):
    """Seconds per iteration of each training part (fp32, bf16) beside its syncs and launches."""
    parts, counts = state.get("parts", {}), state.get("counts", {})
    names = [name for name, _ in (parts.get("fp32") or parts.get("bf16") or [])]
    if not names:
        return
    times = {precision: dict(rows) for precision, rows in parts.items()}
    print(flush=True)
    row("training part", "s/iter fp32/TF32, bf16", "syncs", "launches")
    for name in names:
        seconds = ", ".join(f"{times[p][name]:.4f}" if p in times else "-" for p in ("fp32", "bf16"))
        syncs, launches = counts.get(name, ("", ""))
        row(f"  {name}", seconds, str(syncs), str(launches))
    counted = {name for name in names}
    for name, (syncs, launches) in counts.items():
        if name not in counted:
            row(f"  {name} (counted only)", "", str(syncs), str(launches))
    print(flush=True)


def photo_like_images(count, height, width, seed=0):
    """RGB uint8 scenes of sec.synthetic (flat objects, textures, a cluttered background, noise):
    their bilateral lattice at scale 1 has 3,000-4,200 vertices at 375x500, as a photograph has
    thousands (the 334x500 photograph in ../shared/data: 17,331), where uniform noise has 295,252."""
    from sec import synthetic
    side = max(height, width)
    return [synthetic.render(np.random.default_rng([seed, k]), side)[0][:height, :width] for k in range(count)]


def deploy_prototxt(size, folder):
    """models/sec/deploy.prototxt with its input at size x size (the check's own copy)."""
    text = (REPO / "models" / "sec" / "deploy.prototxt").read_text()
    text, count = re.subn(r"dim: 321 dim: 321", f"dim: {size} dim: {size}", text)
    if count != 1:
        raise RuntimeError("models/sec/deploy.prototxt: input shape 'dim: 321 dim: 321' not found")
    path = Path(folder) / "deploy.prototxt"
    path.write_text(text)
    return path


def deploy(sizes, state, dry):
    """Images per second of net + softmax + upsampling + full-resolution CRF + argmax, and peak."""
    from sec import caffe, data
    from sec.deploy import Segmenter
    device = torch.device(sizes.device)
    height, width = sizes.deploy_shape
    images = photo_like_images(sizes.deploy_batch, height, width)
    inputs = np.stack([data.preprocess(image, sizes.deploy_input, sizes.deploy_input) for image in images])
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        net = caffe.Net(str(deploy_prototxt(sizes.deploy_input, folder)), caffe.TEST).to(device)
    net.eval()
    segmenter = Segmenter(net, device=sizes.device, crf=True)
    timer = load_bench("train").Timer(sizes.device)
    segmenter.masks(images, segmenter.probabilities(inputs))   # warm-up (cuDNN, the Gaussian kernel)
    with Peak(sizes.device) as peak:
        start, done = timer.now(), 0
        while done < sizes.deploy_images:
            masks = segmenter.masks(images, segmenter.probabilities(inputs))
            done += len(masks)
        seconds = timer.now() - start
    if masks[0].shape != (height, width):
        raise RuntimeError(f"deploy masks have shape {masks[0].shape}, need {(height, width)}")
    rate = done / seconds
    row(f"deploy img/s {height}x{width}, full-res CRF, photo-like", f"{rate:.1f}", f">= {TARGET_DEPLOY_IMAGES_S:g}",
        verdict(rate >= TARGET_DEPLOY_IMAGES_S, dry))
    row("  peak memory, deploy", peak.text())


def engine_ratio(sizes, state, dry):
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
    ratio = statistics.median(times["engine"]) / statistics.median(times["torch"])
    row("engine / direct torch (fwd+bwd, medians)", f"{ratio:.3f}", f"<= {TARGET_ENGINE_RATIO}",
        verdict(ratio <= TARGET_ENGINE_RATIO, dry))
    row("  peak memory, engine check", peak.text())
    for name in ("engine", "torch"):
        row(f"  {name} median s", f"{statistics.median(times[name]):.4f}")


def run_part(name, fn, started, budget):
    """Run one part; a failure or a spent budget is a row, not the end of the check. True if it ran."""
    elapsed = time.perf_counter() - started
    if budget and elapsed >= budget:
        row(name, f"not started after {elapsed:.0f} s", f"--budget {budget:g}", SKIPPED)
        return False
    try:
        fn()
        return True
    except Exception as err:  # noqa: BLE001 - every part may fail alone; the error is printed whole below
        message = " ".join(f"{type(err).__name__}: {err}".split())
        row(name, message[:200], "", FAILED)
        traceback.print_exc(file=sys.stdout)
        sys.stdout.flush()
        return False


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
          f"device {name}; TF32 convolutions {'on' if speed.tf32_enabled() else 'off'}", flush=True)
    note = caffe_resize_or_zoom()
    if note:
        print(f"note: {note}", flush=True)
    row("check", "value", "target", "status")
    state = {}
    parts = [("op counts", lambda: op_counts(sizes, state, args.dry)),
             ("train fp32", lambda: training(sizes, "fp32", state, args.dry)),
             ("train bf16", lambda: training(sizes, "bf16", state, args.dry)),
             ("per-part table", lambda: part_table(state)),
             ("deploy", lambda: deploy(sizes, state, args.dry)),
             ("engine ratio", lambda: engine_ratio(sizes, state, args.dry))]
    if not args.skip_tests:
        parts.insert(0, ("pytest -m cuda", lambda: cuda_tests(sizes, args.dry)))
    ran = [run_part(part, fn, started, args.budget) for part, fn in parts]
    print(f"\ngpu_check took {time.perf_counter() - started:.0f} s", flush=True)
    return 0 if all(ran) else 1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry", action="store_true", help="run the same code on CPU at tiny sizes")
    parser.add_argument("--skip-tests", action="store_true", help="leave out the pytest -m cuda run")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: torch's; --dry: 1, for a shared CI machine)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                        help=f"seconds after which no further part starts (default {DEFAULT_BUDGET_S}; 0: none)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
