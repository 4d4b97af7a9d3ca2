"""Where one SEC training iteration spends its time: data (the ImageData layer, upload included),
forward of the net body, each Python layer (Softmax, CRF, the three losses, forward and backward),
the rest of backward, the update; and, with --compare, the engine before and after issue 14.

The net is models/sec/train.prototxt (VGG16 DeepLab-LargeFOV, batch 15) fed with the synthetic
dataset; on CPU the input side is reduced (--size, default 161 -> 21x21 score maps; 321 is the
paper's) and the AnnotationLayer's cue_size follows the score-map side. Components are timed
inside the same iterations and printed as seconds and as shares of the iteration. Timing wraps
every Python layer's step in the engine (its forward call, and autograd marks on its tops and
bottoms for its backward), so this script knows one private detail of sec.caffe.Net: `_layers`.

--layers picks the SEC layers' implementation (SEC_LAYERS: auto = torch twins on CUDA, numpy on
CPU). --compare alternates iterations of two solvers built alike in this process: "before" (every
Python layer through the numpy bridge, the engine as it was) and "after" (--layers), and prints
the median iteration time of each and the ratio after / before.

    python bench/train.py                       # CPU, 161x161, 3 timed iterations
    python bench/train.py --compare --iters 5   # CPU: the engine before vs after, same run
    python bench/train.py --device cuda --size 321 --iters 10 --precision bf16
"""
import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from sec.caffe import layers as caffe_layers  # noqa: E402
from sec.caffe.layers.sec_twins import LAYER_IMPL_ENV, LAYER_IMPLS  # noqa: E402
from sec.caffe.layers.python import PythonLayer  # noqa: E402
from sec.caffe.solver import NetOverrides, SGDSolver  # noqa: E402
from sec.nn import speed  # noqa: E402

OUTPUT_STRIDE = 8
SYNTHETIC_DIR = REPO_ROOT / "generated" / "bench_synthetic"
BENCH_TRAIN_IMAGES = 200
BENCH_VAL_IMAGES = 1
DATA = "data (ImageData, upload included)"
FORWARD_REST = "net forward (non-Python layers)"
BACKWARD_REST = "net backward (non-Python layers)"
UPDATE = "update (SGD)"


def build_parser():
    parser = argparse.ArgumentParser(description="Per-iteration time breakdown of SEC training.")
    parser.add_argument("--size", type=int, default=161, help="input side (paper: 321); 8k+1 keeps the geometry")
    parser.add_argument("--batch", type=int, default=15, help="batch size (paper: 15)")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations (after --warmup)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--net", type=Path, default=REPO_ROOT / "models" / "sec" / "train.prototxt",
                        help="train net prototxt")
    parser.add_argument("--solver", type=Path, default=REPO_ROOT / "models" / "sec" / "solver.prototxt",
                        help="solver prototxt")
    parser.add_argument("--synthetic-dir", type=Path, default=SYNTHETIC_DIR,
                        help="synthetic dataset (generated when absent)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--layers", choices=LAYER_IMPLS, default="auto",
                        help="SEC layers: auto (torch twins on CUDA, numpy on CPU), numpy or torch")
    parser.add_argument("--precision", choices=speed.PRECISIONS, default="fp32", help="bf16: autocast of the net body")
    parser.add_argument("--no-tf32", dest="tf32", action="store_false", help="IEEE float32 convolutions on CUDA")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    parser.add_argument("--compare", action="store_true",
                        help="alternate the engine before issue 14 (numpy bridge only) and after (--layers)")
    return parser


