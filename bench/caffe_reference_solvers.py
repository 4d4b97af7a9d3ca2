"""The solver part of bench/caffe_reference.py: the six solvers and seven lr policies of the real
BVLC Caffe, five iterations each, on a tiny net (Input -> Convolution -> BatchNorm -> Scale -> TanH ->
InnerProduct -> SoftmaxWithLoss, per-blob lr_mult / decay_mult, a fixed batch; no bias before the
BatchNorm, whose gradient would be rounding noise that AdaGrad, RMSProp and Adam amplify to +-lr), written to
tests/fixtures/caffe/solvers.json + .npz:

    /opt/caffe/venv/bin/python bench/caffe_reference.py --only solvers

Each case runs in its own process of Caffe's Python (glog at INFO on stderr, so that Caffe's own
log lines are kept: smoothed loss, lr, clipping, multistep, test net outputs). Per iteration it
records, through pycaffe's callbacks, the weights before the iteration (on_start) and the
accumulated gradient (on_gradients_ready), and from the snapshot Caffe writes after every iteration
the history and current_step. The HDF5 case keeps Caffe's last .caffemodel.h5 / .solverstate.h5,
the snapshot_diff case Caffe's last .caffemodel with diffs.

tests/test_caffe_solvers_reference.py replays every update on Caffe's gradient and runs the five
iterations free, comparing with these records; with the project's Python

    python3 bench/caffe_reference_solvers.py --agreement

prints the worst relative error of each case (the rows of docs/caffe/solvers.md).
"""
import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

ITERATIONS = 5
BATCH_SHAPE = (2, 3, 4, 4)
LABELS = (0, 2)
NET = """name: "solvernet"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } shape { dim: 2 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 bias_term: false } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" param { lr_mult: 1 decay_mult: 1 }
        param { lr_mult: 2 decay_mult: 0 } scale_param { bias_term: true } }
layer { name: "tanh" type: "TanH" bottom: "conv" top: "conv" }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "score" param { lr_mult: 0.5 }
        param { lr_mult: 1 decay_mult: 0.5 } inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "score" bottom: "label" top: "accuracy" include { phase: TEST } }
"""
COMMON = {"base_lr": 0.05, "weight_decay": 0.01, "display": 1, "snapshot": 1, "max_iter": ITERATIONS,
          "lr_policy": '"fixed"'}
# name: solver fields over COMMON. Every solver, every lr policy, and the options that change the update.
CASES = {
    "sgd_fixed": {"momentum": 0.9},
    "sgd_step": {"momentum": 0.9, "lr_policy": '"step"', "gamma": 0.5, "stepsize": 2},
    "sgd_exp": {"momentum": 0.9, "lr_policy": '"exp"', "gamma": 0.8},
    "sgd_inv": {"momentum": 0.9, "lr_policy": '"inv"', "gamma": 0.1, "power": 0.75},
    "sgd_multistep": {"momentum": 0.9, "lr_policy": '"multistep"', "gamma": 0.5, "stepvalue": [1, 3]},
    "sgd_multistep_repeated": {"momentum": 0.9, "lr_policy": '"multistep"', "gamma": 0.5, "stepvalue": [1, 1, 1, 3]},
    "sgd_poly": {"momentum": 0.9, "lr_policy": '"poly"', "power": 2.0},
    "sgd_sigmoid": {"momentum": 0.9, "lr_policy": '"sigmoid"', "gamma": 0.5, "stepsize": 2},
    "sgd_clip": {"momentum": 0.9, "clip_gradients": 0.05},
    "sgd_l1": {"momentum": 0.9, "regularization_type": '"L1"', "weight_decay": 0.05},
    "sgd_iter_size": {"momentum": 0.9, "iter_size": 2},
    "sgd_average_loss": {"momentum": 0.9, "average_loss": 3},
    "sgd_snapshot_diff": {"momentum": 0.9, "snapshot_diff": "true"},
    "legacy_solver_type": {"momentum": 0.9, "solver_type": "NESTEROV"},
    "sgd_test_nets": {"momentum": 0.9, "test_iter": 2, "test_interval": 2, "test_compute_loss": "true"},
    "nesterov": {"type": '"Nesterov"', "momentum": 0.9, "lr_policy": '"step"', "gamma": 0.5, "stepsize": 2},
    "adagrad": {"type": '"AdaGrad"', "lr_policy": '"inv"', "gamma": 0.1, "power": 0.75, "delta": 1e-6},
    "rmsprop": {"type": '"RMSProp"', "rms_decay": 0.9, "lr_policy": '"poly"', "power": 1.0, "delta": 1e-6},
    "adadelta": {"type": '"AdaDelta"', "base_lr": 1.0, "momentum": 0.95, "delta": 1e-6,
                 "lr_policy": '"multistep"', "gamma": 0.5, "stepvalue": [2]},
    "adam": {"type": '"Adam"', "base_lr": 0.01, "momentum": 0.9, "momentum2": 0.999, "lr_policy": '"exp"',
             "gamma": 0.9},
    "adam_hdf5": {"type": '"Adam"', "base_lr": 0.01, "momentum": 0.9, "momentum2": 0.999,
                  "snapshot_format": "HDF5"},
}
GLOG_LINE = re.compile(r"^[IWEF]\d{4,8} [\d:.]+\s+\d+ (\w+)\.cpp:\d+\] (.*)$")
KEPT_SOURCES = ("solver", "sgd_solver")


