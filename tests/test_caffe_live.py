"""The SEC layers inside the real BVLC Caffe, and `train.sh --engine caffe`.

The first tests need no Caffe: how sec.bvlc_caffe finds Caffe's Python and binary and builds the
environment of `caffe train`. The live tests run when $SEC_CAFFE_PYTHON names a Python that imports
pycaffe (../shared/caffe/build.sh makes /opt/caffe/venv/bin/python; .ci/run sets it), and are skipped
with the reason otherwise. They use the faithful SEC net (models/sec, 321 x 321, batch 1) on a
two-image VOC-shaped folder; about two minutes on 2 cores.
"""
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import live_caffe_python, write_tiny_voc
from sec import bvlc_caffe
from sec.caffe import formats

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_SH = REPO_ROOT / "training" / "train.sh"
MODELS = REPO_ROOT / "models"
LOSSES = ("loss-Seed", "loss-Expand", "loss-Constrain")
QUIET_GLOG = {"GLOG_minloglevel": "2"}
TIMEOUT_S = 600


# ----- without Caffe ------------------------------------------------------------------------------
def test_environment_puts_caffes_python_first_and_only_the_checkouts_pylayers(tmp_path):
    python = tmp_path / "venv" / "bin" / "python"
    env = bvlc_caffe.caffe_environment(python, "/opt/caffe/python",
                                       {"PATH": "/elsewhere/bin:/usr/bin", "PYTHONHOME": "/x",
                                        "PYTHONPATH": "/project/venv/site-packages", "HOME": "/h"})
    assert env["PATH"].split(os.pathsep) == [str(python.parent), "/elsewhere/bin", "/usr/bin"]
    assert env["PYTHONPATH"].split(os.pathsep) == [str(REPO_ROOT / "pylayers"), "/opt/caffe/python"]
    assert "PYTHONHOME" not in env
    assert env["HOME"] == "/h"
    assert (REPO_ROOT / "pylayers" / "pylayers" / "__init__.py").is_file()


def test_caffe_python_comes_from_the_flag_the_variable_or_the_default(tmp_path, monkeypatch):
    flag, variable, default = (tmp_path / name for name in ("flag-python", "env-python", "default-python"))
    for path in (flag, variable, default):
        path.write_text("")
    monkeypatch.setattr(bvlc_caffe, "DEFAULT_CAFFE_PYTHON", default)
    environ = {bvlc_caffe.CAFFE_PYTHON_ENV: str(variable)}
    assert bvlc_caffe.find_caffe_python(str(flag), environ) == flag
    assert bvlc_caffe.find_caffe_python(None, environ) == variable
    assert bvlc_caffe.find_caffe_python(None, {}) == default
    with pytest.raises(bvlc_caffe.CaffeUnavailable, match=f"--caffe-python: Caffe's Python {tmp_path}/absent"):
        bvlc_caffe.find_caffe_python(str(tmp_path / "absent"), environ)
    with pytest.raises(bvlc_caffe.CaffeUnavailable, match="SEC_CAFFE_PYTHON: Caffe's Python .*absent"):
        bvlc_caffe.find_caffe_python(None, {bvlc_caffe.CAFFE_PYTHON_ENV: str(tmp_path / "absent")})
    default.unlink()
    with pytest.raises(bvlc_caffe.CaffeUnavailable, match="pass --caffe-python PATH or set SEC_CAFFE_PYTHON"):
        bvlc_caffe.find_caffe_python(None, {})


def test_caffe_binary_is_found_beside_pycaffe(tmp_path):
    module = tmp_path / "prefix" / "python" / "caffe" / "__init__.py"
    module.parent.mkdir(parents=True)
    module.write_text("")
    with pytest.raises(bvlc_caffe.CaffeUnavailable, match="no `caffe` binary in .*prefix/bin or on PATH"):
        bvlc_caffe.find_caffe_binary(None, module, {"PATH": str(tmp_path / "nowhere")})
    binary = tmp_path / "prefix" / "bin" / "caffe"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert bvlc_caffe.find_caffe_binary(None, module, {"PATH": ""}) == binary
    with pytest.raises(bvlc_caffe.CaffeUnavailable, match="--caffe-bin: .*module.txt is not an executable"):
        bvlc_caffe.find_caffe_binary(str(tmp_path / "module.txt"), module)


