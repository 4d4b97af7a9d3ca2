"""`caffe train`: --weights, --snapshot, --stage, signals (SIGINT stop, SIGHUP snapshot), the
installed console scripts, their coexistence with a real Caffe, and the SEC README's command run
from the folder that holds the solver (a narrow copy of the SEC net and weights written here)."""
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from google.protobuf import text_format

from caffe_tools_helpers import (REPO_ROOT, SUBPROCESS_TIMEOUT_S, caffe_command, messages, read_weights, run,
                                 tool_env, write_tiny_classifier)
from sec import caffe
from sec.caffe import formats
from sec.caffe.tools import caffe as caffe_tool
from sec.proto import caffe_pb2

WIDTH_DIVISOR = 32          # as bench/caffe_reference.py narrows the SEC nets
SEC_INPUT = 41
SEC_IMAGES = 3
SIGNAL_WAIT_ITERATION = 2


def train(argv, capsys):
    status = caffe_tool.main(["train", *[str(a) for a in argv]])
    return status, capsys.readouterr().err


def test_resume_with_snapshot_equals_the_uninterrupted_run(tmp_path, capsys):
    whole = write_tiny_classifier(tmp_path / "whole", max_iter=6, snapshot=3)
    status, err = train(["--solver", whole["solver"]], capsys)
    assert status == 0 and messages(err)[-1] == ("I", "Optimization Done.")
    first = write_tiny_classifier(tmp_path / "split", max_iter=3, snapshot=3)
    assert train(["--solver", first["solver"]], capsys)[0] == 0
    resumed = write_tiny_classifier(tmp_path / "split", max_iter=6, snapshot=3)
    state = f"{resumed['prefix']}_iter_3.solverstate"
    status, err = train(["--solver", resumed["solver"], "--snapshot", state], capsys)
    assert status == 0 and ("I", f"Resuming from {state}") in messages(err)
    a = read_weights(f"{whole['prefix']}_iter_6.caffemodel")
    b = read_weights(f"{resumed['prefix']}_iter_6.caffemodel")
    assert a.keys() == b.keys() == {"ip"}
    for x, y in zip(a["ip"], b["ip"]):
        np.testing.assert_array_equal(x, y)
    start = read_weights(f"{resumed['prefix']}_iter_3.caffemodel")
    assert not np.array_equal(start["ip"][0], b["ip"][0])       # it did train from iteration 3 on


def test_weights_comma_separated_go_over_the_solvers_and_stage_selects_layers(tmp_path, capsys):
    paths = write_tiny_classifier(tmp_path, max_iter=0, snapshot=0,
                                  extra_solver=f'weights: "{tmp_path}/c.caffemodel"\n')
    rng = np.random.default_rng(0)
    ip, ip_c = ([rng.standard_normal((3, 75)).astype(np.float32), rng.standard_normal(3).astype(np.float32)]
                for _ in range(2))
    extra = [rng.standard_normal((2, 75)).astype(np.float32), rng.standard_normal(2).astype(np.float32)]
    formats.write_caffemodel(tmp_path / "a.caffemodel", "a", [("ip", "InnerProduct", ip)])
    formats.write_caffemodel(tmp_path / "b.caffemodel", "b", [("extra", "InnerProduct", extra)])
    formats.write_caffemodel(tmp_path / "c.caffemodel", "c", [("ip", "InnerProduct", ip_c)])
    weights = f"{tmp_path}/a.caffemodel, {tmp_path}/b.caffemodel"
    status, err = train(["--solver", paths["solver"], "--weights", weights, "--stage", "extra"], capsys)
    assert status == 0, err
    assert [m for _, m in messages(err) if m.startswith("Finetuning from")][-2:] == [   # after the solver's own
        f"Finetuning from {tmp_path}/a.caffemodel", f"Finetuning from {tmp_path}/b.caffemodel"]
    saved = read_weights(f"{paths['prefix']}_iter_0.caffemodel")     # snapshot_after_train at iteration 0
    assert saved.keys() == {"ip", "extra"}          # the stage "extra" layer is in the train net
    for got, want in zip(saved["ip"] + saved["extra"], ip + extra):
        np.testing.assert_array_equal(got, want)
    status, err = train(["--solver", paths["solver"]], capsys)      # the solver's own weights
    assert status == 0 and read_weights(f"{paths['prefix']}_iter_0.caffemodel").keys() == {"ip"}
    np.testing.assert_array_equal(read_weights(f"{paths['prefix']}_iter_0.caffemodel")["ip"][0], ip_c[0])
    (tmp_path / "c.caffemodel").unlink()
    status, err = train(["--solver", paths["solver"]], capsys)
    assert status == caffe_tool.glog.FATAL_EXIT_STATUS and "c.caffemodel" in messages(err, "F")[0][1]