def solver_text(fields, net_path, prefix):
    """The solver prototxt of a case (net and snapshot prefix given as paths)."""
    lines = [f'net: "{net_path}"', f'snapshot_prefix: "{prefix}"', "solver_mode: CPU"]
    for key, value in {**COMMON, **fields}.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{key}: {item}")
    return "\n".join(lines) + "\n"


def batch():
    rng = np.random.default_rng(5)
    return rng.standard_normal(BATCH_SHAPE).astype(np.float32), np.array(LABELS, np.float32)


def write_solvers(caffe, tmp, store, files, caffe_version):
    """Run every case in its own Caffe process; returns the manifest of solvers.json. Float arrays
    go to `store` (caffe_reference.Store), files Caffe wrote to `files` ({key: uint8 array})."""
    net_path = Path(tmp, "net.prototxt")
    net_path.write_text(NET)
    net = caffe.Net(str(net_path), caffe.TRAIN)
    rng = np.random.default_rng(6)
    for name, blobs in net.params.items():
        if name == "bn":
            continue
        for blob in blobs:
            shape = blob.data.shape
            scale = np.sqrt(2.0 / np.prod(shape[1:])) if len(shape) > 1 else 0.5
            blob.data[...] = rng.standard_normal(shape) * scale
    init = Path(tmp, "init.caffemodel")
    net.save(str(init))
    data, labels = batch()
    np.savez(Path(tmp, "batch.npz"), data=data, label=labels)
    cases = {}
    for name, fields in CASES.items():
        folder = Path(tmp, name)
        folder.mkdir()
        Path(folder, "solver.prototxt").write_text(solver_text(fields, net_path, folder / "snap"))
        env = {**os.environ, "GLOG_minloglevel": "0", "GLOG_logtostderr": "1"}
        run = subprocess.run([sys.executable, __file__, "--case", str(folder), "--init", str(init),
                              "--batch", str(Path(tmp, "batch.npz"))], env=env, capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"solver case {name} failed in Caffe:\n{run.stderr[-3000:]}")
        record = json.loads(Path(folder, "record.json").read_text())
        with np.load(Path(folder, "record.npz")) as arrays:
            record["arrays"] = {key: store.add(arrays[key]) for key in arrays.files}
        record["log"] = [match.group(2) for match in map(GLOG_LINE.match, run.stderr.splitlines())
                         if match and match.group(1) in KEPT_SOURCES]
        record["solver_prototxt"] = solver_text(fields, "@NET@", "@PREFIX@")
        for suffix in ("caffemodel.h5", "solverstate.h5", "caffemodel"):
            kept = Path(folder, f"snap_iter_{ITERATIONS}.{suffix}")
            if kept.is_file() and (suffix.endswith(".h5") or "snapshot_diff" in fields):
                key = f"{name}/{suffix}"
                files[key] = np.frombuffer(kept.read_bytes(), dtype=np.uint8)
                record.setdefault("files", {})[suffix] = key
        cases[name] = record
    files["init.caffemodel"] = np.frombuffer(init.read_bytes(), dtype=np.uint8)
    return {"caffe": caffe_version, "net": NET, "iterations": ITERATIONS, "init_caffemodel": "init.caffemodel",
            "data": store.add(data), "label": store.add(labels), "cases": cases}