def test_pycaffe_is_located_as_the_caffe_python_imports_it(tmp_path):
    """A pycaffe found through the caller's PYTHONPATH (a source build) is carried over alone."""
    (tmp_path / "caffe").mkdir()
    (tmp_path / "caffe" / "__init__.py").write_text("")
    (tmp_path / "caffe" / "_caffe.so").write_bytes(b"")   # what makes it BVLC's (SEC_CAFFE=bvlc)
    found = bvlc_caffe.locate_pycaffe(sys.executable, dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert found == tmp_path.resolve()
    with pytest.raises(bvlc_caffe.CaffeUnavailable,
                       match="cannot import caffe: .*(No module named 'caffe'|SEC_CAFFE=bvlc: no BVLC pycaffe)"):
        bvlc_caffe.locate_pycaffe(sys.executable, dict(os.environ, PYTHONPATH=""))


def test_probe_names_the_missing_module_and_the_install_command():
    """This project's Python has no BVLC pycaffe (its `import caffe` is the engine, which SEC_CAFFE=bvlc
    refuses): the probe says so and how to install the layers."""
    env = bvlc_caffe.caffe_environment(sys.executable)
    with pytest.raises(bvlc_caffe.CaffeUnavailable,
                       match=r"(No module named 'caffe'|SEC_CAFFE=bvlc: no BVLC pycaffe).*-m pip install ./pylayers ./CRF"):
        bvlc_caffe.probe(sys.executable, env)


def train_sh(fixture, runs, name, *flags, env=None):
    command = ["bash", str(TRAIN_SH), "--voc", str(fixture["voc"]), "--cues", str(fixture["cues"]),
               "--weights", str(fixture["weights"]), "--batch", "1", "--device", "cpu", "--name", name,
               "--runs", str(runs), *[str(flag) for flag in flags]]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=TIMEOUT_S,
                          env=dict(os.environ, **(env or {})))


def test_train_sh_engine_caffe_names_a_missing_caffe_python(tmp_path):
    fixture = write_tiny_voc(tmp_path)
    result = train_sh(fixture, tmp_path / "runs", "c", "--engine", "caffe", "--iters", "1",
                      "--caffe-python", tmp_path / "no-python")
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"--caffe-python: Caffe's Python {tmp_path / 'no-python'} not found" in result.stderr


def test_train_sh_engine_caffe_keeps_an_earlier_run(tmp_path):
    """As with the torch engine, a used run folder is refused (before Caffe is even looked for)."""
    fixture = write_tiny_voc(tmp_path)
    run = tmp_path / "runs" / "c"
    run.mkdir(parents=True)
    earlier = run / "c_iter_2.caffemodel"
    earlier.write_bytes(b"an earlier run")
    (run / "c_iter_2.solverstate").write_bytes(b"an earlier run")
    result = train_sh(fixture, tmp_path / "runs", "c", "--engine", "caffe", "--iters", "1",
                      "--caffe-python", tmp_path / "no-python")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "--resume" in result.stderr and "--overwrite" in result.stderr
    assert earlier.read_bytes() == b"an earlier run"


# ----- with the real Caffe ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def caffe_python():
    return live_caffe_python()


