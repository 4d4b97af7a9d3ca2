"""Snapshots of the default synthetic SEC net (BatchNorm + Scale after every convolution, the
pylayers losses) cross between this engine and the real BVLC Caffe, both ways, in both of Caffe's
formats: Caffe's `caffe train --snapshot` resumes this engine's solver state (it aborted with
"Check failed ... (23 vs. 35)" while BatchNorm's blobs had no history here), and a solver state Caffe
re-snapshots after restoring ours equals ours bitwise; this engine restores Caffe's bitwise and
trains on. Skipped without $SEC_CAFFE_PYTHON (see tests/test_caffe_live.py); about a minute.
"""
import subprocess

import numpy as np
import pytest
from google.protobuf import text_format

from sec import bvlc_caffe
from sec.caffe import formats
from sec.caffe.solver import NetOverrides, SGDSolver, apply_net_overrides, snapshot_paths
from sec.caffe import hdf5
from test_caffe_live import MODELS, TIMEOUT_S, caffe_python, run_in_caffe  # noqa: F401 (caffe_python: a fixture)

IMAGE, NET_SIDE, CUE_SIDE, BATCH = 80, 81, 11, 2
CAFFE_BLOBS = 35            # BVLC Caffe's learnable_params of models/synthetic/train.prototxt


@pytest.fixture(scope="module")
def synthetic_files(tmp_path_factory):
    """A tiny synthetic set, the synthetic train net pointed at it, and a solver writer."""
    from sec import synthetic
    folder = tmp_path_factory.mktemp("synthetic")
    synthetic.generate(folder / "set", 6, 1, seed=0, image_size=IMAGE, cue_size=CUE_SIDE)
    overrides = NetOverrides(batch_size=BATCH, image_size=NET_SIDE, source=str(folder / "set" / "train.txt"),
                             root_folder=str(folder / "set" / "images") + "/",
                             python_params={"AnnotationLayer": {"cues": str(folder / "set" / "cues.pickle"),
                                                                "cue_size": CUE_SIDE}})
    net = apply_net_overrides(formats.read_net_prototxt(str(MODELS / "synthetic" / "train.prototxt")), overrides)
    for layer in net.layer:
        if layer.type == "ImageData":
            layer.image_data_param.shuffle = False      # both engines read the list in order
    net_path = folder / "train.prototxt"
    net_path.write_text(text_format.MessageToString(net))
    return folder, net_path


def write_solver(folder, net_path, prefix, max_iter, hdf5_format=False):
    solver = formats.read_solver_prototxt(str(MODELS / "synthetic" / "solver.prototxt"))
    solver.net, solver.snapshot_prefix, solver.max_iter = str(net_path), str(prefix), max_iter
    solver.snapshot, solver.display, solver.solver_mode = 0, 1, solver.CPU
    if hdf5_format:
        solver.snapshot_format = solver.HDF5
    path = folder / f"solver_{prefix.name}_{max_iter}{'_h5' if hdf5_format else ''}.prototxt"
    path.write_text(text_format.MessageToString(solver))
    return path


def caffe_train(caffe_python, solver, snapshot=None):
    """Caffe's own `caffe train` (the binary beside pycaffe); returns the completed process."""
    module = bvlc_caffe.locate_pycaffe(caffe_python)
    env = dict(bvlc_caffe.caffe_environment(caffe_python, module), GLOG_minloglevel="0", GLOG_logtostderr="1")
    binary = bvlc_caffe.find_caffe_binary(None, module / "caffe" / "__init__.py", env)
    command = [str(binary), "train", f"--solver={solver}"] + ([f"--snapshot={snapshot}"] if snapshot else [])
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=solver.parent)


RESNAPSHOT = """
import json, sys
import caffe
caffe.set_mode_cpu()
solver = caffe.get_solver(sys.argv[1])
solver.restore(sys.argv[2])
solver.snapshot()
print(json.dumps({"iter": solver.iter}))
"""


def state_of(state_path):
    """(weights {"layer/i": array}, history, iter, current_step) of a snapshot in either format."""
    h5 = str(state_path).endswith(".h5")
    state = (hdf5.read_state if h5 else formats.read_solverstate)(str(state_path))
    model = str(state_path).replace(".solverstate", ".caffemodel")
    if h5:
        weights = {f"{layer}/{i}": blobs[i] for layer, blobs in hdf5.read_model(model) for i in blobs}
    else:
        weights = {f"{layer.name}/{i}": formats.blob_to_array(b)
                   for layer in formats.read_caffemodel(model).layer for i, b in enumerate(layer.blobs)}
    return weights, state["history"], state["iter"], state["current_step"]


def assert_same_state(a, b):
    weights_a, history_a, *rest_a = a
    weights_b, history_b, *rest_b = b
    assert rest_a == rest_b and sorted(weights_a) == sorted(weights_b)
    for key in weights_a:
        np.testing.assert_array_equal(weights_a[key], weights_b[key], err_msg=key)
    assert len(history_a) == len(history_b) == CAFFE_BLOBS
    for index, (x, y) in enumerate(zip(history_a, history_b)):
        np.testing.assert_array_equal(x, y, err_msg=f"history {index}")


@pytest.mark.parametrize("hdf5_format", [False, True], ids=["binaryproto", "hdf5"])
def test_our_snapshot_resumes_in_caffe_and_caffe_keeps_it_bitwise(caffe_python, synthetic_files, tmp_path,
                                                                    hdf5_format):
    folder, net_path = synthetic_files
    prefix = tmp_path / "ours"
    solver = SGDSolver(write_solver(tmp_path, net_path, prefix, 2, hdf5_format))
    assert len(solver.history) == CAFFE_BLOBS
    solver.step(2)
    state = solver.snapshot()
    assert state == snapshot_paths(prefix, 2, hdf5_format)[1]
    ours = state_of(state)
    again = tmp_path / "again"
    resnapshot = write_solver(tmp_path, net_path, again, 2, hdf5_format)
    out = run_in_caffe(caffe_python, RESNAPSHOT, resnapshot, state)
    assert out["iter"] == 2
    assert_same_state(state_of(snapshot_paths(again, 2, hdf5_format)[1]), ours)
    result = caffe_train(caffe_python, write_solver(tmp_path, net_path, prefix, 3, hdf5_format), snapshot=state)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming from" in result.stderr and "Iteration 2 (" in result.stderr
    weights, history, iteration, _ = state_of(snapshot_paths(prefix, 3, hdf5_format)[1])
    assert iteration == 3 and len(history) == CAFFE_BLOBS
    assert all(np.isfinite(v).all() for v in weights.values())


@pytest.mark.parametrize("hdf5_format", [False, True], ids=["binaryproto", "hdf5"])
def test_caffes_snapshot_restores_here_bitwise_and_trains_on(caffe_python, synthetic_files, tmp_path, hdf5_format):
    folder, net_path = synthetic_files
    prefix = tmp_path / "caffe"
    result = caffe_train(caffe_python, write_solver(tmp_path, net_path, prefix, 2, hdf5_format))
    assert result.returncode == 0, result.stderr[-3000:]
    state = snapshot_paths(prefix, 2, hdf5_format)[1]
    theirs = state_of(state)
    solver = SGDSolver(write_solver(tmp_path, net_path, tmp_path / "here", 4, hdf5_format))
    solver.restore(state)
    assert solver.iter == 2
    ours = state_of(solver.snapshot())
    assert_same_state(ours, theirs)
    solver.step(2)
    assert solver.iter == 4 and all(np.isfinite(v) for v in solver.last_outputs.values())
