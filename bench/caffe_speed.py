"""CPU speed of sec.caffe against BVLC Caffe 1.0 on the SEC training step, and of each against the
CPU's float32 peak. `python3 bench/caffe_reference.py --bench [flags]` runs this (as does
`python3 bench/caffe_speed.py [flags]`).

The step is the full models/sec/train.prototxt (ImageData in list order, the pylayers losses and
the dense CRF) at --size x --size, batch --batch: forward, backward and SGD update. For each
setting of --threads (default: 1 thread per engine, then every core) two workers start with the
same environment, OMP_NUM_THREADS / MKL_NUM_THREADS / OPENBLAS_NUM_THREADS (unset for "all") and
OMP_WAIT_POLICY (--omp-wait-policy, default PASSIVE: an OpenMP thread that waits sleeps instead of
spinning, which on a shared machine takes a core from the other engine or job): Caffe in its own
Python, sec.caffe in this one. They step in turn, the first of each pair alternating, so that both
see the same machine load; wall and CPU time of each step (median) and their ratio are printed.

GFLOP per step are counted from the net (step_flops: every Convolution, Deconvolution and
InnerProduct layer, 2 FLOP per multiply-add, forward plus the weight gradient plus the input
gradient where the bottom needs one; the rest of the net, CRF included, is not counted). The
float32 peak is measured in the sec.caffe worker with the same threads, before and after the steps:
the faster of a PEAK_CONV convolution (torch conv2d: oneDNN, what sec.caffe's convolutions run on)
and a PEAK_GEMM matrix product (torch.mm: MKL sgemm), best of PEAK_REPEATS. Each engine's GFLOP per
wall second is printed as a fraction of it. Caffe's OpenBLAS is Debian's pthread build: its
threads follow OPENBLAS_NUM_THREADS, and OMP_WAIT_POLICY does not apply to them.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from caffe_reference import CAFFE_PYTHON, REPO, import_caffe, solver_prototxt, write_sec_inputs

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
ALL_CORES = "all"
UNSET = "unset"
PEAK_CONV = (1, 512, 64, 64, 512, 3)     # N, C_in, H, W, C_out, kernel (pad 1): 19.3 GFLOP
PEAK_GEMM = 2048                         # n x n times n x n: 17.2 GFLOP
PEAK_REPEATS = 3
IMAGE_MEAN, IMAGE_STD = 120, 50          # synthetic bench images, uint8 after clipping
FLOP_LAYERS = ("Convolution", "Deconvolution", "InnerProduct")


# ---------------------------------------------------------------- what a step computes

def score_side(size):
    """Side of the SEC net's score map for a size x size input: Caffe's pooling output size
    through each Pooling layer of models/sec/train.prototxt (its convolutions keep the size)."""
    from sec.caffe import formats
    from sec.caffe.layers.vision_pooling import pool_out_size
    for layer in formats.read_net_prototxt(str(REPO / "models" / "sec" / "train.prototxt")).layer:
        if layer.type == "Pooling":
            p = layer.pooling_param
            size = pool_out_size(size, p.kernel_size, p.pad, p.stride, p.pad > 0)
    return size


def bench_inputs(tmp, size, count):
    """`count` synthetic size x size images, their list and a cue pickle on the score grid."""
    rng = np.random.default_rng(4)
    images = [np.clip(rng.normal(IMAGE_MEAN, IMAGE_STD, (size, size, 3)), 0, 255).astype(np.uint8)
              for _ in range(count)]
    centre = score_side(size) // 2
    cues = {}
    for index in range(count):
        cues[f"{index}_labels"] = np.array([1 + index % 20])
        cues[f"{index}_cues"] = np.array([[0, 1 + index % 20], [0, centre], [0, centre]])
    write_sec_inputs(tmp, images, cues)


def bench_prototxts(tmp, size, batch):
    """The full SEC training net (ImageData in order, batch `batch`, size x size, cues on its
    score grid) and its solver; returns the solver's path."""
    text = (REPO / "models" / "sec" / "train.prototxt").read_text()
    text = re.sub(r'source: ".*"', f'source: "{tmp}/list.txt"', text)
    text = re.sub(r'root_folder: ".*"', f'root_folder: "{tmp}/"', text)
    text = re.sub(r"batch_size: \d+", f"batch_size: {batch}", text)
    text = re.sub(r"shuffle: true", "shuffle: false", text)
    text = re.sub(r"new_(height|width): \d+", lambda m: f"new_{m.group(1)}: {size}", text)
    text = text.replace('"cues": "localization_cues.pickle"', f'"cues": "{tmp}/cues.pickle"')
    text = re.sub(r'"cue_size": \d+', f'"cue_size": {score_side(size)}', text)
    train_path = os.path.join(tmp, "bench_train.prototxt")
    Path(train_path).write_text(text)
    solver_path = os.path.join(tmp, "bench_solver.prototxt")
    Path(solver_path).write_text(solver_prototxt(train_path, os.path.join(tmp, "bench")))
    return solver_path


