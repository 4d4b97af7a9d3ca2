"""Where one SEC training iteration spends its time: data, forward of the net body, each Python
layer (Softmax, CRF, the three losses, forward and backward), the rest of backward, the update.

The net is models/sec/train.prototxt (VGG16 DeepLab-LargeFOV, batch 15) fed with the synthetic
dataset; on CPU the input side is reduced (--size, default 161 -> 21x21 score maps; 321 is the
paper's) and the AnnotationLayer's cue_size follows the score-map side. Components are timed
inside the same iterations and printed as seconds and as shares of the iteration; the peer
of every line is the whole iteration measured in the same run.
Timing hooks wrap the engine's Python-layer runners (sec.caffe.pybridge.PythonLayer), so this
script knows one private detail of sec.caffe.Net: its `_layers` steps.

    python bench/train.py                       # CPU, 161x161, 3 timed iterations
    python bench/train.py --device cuda --size 321 --iters 10
"""
import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from sec.caffe import io as caffe_io  # noqa: E402
from sec.caffe.solver import NetOverrides, SGDSolver  # noqa: E402

OUTPUT_STRIDE = 8
SYNTHETIC_DIR = REPO_ROOT / "generated" / "bench_synthetic"
BENCH_TRAIN_IMAGES = 200
BENCH_VAL_IMAGES = 1


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
    return parser


class Timer:
    """Accumulates seconds per component name; synchronises CUDA around every measurement."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.seconds = defaultdict(float)

    def now(self):
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            start = self.now()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += self.now() - start
        return timed


def instrument(net, timer):
    """Time every Python layer's forward and backward runner (the rest is timed by difference)."""
    names = []
    for step in net._layers:
        if step.type == "Python":
            step.impl.run_forward = timer.wrap(f"{step.name} forward", step.impl.run_forward)
            step.impl.run_backward = timer.wrap(f"{step.name} backward", step.impl.run_backward)
            names.append(step.name)
    return names


def one_iteration(solver, source, timer):
    start = timer.now()
    images, ids = source.next_batch()
    t_data = timer.now()
    feed = {"images": torch.from_numpy(images), "ids": torch.from_numpy(ids)}
    for info in solver.params:
        info.param.grad = None
    python_before = sum(v for k, v in timer.seconds.items() if k.endswith("forward"))
    outputs = solver.net.run(feed)
    total = solver.net.total_loss(outputs)
    t_forward = timer.now()
    python_forward = sum(v for k, v in timer.seconds.items() if k.endswith("forward")) - python_before
    backward_before = sum(v for k, v in timer.seconds.items() if k.endswith("backward"))
    total.backward()
    t_backward = timer.now()
    python_backward = sum(v for k, v in timer.seconds.items() if k.endswith("backward")) - backward_before
    solver.apply_update()
    solver.iter += 1
    t_update = timer.now()
    timer.seconds["data"] += t_data - start
    timer.seconds["net forward (non-Python layers)"] += t_forward - t_data - python_forward
    timer.seconds["net backward (non-Python layers)"] += t_backward - t_forward - python_backward
    timer.seconds["update (SGD)"] += t_update - t_backward
    timer.seconds["iteration"] += t_update - start
    return {k: float(outputs[k].detach()) for k in solver.net.loss_weights}


def main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    if (args.size - 1) % OUTPUT_STRIDE:
        raise SystemExit(f"--size must be 8k+1 (161, 321, ...), got {args.size}")
    from sec import synthetic
    synthetic.generate(args.synthetic_dir, BENCH_TRAIN_IMAGES, BENCH_VAL_IMAGES, seed=0, image_size=160, cue_size=21)
    cue_side = (args.size - 1) // OUTPUT_STRIDE + 1
    overrides = NetOverrides(batch_size=args.batch, image_size=args.size,
                             source=str(args.synthetic_dir / "train.txt"),
                             root_folder=str(args.synthetic_dir / "images") + "/",
                             python_params={"AnnotationLayer": {"cues": str(args.synthetic_dir / "cues.pickle"),
                                                                "cue_size": cue_side}})
    if cue_side != 21:
        print(f"note: synthetic cues are on a 21x21 grid; cue_size {cue_side} reads them as given")
    solver = SGDSolver(args.solver, net=args.net, net_overrides=overrides, device=args.device,
                       snapshot_prefix=Path("/tmp") / "sec_bench_train" / "bench")
    source = solver.net.data_layers()[0]
    timer = Timer(args.device)
    python_layers = instrument(solver.net, timer)
    for _ in range(args.warmup):
        one_iteration(solver, source, timer)
    timer.seconds.clear()
    for _ in range(args.iters):
        losses = one_iteration(solver, source, timer)
    per_iter = {k: v / args.iters for k, v in timer.seconds.items()}
    iteration = per_iter.pop("iteration")
    print(f"SEC train net {args.net.name}, batch {args.batch}, input {args.size}x{args.size} -> "
          f"{cue_side}x{cue_side}, device {args.device}, {torch.get_num_threads()} threads, "
          f"{args.iters} iterations")
    print(f"{'component':40s} {'s/iter':>9s} {'share':>7s}")
    order = ["data", "net forward (non-Python layers)"]
    order += [f"{n} forward" for n in python_layers]
    order += ["net backward (non-Python layers)"] + [f"{n} backward" for n in python_layers] + ["update (SGD)"]
    for name in order:
        value = per_iter.get(name, 0.0)
        print(f"{name:40s} {value:9.4f} {value / iteration:7.1%}")
    print(f"{'iteration (sum of the above)':40s} {iteration:9.4f} {1:7.1%}")
    crf = per_iter.get("fc8-SEC-CRF-log forward", 0.0)
    body = per_iter.get("net forward (non-Python layers)", float("nan"))
    print(f"ratio CRF forward / net forward: {crf / body:.2f}; iterations per second: {1 / iteration:.2f}")
    print("last losses: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