def run_case(folder, init, batch_path):
    """Inside one Caffe process: five iterations of the case in `folder`, recorded (see module doc)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pylayers"))
    import caffe
    from caffe.proto import caffe_pb2
    caffe.set_mode_cpu()
    solver = caffe.get_solver(str(Path(folder, "solver.prototxt")))
    arrays = np.load(batch_path)
    for net in [solver.net] + list(solver.test_nets):
        net.copy_from(init)
        net.blobs["data"].data[...] = arrays["data"]
        net.blobs["label"].data[...] = arrays["label"]
    record, saved = {"type": type(solver).__name__, "blobs": []}, {}
    blobs = [(f"{name}/{i}", blob) for name, layer_blobs in solver.net.params.items()
             for i, blob in enumerate(layer_blobs)]
    record["blobs"] = [key for key, _ in blobs]
    calls = {"start": 0, "ready": 0}

    def on_start():
        for key, blob in blobs:
            saved[f"w{calls['start']}/{key}"] = blob.data.copy()
        calls["start"] += 1

    def on_gradients_ready():
        for key, blob in blobs:
            saved[f"g{calls['ready']}/{key}"] = blob.diff.copy()
        calls["ready"] += 1
    solver.add_callback(on_start, on_gradients_ready)
    solver.solve()       # Solve's last display forward moves BatchNorm's statistics: w5 comes from the snapshot
    record["current_step"] = []
    hdf5 = Path(folder, "snap_iter_1.solverstate.h5").is_file()
    for key, value in read_model(Path(folder, f"snap_iter_{ITERATIONS}.caffemodel" + (".h5" if hdf5 else "")),
                                 caffe_pb2).items():
        saved[f"w{ITERATIONS}/{key}"] = value
    for it in range(1, ITERATIONS + 1):
        history, step = read_state(Path(folder, f"snap_iter_{it}.solverstate" + (".h5" if hdf5 else "")),
                                   caffe_pb2)
        record["current_step"].append(step)
        for index, value in enumerate(history):
            saved[f"h{it}/{index}"] = value
    record["history_count"] = len(history)
    np.savez(Path(folder, "record.npz"), **saved)
    Path(folder, "record.json").write_text(json.dumps(record))


def read_model(path, caffe_pb2):
    """{"layer/i": array} of a Caffe snapshot's weights, either format."""
    if path.suffix == ".h5":
        import h5py
        with h5py.File(path, "r") as handle:
            return {f"{layer}/{i}": handle["data"][layer][i][()] for layer in handle["data"]
                    for i in handle["data"][layer]}
    net = caffe_pb2.NetParameter()
    net.ParseFromString(path.read_bytes())
    return {f"{layer.name}/{i}": np.array(b.data, np.float32).reshape(tuple(b.shape.dim))
            for layer in net.layer for i, b in enumerate(layer.blobs)}


def read_state(path, caffe_pb2):
    """(history arrays, current_step) of a Caffe solver state, either format."""
    if path.suffix == ".h5":
        import h5py
        with h5py.File(path, "r") as handle:
            group = handle["history"]
            return [group[str(i)][()] for i in range(len(group))], int(handle["current_step"][0])
    state = caffe_pb2.SolverState()
    state.ParseFromString(path.read_bytes())
    return ([np.array(b.data, np.float32).reshape(tuple(b.shape.dim)) for b in state.history],
            state.current_step)


def agreement():
    """Print | case | replayed update | five free iterations | from the fixtures (project's Python)."""
    import importlib.util
    import tempfile
    repo = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(repo), str(repo / "tests")]
    spec = importlib.util.spec_from_file_location("solver_reference_tests", repo / "tests" / "test_caffe_solvers_reference.py")
    tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tests)
    with tempfile.TemporaryDirectory() as tmp:
        rows = tests.agreement(lambda: Path(tempfile.mkdtemp(dir=tmp)))
    print("| case | one update on Caffe's gradient | 5 iterations run free |\n|---|---|---|")
    for name, (replay, free) in rows.items():
        print(f"| {name} | {replay:.1e} | {free:.1e} |")


def build_parser():
    parser = argparse.ArgumentParser(description="the solver fixtures of the real Caffe: one case inside Caffe's "
                                                 "Python (bench/caffe_reference.py --only solvers starts it), or "
                                                 "the agreement table")
    parser.add_argument("--case", help="the case folder holding solver.prototxt; records go there")
    parser.add_argument("--init", help="with --case: the initial .caffemodel")
    parser.add_argument("--batch", help="with --case: npz with the fixed 'data' and 'label' arrays")
    parser.add_argument("--agreement", action="store_true",
                        help="print the worst relative errors against the fixtures (run with the project's Python)")
    return parser


def main(args):
    if args.agreement:
        agreement()
    elif args.case and args.init and args.batch:
        run_case(args.case, args.init, args.batch)
    else:
        build_parser().error("give --agreement, or --case, --init and --batch")


if __name__ == "__main__":
    main(build_parser().parse_args())