def step_flops(net):
    """FLOP of one training step of a sec.caffe Net (TRAIN) in its Convolution, Deconvolution and
    InnerProduct layers: forward 2 x weight count x (top count / weight.shape[0]) for Convolution
    and InnerProduct (bottom count for Deconvolution), the same again for the weight gradient of a
    learnable weight, and again for the input gradient when the bottom needs one (it comes from a
    layer with learnable parameters upstream: not the images). Returns (forward, step)."""
    learnable = {info.layer for info in net.learnable_params() if info.lr_mult != 0}
    needs_grad = {name: False for name in net.inputs}
    forward = step = 0
    for (name, kind, params), bottoms, tops in zip(net.layer_params(), net.bottom_names.values(),
                                                  net.top_names.values()):
        into = any(needs_grad.get(b, False) for b in bottoms)
        if kind in FLOP_LAYERS and params:
            weight = params[0]
            counted = net.blobs[bottoms[0] if kind == "Deconvolution" else tops[0]].count
            flops = 2 * weight.numel() * counted // weight.shape[0]
            forward += flops
            step += flops * (1 + (name in learnable) + into)
        for top in tops:
            needs_grad[top] = into or name in learnable
    return forward, step


def timed_step(solver):
    """(wall seconds, CPU seconds of this process, all threads) of one solver iteration."""
    wall, cpu = time.perf_counter(), time.process_time()
    solver.step(1)
    return time.perf_counter() - wall, time.process_time() - cpu


