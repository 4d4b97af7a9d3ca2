"""Training with bad inputs, interruptions and divergence (training/train.py on the tiny synthetic
set): every expected failure is one line naming the file or flag with the documented exit
status, nothing of an earlier run is lost, and a resumed run logs what the uninterrupted one does."""
import csv
import json
import math
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import load_script
from test_train import tiny_run_config, tiny_set  # noqa: F401  (tiny_set: a fixture)

from sec import run_folder
from sec.caffe import formats
from sec.caffe.weights import copy_weights

SCRIPT = load_script("training/train.py")
LOSS_COLUMNS = ("loss", "smoothed_loss", "loss-Seed", "loss-Expand", "loss-Constrain", "lr")
CONV1 = [np.full((16, 3, 3, 3), 0.01, np.float32), np.zeros(16, np.float32)]


def write_solver(tmp_path, **fields):
    """A solver for the tiny net: snapshots every 2 iterations, smoothed loss over 3, log every one."""
    values = dict(base_lr=0.01, lr_policy='"fixed"', momentum=0.9, weight_decay=0.0005, display=1,
                  average_loss=3, snapshot=2, max_iter=6, random_seed=0)
    values.update(fields)
    path = tmp_path / "solver.prototxt"
    path.write_text(f'net: "{tmp_path / "train.prototxt"}"\nsnapshot_prefix: "{tmp_path / "unused"}"\n'
                    + "".join(f"{key}: {value}\n" for key, value in values.items()))
    return path


def cli(tiny_set, tmp_path, capsys, *extra, runs=None, cues=None, listing=None):
    """training/train.py on the tiny set with the tiny net and solver; returns (status, stdout, stderr)."""
    tiny_run_config(tiny_set, tmp_path)              # writes train.prototxt / deploy.prototxt into tmp_path
    if not (tmp_path / "solver.prototxt").is_file():
        write_solver(tmp_path)
    argv = ["--synthetic-dir", str(tiny_set), "--list", str(listing or tiny_set / "train.txt"),
            "--cues", str(cues or tiny_set / "cues.pickle"), "--net", str(tmp_path / "train.prototxt"),
            "--solver", str(tmp_path / "solver.prototxt"), "--runs", str(runs or tmp_path / "runs"),
            "--name", "t", "--batch", "2", "--device", "cpu", "--no-eval", *[str(e) for e in extra]]
    status = SCRIPT.main(SCRIPT.build_parser().parse_args(argv), argv)
    out, err = capsys.readouterr()
    return status, out, err


def logged_losses(text):
    """{iteration: smoothed loss} of a train.log's display lines (a later line wins: the resumed one)."""
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"Iteration (\d+)(?: \([^)]*\))?, loss = (\S+)", text)}


def rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def fake_run(folder, name="t"):
    """An earlier run's files: two snapshots and a losses.csv; returns {path: bytes}."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for it in (2, 4):
        for suffix in (".caffemodel", ".solverstate", ".solverstate.rng"):
            path = folder / f"{name}_iter_{it}{suffix}"
            path.write_bytes(f"{it}{suffix}".encode())
            files[path] = path.read_bytes()
    (folder / "losses.csv").write_text("iter,loss\n0,1.0\n")
    files[folder / "losses.csv"] = (folder / "losses.csv").read_bytes()
    return files


# ----- an earlier run is never destroyed ---------------------------------------------------------
def test_a_new_run_into_a_used_folder_is_refused_and_nothing_is_lost(tiny_set, tmp_path, capsys):
    runs = tmp_path / "runs"
    files = fake_run(runs / "t")
    latest = runs / "latest.json"
    latest.write_text(json.dumps({"weights": str(runs / "t" / "t_iter_4.caffemodel")}))
    status, _, err = cli(tiny_set, tmp_path, capsys)
    assert status == SCRIPT.EXIT_MISSING_INPUT
    assert "--resume" in err and "--overwrite" in err and str(runs / "t") in err and len(err.splitlines()) == 1
    assert {path: path.read_bytes() for path in files} == files
    assert json.loads(latest.read_text())["weights"].endswith("t_iter_4.caffemodel")


def test_overwrite_deletes_the_earlier_run_and_a_latest_json_naming_it(tmp_path):
    runs = tmp_path / "runs"
    files = fake_run(runs / "t")
    (runs / "t" / "t_other.txt").write_text("kept")
    latest = runs / "latest.json"
    latest.write_text(json.dumps({"weights": str(runs / "t" / "t_iter_4.caffemodel")}))
    deleted = run_folder.prepare_new_run(runs / "t", "t", overwrite=True, runs_root=runs)
    assert set(deleted) == set(files) | {latest}
    assert not any(path.exists() for path in deleted) and (runs / "t" / "t_other.txt").is_file()
    elsewhere = fake_run(tmp_path / "other" / "t")          # latest.json naming another run stays
    latest.write_text(json.dumps({"weights": str(runs / "x.caffemodel")}))
    run_folder.prepare_new_run(tmp_path / "other" / "t", "t", overwrite=True, runs_root=runs)
    assert latest.is_file() and not any(path.exists() for path in elsewhere)


@pytest.mark.parametrize("flag, value", [("--iters", "0"), ("--iters", "-5"), ("--batch", "0"), ("--gpus", "0")])
def test_non_positive_counts_are_usage_errors(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        SCRIPT.build_parser().parse_args([flag, value])
    assert exit_info.value.code == 2 and flag in capsys.readouterr().err


def test_stale_temporary_files_of_the_run_are_removed(tmp_path):
    stale = [tmp_path / ".t_iter_4.caffemodel.1a2b3c4d.tmp", tmp_path / ".t_iter_4.solverstate.0f0f0f0f.tmp"]
    for path in stale:
        path.write_bytes(b"partial")
    other = tmp_path / ".u_iter_4.caffemodel.1a2b3c4d.tmp"
    other.write_bytes(b"another run's")
    assert run_folder.remove_stale_temporaries(tmp_path, "t") == 2
    assert not any(path.exists() for path in stale) and other.exists()


# ----- bad inputs: one line, exit status 2, before any training -------------------------------------
def test_cuda_without_a_gpu_is_one_line(tiny_set, tmp_path, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    status, _, err = cli(tiny_set, tmp_path, capsys, "--device", "cuda")
    assert status == 2 and "--device cuda" in err and "Traceback" not in err


@pytest.mark.parametrize("content", [b"garbage\n", b"\x80\x04\x95\x00\x00", b"\x1f\x8b\x08broken gzip", b"[1, 2]"])
def test_an_unreadable_cue_file_is_named(tiny_set, tmp_path, capsys, content):
    cues = tmp_path / "bad.pickle"
    cues.write_bytes(content)
    status, _, err = cli(tiny_set, tmp_path, capsys, cues=cues)
    assert status == 2 and str(cues) in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs" / "t").exists()


def test_every_id_of_the_list_needs_cues(tiny_set, tmp_path, capsys):
    with open(tiny_set / "cues.pickle", "rb") as handle:
        cues = pickle.load(handle)
    last_id = (tiny_set / "train.txt").read_text().split()[-1]
    del cues[f"{last_id}_cues"]                     # the last image would only fail when its batch came
    cues_path = tmp_path / "cues.pickle"
    with open(cues_path, "wb") as handle:
        pickle.dump(cues, handle)
    status, _, err = cli(tiny_set, tmp_path, capsys, cues=cues_path)
    assert status == 2 and str(cues_path) in err and f"id {last_id}" in err and "1 of the 12 ids" in err


def test_every_image_of_the_list_must_exist(tiny_set, tmp_path, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text((tiny_set / "train.txt").read_text() + "missing.png 0\n")
    status, _, err = cli(tiny_set, tmp_path, capsys, listing=listing)
    assert status == 2 and str(listing) in err and "line 13: missing.png" in err


def test_weights_matching_no_layer_and_nan_weights_are_refused(tiny_set, tmp_path, capsys):
    stranger = tmp_path / "stranger.caffemodel"
    formats.write_caffemodel(stranger, "x", [("other", "Convolution", [np.ones((2, 2))])])
    status, _, err = cli(tiny_set, tmp_path, capsys, "--weights", stranger)
    assert status == 2 and "no layer of the file matches" in err and "other" in err
    poisoned = tmp_path / "nan.caffemodel"
    formats.write_caffemodel(poisoned, "x", [("conv1_1", "Convolution", [CONV1[0] * np.nan, CONV1[1]])])
    status, _, err = cli(tiny_set, tmp_path, capsys, "--weights", poisoned, "--overwrite")
    assert status == 2 and "layer 'conv1_1' blob 0" in err and "non-finite" in err


# ----- resume, kill -9, divergence (real training) -----------------------------------------------
@pytest.mark.slow
def test_resume_after_a_kill_logs_what_the_uninterrupted_run_logs(tiny_set, tmp_path, capsys):
    """Straight: 6 iterations. Interrupted: 5 iterations, then its newest snapshot (5) truncated as
    by a crash and a stale .tmp left; --resume falls back to snapshot 4, says so, and losses.csv and
    the logged losses equal the straight run's. Initial weights fill conv1_1 only: train.log names
    the layers that kept their fillers and the ignored source layer."""
    init = tmp_path / "init.caffemodel"
    formats.write_caffemodel(init, "init", [("conv1_1", "Convolution", CONV1),
                                             ("conv9", "Convolution", [np.ones((1, 1))])])
    status, _, err = cli(tiny_set, tmp_path, capsys, "--weights", init, "--iters", 6, runs=tmp_path / "a")
    assert status == 0, err
    straight = rows(tmp_path / "a" / "t" / "losses.csv")
    log_a = (tmp_path / "a" / "t" / "train.log").read_text()
    assert "Ignoring source layer conv9" in log_a and "fc8-SEC" in log_a and "filler" in log_a

    status, _, err = cli(tiny_set, tmp_path, capsys, "--weights", init, "--iters", 5, runs=tmp_path / "b")
    assert status == 0, err
    run = tmp_path / "b" / "t"
    newest = run / "t_iter_5.solverstate"
    newest.write_bytes(newest.read_bytes()[:40])
    (run / ".t_iter_6.caffemodel.deadbeef.tmp").write_bytes(b"half a snapshot")
    status, out, err = cli(tiny_set, tmp_path, capsys, "--iters", 6, "--resume", runs=tmp_path / "b")
    assert status == 0, err
    assert f"skipped unreadable snapshot {newest}" in out
    assert f"resuming from {run / 't_iter_4.solverstate'} at iteration 4" in out
    assert str(run / "t_iter_4.caffemodel") in out
    assert not list(run.glob(".*.tmp"))
    resumed = rows(run / "losses.csv")
    assert [r["iter"] for r in resumed] == [r["iter"] for r in straight] == [str(i) for i in range(6)]
    for a, b in zip(straight, resumed):
        assert [a[k] for k in LOSS_COLUMNS] == [b[k] for k in LOSS_COLUMNS], a["iter"]
    assert logged_losses((run / "train.log").read_text()) == logged_losses(log_a)


@pytest.mark.slow
def test_divergence_ends_with_status_3_and_keeps_only_finite_snapshots(tiny_set, tmp_path, capsys):
    """base_lr 1e6: whichever layer sees the NaN/Inf first (the CRF refuses such scores before any
    loss exists), training stops with exit status 3 naming the blob; every kept snapshot loads."""
    write_solver(tmp_path, base_lr=1e6, snapshot=1, max_iter=12)
    status, _, err = cli(tiny_set, tmp_path, capsys)
    assert status == SCRIPT.EXIT_NONFINITE, err
    message = [line for line in err.splitlines() if line.startswith("train.py:")]
    assert len(message) == 1 and "Traceback" not in err, err
    print(message[0])
    assert "non-finite" in message[0] or "is nan" in message[0] or "is inf" in message[0]
    kept = sorted((tmp_path / "runs" / "t").glob("t_iter_*.caffemodel"))
    for model in kept:
        net = formats.read_caffemodel(model)
        targets = {layer.name: [__import__("torch").zeros(formats.blob_shape(b)) for b in layer.blobs]
                   for layer in net.layer}
        copy_weights(model, targets)                  # raises on NaN/Inf
    assert not (tmp_path / "runs" / "latest.json").exists()
    assert all(math.isfinite(float(r["loss"])) for r in rows(tmp_path / "runs" / "t" / "losses.csv"))


def test_only_the_named_snapshot_files_count_as_a_run(tmp_path):
    (tmp_path / "t_train.prototxt").write_text("")
    (tmp_path / "input_list.txt").write_text("")
    assert run_folder.prepare_new_run(tmp_path, "t", overwrite=False) == []
    assert os.listdir(tmp_path) and Path(tmp_path / "t_train.prototxt").is_file()


# ----- the localization stage ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    from sec import synthetic
    folder = tmp_path_factory.mktemp("syn")
    synthetic.generate(folder, 4, 0, seed=2)
    return folder


def localization_argv(small_set, tmp_path, *extra):
    return ["--net", "bg", "--list", str(small_set / "train.txt"), "--root", str(small_set / "images"),
            "--labels", str(small_set / "train_labels.json"), "--run-dir", str(tmp_path / "run"),
            "--out", str(tmp_path / "bg.caffemodel"), "--iters", "2", "--device", "cpu", *extra]


def test_train_localization_refuses_a_used_run_folder(small_set, tmp_path, capsys):
    script = load_script("training/train_localization.py")
    files = fake_run(tmp_path / "run", name="bg")
    argv = localization_argv(small_set, tmp_path)
    assert script.main(script.build_parser().parse_args(argv)) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err
    assert {path: path.read_bytes() for path in files} == files
    (tmp_path / "run" / "bg_iter_4.solverstate").write_bytes(b"")      # --resume with only damaged snapshots
    (tmp_path / "run" / "bg_iter_2.solverstate").write_bytes(b"\xff")
    assert script.main(script.build_parser().parse_args(argv + ["--resume"])) == 2
    assert "no readable snapshot" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.build_parser().parse_args(localization_argv(small_set, tmp_path, "--iters", "0"))
    assert "--iters" in capsys.readouterr().err


def test_make_cues_refuses_nets_with_layers_left_at_their_fillers(small_set, tmp_path, capsys):
    from sec import caffe
    models = Path(__file__).resolve().parents[1] / "models" / "localization" / "synthetic"
    weights = {}
    for which in ("fg", "bg"):
        net = caffe.Net(str(models / f"{which}.prototxt"), caffe.TEST)
        layers = [(n, t, [b.detach().numpy() for b in blobs]) for n, t, blobs in net.layer_params() if blobs]
        if which == "bg":
            dropped = layers.pop()[0]
        weights[which] = tmp_path / f"{which}.caffemodel"
        formats.write_caffemodel(weights[which], which, layers)
    make_cues = load_script("training/make_cues.py")
    argv = ["--list", str(small_set / "train.txt"), "--root", str(small_set / "images"),
            "--labels", str(small_set / "train_labels.json"), "--fg-weights", str(weights["fg"]),
            "--bg-weights", str(weights["bg"]), "--out", str(tmp_path / "cues.pickle"), "--no-report"]
    assert make_cues.main(make_cues.build_parser().parse_args(argv)) == 2
    err = capsys.readouterr().err
    assert str(weights["bg"]) in err and f"'{dropped}'" in err and not (tmp_path / "cues.pickle").exists()


KILL_MID_SNAPSHOT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from test_solver import SGDSolver, TinyNet
solver = SGDSolver({solver!r}, net_factory=TinyNet)
solver.step(2)
solver.snapshot()
solver.step(2)
def killed(src, dst):          # kill -9 once the first file of the iteration-4 snapshot is written
    os.kill(os.getpid(), signal.SIGKILL)
os.replace = killed
solver.snapshot()
"""