class Timer:
    """Accumulates seconds per component name; synchronises CUDA around every measurement."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.seconds = defaultdict(float)
        self.started = {}

    def now(self):
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def python_total(self, suffix):
        return sum(v for k, v in self.seconds.items() if k.endswith(suffix) and k != DATA)


class _Mark(torch.autograd.Function):
    """Identity whose backward calls `callback` (when the gradient reaches these tensors)."""

    @staticmethod
    def forward(ctx, callback, *tensors):
        ctx.callback = callback
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads):
        ctx.callback()
        return (None, *grads)


def _marked(tensors, callback):
    """`tensors` with the ones that need a gradient passed through a _Mark."""
    indices = [i for i, t in enumerate(tensors) if torch.is_tensor(t) and t.requires_grad]
    if not indices or not torch.is_grad_enabled():
        return list(tensors), False
    out = list(tensors)
    for i, t in zip(indices, _Mark.apply(callback, *[tensors[i] for i in indices])):
        out[i] = t
    return out, True


def timed_step(name, fn, timer):
    """The step function `fn`, timing its forward call and (through marks) its backward."""
    def begin():
        timer.started[name] = timer.now()

    def end():
        if name in timer.started:
            timer.seconds[f"{name} backward"] += timer.now() - timer.started.pop(name)

    def step(*bottoms):
        start = timer.now()
        bottoms, marked = _marked(bottoms, end)
        tops = fn(*bottoms)
        timer.seconds[f"{name} forward" if name != DATA else DATA] += timer.now() - start
        return tuple(_marked(list(tops), begin)[0]) if marked else tops
    return step


def instrument(net, timer):
    """Time the data layer and every Python layer (the rest is timed by difference)."""
    names = []
    for step in net._layers:
        if step.kind == "data":
            step.fn = timed_step(DATA, step.fn, timer)
        elif step.type == "Python":
            step.fn = timed_step(step.name, step.fn, timer)
            names.append(step.name)
    return names


def one_iteration(solver, timer):
    """One SGD iteration, the net reading its own batch; adds its parts to timer.seconds."""
    start = timer.now()
    for info in solver.params:
        info.param.grad = None
    before = timer.python_total("forward") + timer.seconds[DATA]
    outputs = solver.net.run()
    total = solver.net.total_loss(outputs)
    t_forward = timer.now()
    backward_before = timer.python_total("backward")
    total.backward()
    t_backward = timer.now()
    solver.apply_update()
    solver.iter += 1
    t_update = timer.now()
    timer.seconds[FORWARD_REST] += t_forward - start - (timer.python_total("forward") + timer.seconds[DATA] - before)
    timer.seconds[BACKWARD_REST] += t_backward - t_forward - (timer.python_total("backward") - backward_before)
    timer.seconds[UPDATE] += t_update - t_backward
    timer.seconds["iteration"] += t_update - start
    return {k: float(outputs[k].detach()) for k in solver.net.loss_weights}


@contextmanager
def engine_variant(layers, bridge_only=False):
    """SEC_LAYERS=layers while building; bridge_only: every Python layer through the numpy bridge
    (the engine's mapping before the torch twins)."""
    saved_env, saved_type = os.environ.get(LAYER_IMPL_ENV), caffe_layers.LAYER_TYPES["Python"]
    os.environ[LAYER_IMPL_ENV] = layers
    if bridge_only:
        caffe_layers.LAYER_TYPES["Python"] = PythonLayer
    try:
        yield
    finally:
        caffe_layers.LAYER_TYPES["Python"] = saved_type
        if saved_env is None:
            os.environ.pop(LAYER_IMPL_ENV, None)
        else:
            os.environ[LAYER_IMPL_ENV] = saved_env


def build_solver(args, tag="bench", bridge_only=False, seed=0):
    """The SEC solver on the synthetic set at args.size / args.batch, with the speed options."""
    from sec import synthetic
    synthetic.generate(args.synthetic_dir, BENCH_TRAIN_IMAGES, BENCH_VAL_IMAGES, seed=0, image_size=160, cue_size=21)
    cue_side = (args.size - 1) // OUTPUT_STRIDE + 1
    overrides = NetOverrides(batch_size=args.batch, image_size=args.size,
                             source=str(args.synthetic_dir / "train.txt"),
                             root_folder=str(args.synthetic_dir / "images") + "/",
                             python_params={"AnnotationLayer": {"cues": str(args.synthetic_dir / "cues.pickle"),
                                                                "cue_size": cue_side}})
    with engine_variant(args.layers, bridge_only):
        factory = speed.net_factory(args.precision, args.tf32, args.channels_last)
        return SGDSolver(args.solver, net=args.net, net_overrides=overrides, device=args.device,
                         snapshot_prefix=Path("/tmp") / "sec_bench_train" / tag, net_factory=factory,
                         random_seed=seed)


def breakdown(solver, timer, python_layers, iters, warmup, trajectory=None):
    """Per-iteration seconds of every part, in the order of an iteration, and the last losses;
    appends each iteration's summed loss (warm-up included) to `trajectory` when given."""
    trajectory = [] if trajectory is None else trajectory
    for _ in range(warmup):
        trajectory.append(sum(one_iteration(solver, timer).values()))
    timer.seconds.clear()
    for _ in range(iters):
        losses = one_iteration(solver, timer)
        trajectory.append(sum(losses.values()))
    per_iter = {k: v / iters for k, v in timer.seconds.items()}
    order = [DATA, FORWARD_REST] + [f"{n} forward" for n in python_layers]
    order += [BACKWARD_REST] + [f"{n} backward" for n in python_layers] + [UPDATE]
    rows = [(name, per_iter.get(name, 0.0)) for name in order]
    return rows, per_iter["iteration"], losses


def compare(args):
    """Alternate iterations of the engine before (bridge only) and after; medians and ratio."""
    solvers = {"before": build_solver(args, "before", bridge_only=True), "after": build_solver(args, "after")}
    times = {k: [] for k in solvers}
    timers = {k: Timer(args.device) for k in solvers}
    for k in solvers:
        instrument(solvers[k].net, timers[k])
        for _ in range(args.warmup):
            one_iteration(solvers[k], timers[k])
        timers[k].seconds.clear()
    for _ in range(args.iters):
        for k, solver in solvers.items():
            start = timers[k].now()
            one_iteration(solver, timers[k])
            times[k].append(timers[k].now() - start)
    before, after = (statistics.median(times[k]) for k in ("before", "after"))
    print(f"engine before (numpy bridge) vs after (--layers {args.layers}), {args.device}, "
          f"{args.size}x{args.size}, batch {args.batch}, {args.iters} alternating iterations each")
    for k in solvers:
        print(f"{k:7s} median {statistics.median(times[k]):8.4f} s/iter  (all: "
              + ", ".join(f"{t:.3f}" for t in times[k]) + ")")
    print(f"ratio after / before: {after / before:.3f}")
    layers = {k: (timers[k].python_total("forward") + timers[k].python_total("backward")) / args.iters
              for k in solvers}
    print(f"Python layers (forward + backward) s/iter: before {layers['before']:.4f}, after {layers['after']:.4f}, "
          f"ratio {layers['after'] / layers['before']:.3f}")
    return 0


def main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    if (args.size - 1) % OUTPUT_STRIDE:
        raise SystemExit(f"--size must be 8k+1 (161, 321, ...), got {args.size}")
    if args.compare:
        return compare(args)
    solver = build_solver(args)
    timer = Timer(args.device)
    python_layers = instrument(solver.net, timer)
    rows, iteration, losses = breakdown(solver, timer, python_layers, args.iters, args.warmup)
    cue_side = (args.size - 1) // OUTPUT_STRIDE + 1
    print(f"SEC train net {args.net.name}, batch {args.batch}, input {args.size}x{args.size} -> "
          f"{cue_side}x{cue_side}, device {args.device}, layers {args.layers}, precision {args.precision}, "
          f"{torch.get_num_threads()} threads, {args.iters} iterations")
    print(f"{'component':40s} {'s/iter':>9s} {'share':>7s}")
    for name, value in rows:
        print(f"{name:40s} {value:9.4f} {value / iteration:7.1%}")
    print(f"{'iteration (sum of the above)':40s} {iteration:9.4f} {1:7.1%}")
    crf = dict(rows).get("fc8-SEC-CRF-log forward", 0.0)
    body = dict(rows).get(FORWARD_REST, float("nan"))
    print(f"ratio CRF forward / net forward: {crf / body:.2f}; iterations per second: {1 / iteration:.2f}")
    print("last losses: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