def float32_peak():
    """(conv GFLOP/s, GEMM GFLOP/s): best of PEAK_REPEATS of PEAK_CONV (torch conv2d, oneDNN) and
    PEAK_GEMM (torch.mm, MKL), after one warm-up each, with this process's torch threads."""
    import torch
    n, c_in, h, w, c_out, k = PEAK_CONV
    x, weight = torch.randn(n, c_in, h, w), torch.randn(c_out, c_in, k, k)
    a, b = torch.randn(PEAK_GEMM, PEAK_GEMM), torch.randn(PEAK_GEMM, PEAK_GEMM)
    conv_flop = 2 * n * c_out * c_in * k * k * h * w
    gemm_flop = 2 * PEAK_GEMM ** 3

    def best(run, flop):
        with torch.no_grad():
            run()
            times = []
            for _ in range(PEAK_REPEATS):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
        return flop / min(times) / 1e9

    return (best(lambda: torch.nn.functional.conv2d(x, weight, padding=k // 2), conv_flop),
            best(lambda: torch.mm(a, b), gemm_flop))


# ---------------------------------------------------------------- workers

def worker(args):
    """One engine's side: reports its threads, then answers 'step' (wall and CPU seconds) and,
    for sec.caffe, 'peak' (conv and GEMM GFLOP/s), one line per request on stdin."""
    if args.worker == "caffe":
        caffe = import_caffe()
        caffe.set_mode_cpu()
        solver = caffe.SGDSolver(args.solver)
        print(f"threads OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', UNSET)}", flush=True)
    else:
        sys.path.insert(0, str(REPO))
        import torch
        from sec import caffe as sec_caffe
        sec_caffe.set_mode_cpu()
        solver = sec_caffe.SGDSolver(args.solver)
        print(f"threads torch={torch.get_num_threads()} OMP_WAIT_POLICY="
              f"{os.environ.get('OMP_WAIT_POLICY', UNSET)}", flush=True)
    for line in sys.stdin:
        if line.strip() == "peak":
            print(*float32_peak(), flush=True)
        else:
            print(*timed_step(solver), flush=True)


class Worker:
    """A worker process and its request/answer lines."""

    def __init__(self, python, kind, solver_path, env):
        self.kind = kind
        self.process = subprocess.Popen([python, __file__, "--worker", kind, "--solver", solver_path], env=env,
                                        text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.threads = self._line()

    def _line(self):
        line = self.process.stdout.readline()
        if not line:
            sys.exit(f"the {self.kind} benchmark worker died; run `{' '.join(self.process.args)}` alone to see why")
        return line.strip()

    def ask(self, request):
        self.process.stdin.write(request + "\n")
        self.process.stdin.flush()
        return tuple(float(v) for v in self._line().split())

    def close(self):
        self.process.stdin.close()
        self.process.wait()


# ---------------------------------------------------------------- the benchmark

def setting_environment(threads, wait_policy):
    """os.environ for a setting: thread variables set to `threads` (removed for ALL_CORES),
    OMP_WAIT_POLICY set (removed for 'unset')."""
    env = {**os.environ, "GLOG_minloglevel": "2"}
    for name in THREAD_VARIABLES:
        env.pop(name, None)
        if threads != ALL_CORES:
            env[name] = str(threads)
    env.pop("OMP_WAIT_POLICY", None)
    if wait_policy != UNSET:
        env["OMP_WAIT_POLICY"] = wait_policy
    return env


def run_setting(args, solver_path, threads, flop):
    """Alternating steps of both engines under one setting; prints its lines."""
    env = setting_environment(threads, args.omp_wait_policy)
    load_before = os.getloadavg()[0]
    engines = [Worker(args.caffe_python, "caffe", solver_path, {**env, "PYTHONPATH": str(REPO / "pylayers")}),
               Worker(sys.executable, "sec", solver_path, env)]
    caffe_worker, sec_worker = engines
    peaks = [sec_worker.ask("peak")]
    for engine in engines:
        engine.ask("step")                      # warm-up: allocation, first batch, thread pools
    times = {"caffe": [], "sec": []}
    for index in range(args.iters):
        for engine in engines if index % 2 == 0 else engines[::-1]:
            times[engine.kind].append(engine.ask("step"))
    peaks.append(sec_worker.ask("peak"))
    for engine in engines:
        engine.close()
    peak = max(max(p) for p in peaks)
    label = "1 thread per engine" if threads == "1" else (
        "every core" if threads == ALL_CORES else f"{threads} threads per engine")
    print(f"\n{label} ({', '.join(f'{n}={env.get(n, UNSET)}' for n in THREAD_VARIABLES)}, OMP_WAIT_POLICY="
          f"{env.get('OMP_WAIT_POLICY', UNSET)}); load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after; workers: Caffe {caffe_worker.threads}, sec.caffe {sec_worker.threads}")
    conv, gemm = (max(p[i] for p in peaks) for i in range(2))
    print(f"  float32 peak {peak:.1f} GFLOP/s (conv2d {PEAK_CONV} oneDNN {conv:.1f}, {PEAK_GEMM}^3 mm MKL {gemm:.1f})")
    for index, what in enumerate(("wall", "CPU")):
        caffe_t, sec_t = [t[index] for t in times["caffe"]], [t[index] for t in times["sec"]]
        ratios = [c / s for c, s in zip(caffe_t, sec_t)]
        print(f"  {what:4s} BVLC Caffe 1.0 {np.median(caffe_t):6.2f} s, sec.caffe {np.median(sec_t):6.2f} s "
              f"(medians); Caffe / sec.caffe {np.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f})")
    rates = {kind: flop / np.median([t[0] for t in times[kind]]) / 1e9 for kind in times}
    print(f"  GFLOP/s (wall): BVLC Caffe 1.0 {rates['caffe']:.1f} = {rates['caffe'] / peak:.0%} of peak, "
          f"sec.caffe {rates['sec']:.1f} = {rates['sec'] / peak:.0%} of peak")


def bench(args):
    """Every --threads setting in turn (see the module docstring)."""
    sys.path.insert(0, str(REPO))
    from sec import caffe as sec_caffe
    settings = [s.strip() for s in args.threads.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        bench_inputs(tmp, args.size, args.batch)
        solver_path = bench_prototxts(tmp, args.size, args.batch)
        net = sec_caffe.Net(os.path.join(tmp, "bench_train.prototxt"), sec_caffe.TRAIN)
        forward, flop = step_flops(net)
        del net
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "unknown CPU")
        print(f"SEC training step (forward, backward, update), {args.batch} x 3 x {args.size} x {args.size}: "
              f"{flop / 1e9:.1f} GFLOP in convolutions and inner products ({forward / 1e9:.1f} forward); "
              f"{cpu}, {os.cpu_count()} cores; {args.iters} alternating iterations per setting after one "
              f"warm-up each")
        for threads in settings:
            run_setting(args, solver_path, threads, flop)


def thread_settings(text):
    """--threads: comma-separated positive counts or 'all'."""
    for item in text.split(","):
        item = item.strip()
        if item != ALL_CORES and not (item.isdigit() and int(item) > 0):
            raise argparse.ArgumentTypeError(f"need positive thread counts or '{ALL_CORES}', got '{item}'")
    return text


def add_arguments(parser):
    """The benchmark's flags (also those of caffe_reference.py --bench)."""
    parser.add_argument("--caffe-python", default=os.environ.get("SEC_CAFFE_PYTHON", CAFFE_PYTHON),
                        help="the Python pycaffe was built for (default $SEC_CAFFE_PYTHON or %(default)s)")
    parser.add_argument("--size", type=int, default=321, help="input side (SEC: 321)")
    parser.add_argument("--batch", type=int, default=1, help="images per iteration (SEC: 15)")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations of each engine per setting, "
                        "after one warm-up")
    parser.add_argument("--threads", type=thread_settings, default=f"1,{ALL_CORES}",
                        help="comma-separated settings: threads per engine, or 'all' (the libraries' "
                             "defaults: every core); default %(default)s")
    parser.add_argument("--omp-wait-policy", choices=("PASSIVE", "ACTIVE", UNSET), default="PASSIVE",
                        help="OMP_WAIT_POLICY of both workers (default %(default)s; 'unset' leaves the "
                             "runtime's default, which spins)")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    parser.add_argument("--worker", choices=("caffe", "sec"), help=argparse.SUPPRESS)
    parser.add_argument("--solver", help=argparse.SUPPRESS)
    return parser


def main(args):
    if args.worker:
        worker(args)
    else:
        bench(args)


if __name__ == "__main__":
    main(build_parser().parse_args())