@pytest.mark.slow
def test_kill_9_mid_snapshot_keeps_a_readable_snapshot_and_resumes_bitwise(tmp_path):
    """A real SIGKILL inside the snapshot write: the previous snapshot is intact, the half-written
    temporary file is cleaned at the next start, and the resumed run equals the uninterrupted one."""
    import subprocess
    import sys
    import torch
    from test_solver import SGDSolver, TinyNet, params_of
    from test_solver import write_solver as write_tiny_solver
    from sec.caffe.solver import snapshot_paths
    solver_path = write_tiny_solver(tmp_path)
    script = KILL_MID_SNAPSHOT.format(tests=str(Path(__file__).parent), solver=str(solver_path))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == -9, result.stderr
    folder = tmp_path / "snap"
    assert len(list(folder.glob(".tiny_iter_4.*.tmp"))) == 1           # what kill -9 leaves behind
    state = snapshot_paths(folder / "tiny", 2)[1]
    assert not Path(snapshot_paths(folder / "tiny", 4)[1]).exists()
    assert run_folder.remove_stale_temporaries(folder, "tiny") == 1
    straight = SGDSolver(solver_path, net_factory=TinyNet)
    straight.step(6)
    resumed = SGDSolver(solver_path, net_factory=TinyNet)
    resumed.restore(state)
    resumed.step(4)
    for a, b in zip(params_of(straight.net), params_of(resumed.net)):
        assert np.array_equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(straight.history, resumed.history))


def test_a_run_without_snapshots_is_refused_without_offering_resume(tmp_path):
    (tmp_path / "losses.csv").write_text("iter,loss\n0,1.0\n")
    with pytest.raises(run_folder.RunInputError, match="no snapshot to resume from.*--overwrite") as info:
        run_folder.prepare_new_run(tmp_path, "t", overwrite=False)
    assert "--resume" not in str(info.value) and (tmp_path / "losses.csv").is_file()