def _train_until(argv, iteration, cwd=None):
    """Start `caffe train` and read its log until it has displayed `iteration`; (process, lines)."""
    process = subprocess.Popen(caffe_command("train", *argv), cwd=cwd, env=tool_env(), stderr=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, text=True)
    lines = []
    for line in process.stderr:
        lines.append(line)
        if f"] Iteration {iteration} " in line or f"] Iteration {iteration}," in line:
            return process, lines
    process.wait(SUBPROCESS_TIMEOUT_S)
    raise AssertionError("training ended before iteration %d:\n%s" % (iteration, "".join(lines)))


def _finish(process, lines):
    _, rest = process.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    return process.returncode, messages("".join(lines) + rest)


@pytest.mark.slow
def test_sighup_snapshots_and_sigint_stops_after_a_snapshot(tmp_path):
    paths = write_tiny_classifier(tmp_path, max_iter=100000, snapshot=0)
    process, lines = _train_until(["--solver", paths["solver"]], SIGNAL_WAIT_ITERATION)
    process.send_signal(signal.SIGHUP)
    for line in process.stderr:
        lines.append(line)
        if "Snapshotting solver state" in line:
            break
    process.send_signal(signal.SIGINT)
    status, logged = _finish(process, lines)
    assert status == 0
    texts = [m for _, m in logged]
    assert texts[-2:] == ["Optimization stopped early.", "Optimization Done."]
    states = sorted(Path(tmp_path, "snap").glob("tiny_iter_*.solverstate"), key=lambda p: int(p.stem.split("_")[-1]))
    assert len(states) == 2                         # SIGHUP's, then the stop's (snapshot_after_train)
    hup, stop = (int(p.stem.split("_")[-1]) for p in states)
    assert SIGNAL_WAIT_ITERATION < hup < stop < 100000
    assert formats.read_solverstate(states[-1])["iter"] == stop


@pytest.mark.slow
def test_signal_effects_none_and_snapshot_after_train_false(tmp_path):
    paths = write_tiny_classifier(tmp_path, max_iter=100000, snapshot=0, extra_solver="snapshot_after_train: false\n")
    argv = ["--solver", paths["solver"], "--sigint_effect", "none", "--sighup_effect", "stop"]
    process, lines = _train_until(argv, SIGNAL_WAIT_ITERATION)
    process.send_signal(signal.SIGINT)              # ignored
    process.send_signal(signal.SIGHUP)              # stops; no snapshot (snapshot_after_train false)
    status, logged = _finish(process, lines)
    assert status == 0 and [m for _, m in logged][-2:] == ["Optimization stopped early.", "Optimization Done."]
    assert not list(Path(tmp_path, "snap").glob("*"))


# ---------------------------------------------------------------- installed commands

@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """This checkout's setup.py installed with pip into a folder: {"bin": scripts, "site": packages}."""
    root = tmp_path_factory.mktemp("install")
    source = root / "src"
    shutil.copytree(REPO_ROOT / "sec", source / "sec", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "setup.py", source / "setup.py")
    target = root / "site"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                             "--no-index", "--target", str(target), str(source)], capture_output=True, text=True,
                            timeout=SUBPROCESS_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    return {"bin": target / "bin", "site": target}


def installed_env(installed, path_dirs, **extra):
    env = dict(os.environ, PYTHONPATH=str(installed["site"]), OMP_NUM_THREADS="1",
               PATH=os.pathsep.join(str(d) for d in path_dirs), **extra)
    env.pop(caffe_tool.ENGINE_ENV, None)
    env.update(extra)
    return env


