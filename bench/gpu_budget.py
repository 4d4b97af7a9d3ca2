"""Host synchronisations and kernel launches of one SEC training iteration, per part.

One `solver.step(1)` of the SEC train net with the torch twins (SEC_LAYERS=torch), counted by
sec.nn.opcount.OpCounter: the data layer, the net body's forward, each Python layer's forward
(the CRF's among them), and the rest of the step (backward, update, the solver's loss read).
On CPU the code takes the path it takes on CUDA, so the counts are the GPU's (see
sec/nn/opcount.py for what is counted and its limits). Targets (issue 21): at most 2 syncs per
iteration, fewer than 300 launching operations in the CRF.

--narrow replaces the VGG body of models/sec/train.prototxt by a stride-8 average pooling and
fc8-SEC (3 -> 21 channels, 1x1), so that 321 x 321, batch 15 runs in seconds on a CPU: the data
layer, the SEC layers and the solver are the paper's; the body's own launches are left out.

    python bench/gpu_budget.py --narrow                  # CPU, 321 x 321, batch 15
    python bench/gpu_budget.py --device cuda             # the whole net on a GPU
"""
import argparse
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sec.nn.opcount import OpCounter  # noqa: E402

TARGET_SYNCS = 2
TARGET_CRF_LAUNCHES = 300
CRF_LAYER = "fc8-SEC-CRF-log"
REST = "rest of the step (backward, update, loss read)"
OUTPUT_STRIDE = 8
BODY_START, BODY_END = "conv1_1", "fc8-SEC"
NARROW_BODY = """
layer {{ name: "body" type: "Pooling" bottom: "images" top: "body"
  pooling_param {{ pool: AVE kernel_size: {stride} stride: {stride} }} }}
layer {{ name: "fc8-SEC" type: "Convolution" bottom: "body" top: "fc8-SEC"
  param {{ lr_mult: 10 decay_mult: 1 }} param {{ lr_mult: 20 decay_mult: 0 }}
  convolution_param {{ num_output: 21 kernel_size: 1 weight_filler {{ type: "gaussian" std: 0.01 }}
    bias_filler {{ type: "constant" value: 0 }} }} }}
"""


def load_bench(name):
    """A bench/ script as a module (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def narrowed_net(path):
    """models/sec/train.prototxt with conv1_1..fc8-SEC replaced by NARROW_BODY, written to ``path``."""
    from google.protobuf import text_format

    from sec.proto import caffe_pb2
    net = text_format.Parse((REPO / "models" / "sec" / "train.prototxt").read_text(), caffe_pb2.NetParameter())
    names = [layer.name for layer in net.layer]
    start, end = names.index(BODY_START), names.index(BODY_END)
    body = text_format.Parse(NARROW_BODY.format(stride=OUTPUT_STRIDE), caffe_pb2.NetParameter())
    layers = list(net.layer[:start]) + list(body.layer) + list(net.layer[end + 1:])
    del net.layer[:]
    net.layer.extend(layers)
    Path(path).write_text(text_format.MessageToString(net))
    return Path(path)


def _in_part(counter, part, fn):
    def step(*bottoms):
        with counter.part(part):
            return fn(*bottoms)
    return step


def count_step(solver, names):
    """OpCounter of one solver.step(1); ``names`` is bench/train.py's module (its part names)."""
    counter = OpCounter()
    saved = []
    for step in solver.net._layers:
        if step.kind == "data":
            part = names.DATA
        elif step.type == "Python":
            part = f"{step.name} forward"
        else:
            part = names.FORWARD_REST
        saved.append((step, step.fn))
        step.fn = _in_part(counter, part, step.fn)
    try:
        with counter, counter.part(REST):
            solver.step(1)
    finally:
        for step, fn in saved:
            step.fn = fn
    return counter


def counted_solver(args, tag="gpu_budget"):
    """bench/train.py's solver at args.size / args.batch with the torch twins (SEC_LAYERS=torch while
    the net is built), one step taken (the Gaussian kernel, the cue tables and the display iteration
    done), and its module."""
    bench_train = load_bench("train")
    train_args = bench_train.build_parser().parse_args([
        "--device", args.device, "--size", str(args.size), "--batch", str(args.batch), "--layers", "torch",
        "--net", str(args.net), "--solver", str(args.solver), "--synthetic-dir", str(args.synthetic_dir)])
    solver = bench_train.build_solver(train_args, tag=tag)
    solver.step(1)
    return solver, bench_train


def summary(counter):
    """(total syncs, CRF syncs, CRF launches, rows [(part, syncs, launches, sync ops)])."""
    parts = sorted(set(counter.syncs) | set(counter.launches))
    rows = [(p, counter.syncs[p], counter.launches[p], dict(counter.sync_ops[p])) for p in parts]
    crf = f"{CRF_LAYER} forward"
    return counter.total("syncs"), counter.syncs[crf], counter.launches[crf], rows


def main(args):
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.narrow:
        args.synthetic_dir.mkdir(parents=True, exist_ok=True)
        args.net = narrowed_net(args.synthetic_dir / "narrow_train.prototxt")
    solver, names = counted_solver(args)
    counter = count_step(solver, names)
    for source in solver.net.data_layers():
        source.close()
    total, crf_syncs, crf_launches, rows = summary(counter)
    print(f"one SEC training iteration, {args.size}x{args.size}, batch {args.batch}, {args.device}, torch twins"
          f"{', narrowed body' if args.narrow else ''}")
    print(f"{'part':52s} {'syncs':>5s} {'launches':>8s}  sync ops")
    for part, syncs, launches, ops in rows:
        print(f"{part:52s} {syncs:5d} {launches:8d}  {ops or ''}")
    print(f"syncs per iteration: {total} (target <= {TARGET_SYNCS}); CRF call: {crf_syncs} syncs, "
          f"{crf_launches} launches (target < {TARGET_CRF_LAUNCHES})")
    return 0 if total <= TARGET_SYNCS and crf_launches < TARGET_CRF_LAUNCHES else 1


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=321, help="input side (paper: 321)")
    parser.add_argument("--batch", type=int, default=15, help="batch size (paper: 15)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--narrow", action="store_true",
                        help="replace the VGG body by a pooling and fc8 (seconds on a CPU; see the module doc)")
    parser.add_argument("--net", type=Path, default=REPO / "models" / "sec" / "train.prototxt",
                        help="train net prototxt (ignored with --narrow)")
    parser.add_argument("--solver", type=Path, default=REPO / "models" / "sec" / "solver.prototxt",
                        help="solver prototxt")
    parser.add_argument("--synthetic-dir", type=Path, default=REPO / "generated" / "bench_synthetic",
                        help="synthetic dataset (generated when absent)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return parser


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