def run_in_caffe(caffe_python, script, *args):
    """Run `script` in Caffe's Python (the environment of `caffe train`); its last stdout line is JSON."""
    env = dict(bvlc_caffe.caffe_environment(caffe_python, bvlc_caffe.locate_pycaffe(caffe_python)), **QUIET_GLOG)
    result = subprocess.run([str(caffe_python), "-c", script, *[str(a) for a in args]], env=env,
                            capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def display_solver(folder):
    """models/sec/solver.prototxt with display: 1 (Caffe prints every iteration's losses)."""
    from google.protobuf import text_format
    solver = formats.read_solver_prototxt(str(MODELS / "sec" / "solver.prototxt"))
    solver.display = 1
    path = folder / "solver.prototxt"
    path.write_text(text_format.MessageToString(solver))
    return path


def caffe_losses(log):
    """{iteration: {loss name: value}} from Caffe's 'Train net output' lines."""
    losses, iteration = {}, None
    for line in log.splitlines():
        match = re.search(r"Iteration (\d+) \(.*\), loss = ", line)
        if match:
            iteration = int(match.group(1))
        match = re.search(r"Train net output #\d+: (\S+) = (\S+)", line)
        if match and iteration is not None:
            losses.setdefault(iteration, {})[match.group(1)] = float(match.group(2))
    return losses


def assert_finite_losses(losses, iterations):
    assert sorted(losses) == list(iterations), losses
    for values in losses.values():
        assert set(values) == set(LOSSES) and all(math.isfinite(v) for v in values.values()), values


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    folder = tmp_path_factory.mktemp("voc")
    return dict(write_tiny_voc(folder), folder=folder, solver=display_solver(folder))


@pytest.fixture(scope="module")
def caffe_run(caffe_python, voc):
    """`train.sh --engine caffe` for 2 iterations: (run folder, completed process)."""
    runs = voc["folder"] / "runs"
    result = train_sh(voc, runs, "bvlc", "--engine", "caffe", "--iters", "2", "--solver", voc["solver"],
                      "--caffe-python", caffe_python)
    assert result.returncode == 0, result.stderr[-4000:]
    return runs / "bvlc", result


NET_SCRIPT = """
import json, sys
import numpy as np
import caffe, pylayers
caffe.set_mode_cpu()
net = caffe.Net(sys.argv[1], caffe.TRAIN, weights=sys.argv[2])
net.forward()
net.backward()
b = net.blobs
probs, cues, labels = b["fc8-SEC-Softmax"].data, b["cues"].data, b["labels"].data
seed, seed_grad = pylayers.seed_loss(probs.copy(), cues.copy())
expand, expand_grad = pylayers.expand_loss(probs.copy(), labels.copy())
constrain, constrain_grad = pylayers.constrain_loss(probs.copy(), b["fc8-SEC-CRF-log"].data.copy())
print(json.dumps({
    "losses": {name: float(b[name].data[0]) for name in ("loss-Seed", "loss-Expand", "loss-Constrain")},
    "numpy": {"loss-Seed": seed, "loss-Expand": expand, "loss-Constrain": constrain},
    "probs_diff": float(np.abs(b["fc8-SEC-Softmax"].diff - (seed_grad + expand_grad + constrain_grad)).max()),
    "probs_diff_scale": float(np.abs(b["fc8-SEC-Softmax"].diff).max()),
    "labels": labels.reshape(len(labels), -1).tolist(),
    "crf_finite": bool(np.isfinite(b["fc8-SEC-CRF-log"].data).all()),
    "crf_normalised": float(np.abs(np.exp(b["fc8-SEC-CRF-log"].data).sum(axis=1) - 1).max()),
    "param_diffs": {name: [float(np.abs(p.diff).max()) for p in params] for name, params in net.params.items()},
    "pylayers": pylayers.__file__, "base": [c.__module__ + "." + c.__name__ for c in pylayers.Layer.__mro__[:2]],
}))
"""


def test_sec_train_net_forward_backward_inside_real_caffe(caffe_python, voc):
    """The faithful SEC training net in pycaffe: the six pylayers and krahenbuhl2013 run inside Caffe;
    losses and the gradient reaching the softmax equal the numpy functions on Caffe's own blobs."""
    from sec.train import RunConfig, write_caffe_files
    voc_root = voc["voc"]
    list_path = voc["folder"] / "net_list.txt"
    list_path.write_text("2007_000001.jpg 0\n")
    cfg = RunConfig(name="net", solver=MODELS / "sec" / "solver.prototxt", net=MODELS / "sec" / "train.prototxt",
                    deploy=MODELS / "sec" / "deploy.prototxt", runs_root=voc["folder"] / "net_runs", classes="voc",
                    num_classes=21, dataset=voc_root, source=list_path, root_folder=f"{voc_root}/JPEGImages/",
                    cues=voc["cues"], batch=1)
    net_path = formats.read_solver_prototxt(str(write_caffe_files(cfg))).net
    out = run_in_caffe(caffe_python, NET_SCRIPT, net_path, voc["weights"])
    assert out["pylayers"].startswith(str(REPO_ROOT / "pylayers")), out["pylayers"]
    assert out["base"] == ["pylayers.base.Layer", "caffe._caffe.Layer"]
    for name in LOSSES:
        assert math.isfinite(out["losses"][name])
        assert out["losses"][name] == pytest.approx(out["numpy"][name], rel=1e-5, abs=1e-6)
    assert out["probs_diff"] <= 1e-5 * out["probs_diff_scale"] and out["probs_diff_scale"] > 0
    expected_labels = np.zeros(21)
    expected_labels[1] = 1                      # image 0: class 1 only, the background column stays 0
    assert out["labels"] == [expected_labels.tolist()]
    assert out["crf_finite"] and out["crf_normalised"] < 1e-4
    diffs = out["param_diffs"]
    assert all(math.isfinite(v) for values in diffs.values() for v in values)
    assert diffs["fc8-SEC"][0] > 0 and diffs["conv1_1"][0] > 0


def test_train_sh_engine_caffe_trains_with_finite_losses(caffe_run):
    run_dir, result = caffe_run
    log = result.stdout + result.stderr
    assert "Caffe's Python:" in result.stdout and "numpy 1." in result.stdout   # Caffe's own numpy
    assert_finite_losses(caffe_losses(log), [0, 1])
    for suffix in (".caffemodel", ".solverstate"):
        assert (run_dir / f"bvlc_iter_2{suffix}").is_file()
    latest = json.loads((run_dir.parent / "latest.json").read_text())
    assert latest["weights"] == str((run_dir / "bvlc_iter_2.caffemodel").resolve())


def test_this_engine_resumes_caffes_snapshot(caffe_run, voc, tmp_path):
    """sec.caffe restores Caffe's .solverstate and .caffemodel bitwise, then trains on from them."""
    from sec.caffe.solver import SGDSolver
    caffe_dir, _ = caffe_run
    run_dir = tmp_path / "runs" / "bvlc"
    shutil.copytree(caffe_dir, run_dir)
    state = formats.read_solverstate(run_dir / "bvlc_iter_2.solverstate")
    weights = {layer.name: [formats.blob_to_array(b) for b in layer.blobs]
               for layer in formats.read_caffemodel(run_dir / "bvlc_iter_2.caffemodel").layer if layer.blobs}
    solver = SGDSolver(run_dir / "bvlc_solver.prototxt")
    solver.restore(str(run_dir / "bvlc_iter_2.solverstate"))
    assert solver.iter == 2 and state["iter"] == 2
    loaded = 0
    for name, params in solver.net.params.items():
        for index, param in enumerate(params):
            np.testing.assert_array_equal(param.data, weights[name][index], err_msg=f"{name}[{index}]")
            loaded += 1
    assert loaded == len(state["history"]) == sum(len(v) for v in weights.values())
    del solver
    result = train_sh(voc, tmp_path / "runs", "bvlc", "--engine", "torch", "--resume", "--iters", "3",
                      "--solver", voc["solver"], "--no-eval")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout and (run_dir / "bvlc_iter_3.caffemodel").is_file()


LOAD_SCRIPT = """
import json, sys
import numpy as np
import caffe
net = caffe.Net(sys.argv[1], caffe.TEST, weights=sys.argv[2])
np.savez(sys.argv[3], **{f"{name}/{i}": p.data for name, params in net.params.items() for i, p in enumerate(params)})
print(json.dumps({"count": sum(len(p) for p in net.params.values())}))
"""


def test_caffe_loads_and_resumes_this_engines_snapshot(caffe_python, voc, tmp_path):
    """Caffe loads sec.caffe's .caffemodel bitwise and resumes its .solverstate with finite losses."""
    runs = tmp_path / "runs"
    result = train_sh(voc, runs, "mixed", "--engine", "torch", "--iters", "1", "--solver", voc["solver"],
                      "--no-eval")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = runs / "mixed"
    model = run_dir / "mixed_iter_1.caffemodel"
    saved = {f"{layer.name}/{i}": formats.blob_to_array(b)
             for layer in formats.read_caffemodel(model).layer for i, b in enumerate(layer.blobs)}
    out = run_in_caffe(caffe_python, LOAD_SCRIPT, run_dir / "mixed_train.prototxt", model, tmp_path / "p.npz")
    loaded = np.load(tmp_path / "p.npz")
    assert out["count"] == len(loaded.files) == len(saved)
    for key in loaded.files:
        np.testing.assert_array_equal(loaded[key], saved[key], err_msg=key)
    result = train_sh(voc, runs, "mixed", "--engine", "caffe", "--resume", "--iters", "2",
                      "--solver", voc["solver"], "--caffe-python", caffe_python)
    assert result.returncode == 0, result.stderr[-4000:]
    log = result.stdout + result.stderr
    assert "Resuming from" in log and "mixed_iter_1.solverstate" in log
    assert_finite_losses(caffe_losses(log), [1])
    assert (run_dir / "mixed_iter_2.caffemodel").is_file()


def test_a_failing_python_layer_shows_its_traceback_under_caffe(caffe_python, tmp_path):
    """Caffe's tool aborts on a Python layer's exception without printing it; pylayers prints it.
    The failure must be one only the layer sees (a missing cue id is caught before Caffe starts):
    an ExpandLossLayer whose param_str names an unknown pooling."""
    from google.protobuf import text_format
    fixture = write_tiny_voc(tmp_path)
    net = formats.read_net_prototxt(str(MODELS / "sec" / "train.prototxt"))
    expand = next(layer for layer in net.layer if layer.python_param.layer == "ExpandLossLayer")
    expand.python_param.param_str = '{"pooling": "bogus"}'
    net_path = tmp_path / "train.prototxt"
    net_path.write_text(text_format.MessageToString(net))
    result = train_sh(fixture, tmp_path / "runs", "broken", "--engine", "caffe", "--iters", "1",
                      "--net", net_path, "--caffe-python", caffe_python)
    assert result.returncode == 4, result.stderr[-3000:]
    assert "pylayers: ExpandLossLayer.setup failed" in result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert "param_str pooling must be one of" in result.stderr
    assert "caffe train failed (killed by signal 6)" in result.stderr


def test_train_sh_engine_caffe_checks_the_cues_before_caffe_starts(tmp_path):
    """A list id without cues is one line and exit 2 before Caffe is looked for, as with torch."""
    fixture = write_tiny_voc(tmp_path, missing_id=1)
    list_path = tmp_path / "list.txt"
    list_path.write_text("2007_000002.jpg 1\n")
    result = train_sh(fixture, tmp_path / "runs", "broken", "--engine", "caffe", "--iters", "1",
                      "--list", list_path, "--caffe-python", tmp_path / "no-python")
    assert result.returncode == 2, result.stderr[-3000:]
    assert str(fixture["cues"]) in result.stderr
    assert "--caffe-python" not in result.stderr