def _system_dirs():
    """PATH entries without any `caffe` command (so a real Caffe on this machine does not interfere)."""
    return [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not Path(d, "caffe").exists()]


@pytest.mark.slow
def test_console_scripts_are_installed(installed):
    names = {"caffe", "sec-caffe", "upgrade_net_proto_text", "upgrade_net_proto_binary", "upgrade_solver_proto_text",
             "extract_features", "convert_imageset", "compute_image_mean"}
    assert names <= {p.name for p in installed["bin"].iterdir()}
    env = installed_env(installed, [installed["bin"], *_system_dirs()])
    for name, status, usage in (("upgrade_net_proto_binary", 1, "Usage: upgrade_net_proto_binary "),
                                ("extract_features", 1, "Usage: extract_features  pretrained_net_param")):
        result = run([str(installed["bin"] / name)], env=env)       # no arguments: Caffe's usage, status 1
        assert result.returncode == status and usage in result.stderr, (name, result.stderr)


@pytest.mark.slow
def test_installed_caffe_defers_to_a_real_caffe_unless_told(installed, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    fake = real / "caffe"
    fake.write_text('#!/bin/sh\necho "real caffe: $*"\n')
    fake.chmod(0o755)
    env = installed_env(installed, [installed["bin"], real, *_system_dirs()])
    result = run(["caffe", "device_query", "--gpu", "3"], env=env)
    assert (result.returncode, result.stdout) == (0, "real caffe: device_query --gpu 3\n")
    assert f"running the real Caffe binary {fake}" in result.stderr
    for argv, extra in ((["caffe"], {caffe_tool.ENGINE_ENV: "sec"}), (["sec-caffe"], {})):
        result = run(argv + ["--version"], env={**env, **extra})
        assert (result.returncode, result.stdout) == (0, "caffe version 1.0.0\n"), result.stderr
    assert run(["caffe", "--version"], env={**env, caffe_tool.ENGINE_ENV: "bvlc"}).stdout == "real caffe: --version\n"
    result = run(["caffe", "--version"], env={**env, caffe_tool.ENGINE_ENV: "caffe2"})
    assert result.returncode == 1 and "SEC_CAFFE='caffe2': need one of auto, sec, bvlc" in result.stderr
    shims = [tmp_path / "shim", tmp_path / "shim2"]   # wrappers that run the console script (pyenv's shims)
    for folder in shims:
        folder.mkdir()
        (folder / "caffe").write_text(f'#!/bin/sh\nexec "{installed["bin"] / "caffe"}" "$@"\n')
        (folder / "caffe").chmod(0o755)
    shim = shims[0]
    env = installed_env(installed, [*shims, installed["bin"], *_system_dirs()])
    result = run(["caffe", "--version"], env=env)
    assert (result.returncode, result.stdout) == (0, "caffe version 1.0.0\n"), result.stderr
    assert f"{shim / 'caffe'} on PATH runs this script again" in result.stderr
    env = installed_env(installed, [*shims, installed["bin"], real, *_system_dirs()])  # the real one after them
    assert run(["caffe", "--version"], env=env).stdout == "real caffe: --version\n"
    env = installed_env(installed, [installed["bin"], *_system_dirs()])       # no real Caffe on PATH
    assert run(["caffe", "--version"], env=env).stdout == "caffe version 1.0.0\n"
    result = run(["caffe", "--version"], env={**env, caffe_tool.ENGINE_ENV: "bvlc"})
    assert result.returncode == 1 and "SEC_CAFFE=bvlc: no BVLC Caffe `caffe` binary on PATH" in result.stderr


def write_narrow_sec_folder(folder):
    """models/sec as a user sets it up to run the original README's command: solver.prototxt (the
    project's, on the CPU, 2 iterations), train.prototxt (the SEC net with channels / WIDTH_DIVISOR
    and SEC_INPUT x SEC_INPUT images, its paths untouched), input_list.txt, JPEGImages/,
    localization_cues.pickle and vgg16_20M.caffemodel (conv1_1 ... fc7, random, written here)."""
    folder.mkdir()
    solver = formats.read_solver_prototxt(REPO_ROOT / "models" / "sec" / "solver.prototxt")
    assert solver.net == "train.prototxt"
    solver.max_iter, solver.display, solver.snapshot, solver.solver_mode = 2, 1, 0, caffe_pb2.SolverParameter.CPU
    (folder / "solver.prototxt").write_text(text_format.MessageToString(solver))
    net = formats.read_net_prototxt(REPO_ROOT / "models" / "sec" / "train.prototxt")
    deploy = formats.read_net_prototxt(REPO_ROOT / "models" / "sec" / "deploy.prototxt")
    cue_size = None
    for lp in list(net.layer) + list(deploy.layer):
        if lp.type == "Convolution" and lp.name != "fc8-SEC":
            lp.convolution_param.num_output //= WIDTH_DIVISOR
        if lp.type == "ImageData":
            lp.image_data_param.new_height = lp.image_data_param.new_width = SEC_INPUT
            lp.image_data_param.batch_size = 2
        if lp.type == "Input":
            del lp.input_param.shape[0].dim[:]
            lp.input_param.shape[0].dim.extend([1, 3, SEC_INPUT, SEC_INPUT])
    narrow_deploy = caffe.Net(deploy, caffe.TEST)
    cue_size = narrow_deploy.blobs["fc8-SEC"].shape[2]
    for lp in net.layer:
        if lp.type == "Python" and lp.python_param.layer == "AnnotationLayer":
            params = json.loads(lp.python_param.param_str)
            assert params["cues"] == "localization_cues.pickle"
            lp.python_param.param_str = json.dumps(dict(params, cue_size=cue_size))
    (folder / "train.prototxt").write_text(text_format.MessageToString(net))
    rng = np.random.default_rng(5)
    layers = []
    for name, kind, params in narrow_deploy.layer_params():
        if params and name != "fc8-SEC":
            weight, bias = (tuple(p.shape) for p in params)
            fan_in = int(np.prod(weight[1:]))
            layers.append((name, kind, [rng.normal(0, np.sqrt(2 / fan_in), weight).astype(np.float32),
                                        rng.normal(0, 0.01, bias).astype(np.float32)]))
    formats.write_caffemodel(folder / "vgg16_20M.caffemodel", "VGG_ILSVRC_16_layers", layers)
    (folder / "JPEGImages").mkdir()
    cues = {}
    for i in range(SEC_IMAGES):
        cv2.imwrite(str(folder / "JPEGImages" / f"img{i}.jpg"), rng.integers(0, 256, (60, 50, 3), dtype=np.uint8))
        cues[f"{i}_labels"] = np.array([1 + i])
        cues[f"{i}_cues"] = np.array([[0, 1 + i], [0, cue_size - 1], [0, cue_size - 1]])
    (folder / "input_list.txt").write_text("".join(f"img{i}.jpg {i}\n" for i in range(SEC_IMAGES)))
    with open(folder / "localization_cues.pickle", "wb") as handle:
        pickle.dump(cues, handle)
    return [name for name, _, _ in layers]


@pytest.mark.slow
def test_the_sec_readme_command_runs_in_the_solvers_folder(installed, tmp_path):
    folder = tmp_path / "sec"
    initialised = write_narrow_sec_folder(folder)
    env = installed_env(installed, [installed["bin"], *_system_dirs()])
    result = run(["caffe", "train", "--solver", "solver.prototxt", "--weights", "vgg16_20M.caffemodel"], cwd=folder,
                 env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    logged = [m for _, m in messages(result.stderr)]
    assert logged[0] == "Use CPU." and logged[-1] == "Optimization Done."
    losses = [m for m in logged if m.startswith("    Train net output")]
    assert {m.split(": ")[1].split(" =")[0] for m in losses} == {"loss-Seed", "loss-Expand", "loss-Constrain"}
    assert all(np.isfinite(float(m.split(" = ")[1].split(" ")[0])) for m in losses)
    saved = read_weights(folder / "sec_iter_2.caffemodel")          # snapshot_prefix "sec", after training
    start = read_weights(folder / "vgg16_20M.caffemodel")
    assert set(initialised) < set(saved) and "fc8-SEC" in saved
    assert not np.array_equal(saved["conv1_1"][0], start["conv1_1"][0])    # trained from the given weights
    np.testing.assert_allclose(saved["conv1_1"][0], start["conv1_1"][0], atol=0.05)
