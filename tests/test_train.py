"""models/ prototxts, sec.train helpers, training/train.sh, and a short end-to-end run."""
import csv
import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import load_script, write_tiny_voc

from sec.caffe import formats
from sec.train import (LossLog, RunConfig, latest_snapshot, prepare_new_run, plot_losses, rank_batch,
                       shard_list, write_caffe_files, write_latest)

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS = REPO_ROOT / "models"
TRAIN_SH = REPO_ROOT / "training" / "train.sh"


# ----- prototxts ----------------------------------------------------------------------------------
def layers_by_name(path):
    return {layer.name: layer for layer in formats.read_net_prototxt(str(path)).layer}


def output_side(path, side, last="fc8-SEC"):
    """Spatial side of `last` computed with Caffe's conv and (ceil) pooling size rules."""
    sizes = {"images": side}
    for layer in formats.read_net_prototxt(str(path)).layer:
        if layer.type == "Convolution":
            p = layer.convolution_param
            k, pad = p.kernel_size[0], (p.pad[0] if p.pad else 0)
            dil, stride = (p.dilation[0] if p.dilation else 1), (p.stride[0] if p.stride else 1)
            h = sizes[layer.bottom[0]]
            sizes[layer.top[0]] = (h + 2 * pad - (dil * (k - 1) + 1)) // stride + 1
        elif layer.type == "Pooling":
            p = layer.pooling_param
            h = sizes[layer.bottom[0]]
            out = math.ceil((h + 2 * p.pad - p.kernel_size) / p.stride) + 1
            if p.pad and (out - 1) * p.stride >= h + p.pad:
                out -= 1
            sizes[layer.top[0]] = out
        elif layer.type in ("ReLU", "Dropout", "BatchNorm", "Scale") and layer.bottom[0] in sizes:
            sizes[layer.top[0]] = sizes[layer.bottom[0]]
    return sizes[last]


@pytest.mark.parametrize("net, side, expected", [
    (MODELS / "sec" / "train.prototxt", 321, 41),
    (MODELS / "synthetic" / "train.prototxt", 161, 21),
    (MODELS / "synthetic" / "deploy.prototxt", 161, 21),
])
def test_nets_have_the_stride_8_deeplab_geometry(net, side, expected):
    assert output_side(net, side) == expected


def test_sec_train_net_is_the_papers():
    layers = layers_by_name(MODELS / "sec" / "train.prototxt")
    data = layers["data"]
    assert list(data.top) == ["images", "ids"]
    d = data.image_data_param
    assert (d.batch_size, d.new_height, d.new_width, d.shuffle) == (15, 321, 321, True)
    assert list(data.transform_param.mean_value) == [104, 117, 123]
    fc8 = layers["fc8-SEC"]
    assert fc8.convolution_param.num_output == 21
    assert fc8.convolution_param.weight_filler.type == "gaussian"
    assert fc8.convolution_param.weight_filler.std == pytest.approx(0.01)
    assert [(p.lr_mult, p.decay_mult) for p in fc8.param] == [(10, 1), (20, 0)]
    assert [(p.lr_mult, p.decay_mult) for p in layers["conv3_2"].param] == [(1, 1), (2, 0)]
    assert layers["fc6"].convolution_param.dilation[0] == 12
    assert layers["fc6"].convolution_param.num_output == 1024
    assert all(layers[f"conv5_{i}"].convolution_param.dilation[0] == 2 for i in (1, 2, 3))
    assert layers["pool5a"].pooling_param.pool == layers["pool5a"].pooling_param.AVE
    expected = {"annotation": ("AnnotationLayer", ["ids"], ["labels", "cues"]),
                "fc8-SEC-Softmax": ("SoftmaxLayer", ["fc8-SEC"], ["fc8-SEC-Softmax"]),
                "fc8-SEC-CRF-log": ("CRFLayer", ["fc8-SEC", "images"], ["fc8-SEC-CRF-log"]),
                "loss-Seed": ("SeedLossLayer", ["fc8-SEC-Softmax", "cues"], ["loss-Seed"]),
                "loss-Expand": ("ExpandLossLayer", ["fc8-SEC-Softmax", "labels"], ["loss-Expand"]),
                "loss-Constrain": ("ConstrainLossLayer", ["fc8-SEC-Softmax", "fc8-SEC-CRF-log"],
                                   ["loss-Constrain"])}
    for name, (cls, bottoms, tops) in expected.items():
        layer = layers[name]
        assert (layer.type, layer.python_param.module, layer.python_param.layer) == ("Python", "pylayers", cls)
        assert (list(layer.bottom), list(layer.top)) == (bottoms, tops)
        assert list(layer.loss_weight) == ([1.0] if name.startswith("loss-") else [])
    assert yaml.safe_load(layers["annotation"].python_param.param_str)["cue_size"] == 41


def test_synthetic_net_matches_the_dataset():
    from sec import synthetic
    layers = layers_by_name(MODELS / "synthetic" / "train.prototxt")
    assert layers["fc8-SEC"].convolution_param.num_output == len(synthetic.CLASSES)
    params = yaml.safe_load(layers["annotation"].python_param.param_str)
    assert (params["num_classes"], params["cue_size"]) == (len(synthetic.CLASSES), 21)
    deploy = layers_by_name(MODELS / "synthetic" / "deploy.prototxt")
    learnable = [n for n, layer in layers.items() if layer.type == "Convolution"]
    assert learnable == [n for n, layer in deploy.items() if layer.type == "Convolution"]
    for name in learnable:
        assert deploy[name].convolution_param == layers[name].convolution_param


def test_sec_train_layer_names_match_the_deploy_net():
    deploy_path = MODELS / "sec" / "deploy.prototxt"
    if not deploy_path.is_file():
        pytest.skip(f"{deploy_path} (owned by the engine) is not there yet")
    train = layers_by_name(MODELS / "sec" / "train.prototxt")
    deploy = layers_by_name(deploy_path)
    learnable = [n for n, layer in deploy.items() if layer.type == "Convolution"]
    assert learnable and all(n in train for n in learnable)
    for name in learnable:
        a, b = deploy[name].convolution_param, train[name].convolution_param
        assert (a.num_output, list(a.kernel_size), list(a.dilation), list(a.pad)) == \
               (b.num_output, list(b.kernel_size), list(b.dilation), list(b.pad)), name


def test_sec_solver_is_the_papers():
    s = formats.read_solver_prototxt(str(MODELS / "sec" / "solver.prototxt"))
    assert (s.lr_policy, s.stepsize, s.max_iter, s.snapshot, s.random_seed) == ("step", 2000, 8000, 1000, 0)
    assert (s.base_lr, s.gamma, s.momentum, s.weight_decay) == pytest.approx((1e-3, 0.1, 0.9, 5e-4))


# ----- helpers ------------------------------------------------------------------------------------
def test_rank_batch_splits_the_global_batch():
    assert [rank_batch(15, r, 2) for r in range(2)] == [8, 7]
    assert [rank_batch(15, r, 4) for r in range(4)] == [4, 4, 4, 3]
    assert sum(rank_batch(15, r, 3) for r in range(3)) == 15
    with pytest.raises(ValueError, match="smaller"):
        rank_batch(2, 0, 4)


def test_shard_list_partitions_the_lines(tmp_path):
    source = tmp_path / "list.txt"
    source.write_text("".join(f"img{i}.jpg {i}\n" for i in range(7)))
    shards = [shard_list(source, tmp_path / f"s{r}.txt", r, 3).read_text().split("\n") for r in range(3)]
    ids = sorted(int(line.split()[1]) for shard in shards for line in shard if line)
    assert ids == list(range(7))


def test_loss_log_truncates_on_resume_and_plots(tmp_path):
    class FakeSolver:
        last_lr, smoothed_loss = 0.1, 1.0
        last_timings = {"forward": 0.1, "backward": 0.2, "update": 0.01}

    path = tmp_path / "losses.csv"
    log = LossLog(path)
    solver = FakeSolver()
    for it in range(1, 6):
        solver.iter, solver.last_outputs = it, {"loss": 3.0 / it, "loss-Seed": 1.0 / it}
        log.append(solver)
    log.close()
    log = LossLog(path, resume_iter=3)
    solver.iter, solver.last_outputs = 4, {"loss": 9.0, "loss-Seed": 9.0}
    log.append(solver)
    log.close()
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["iter"]) for r in rows] == [0, 1, 2, 3]
    assert float(rows[-1]["loss"]) == 9.0 and float(rows[1]["loss-Seed"]) == 0.5
    png = plot_losses(path, tmp_path / "losses.png")
    assert Path(png).stat().st_size > 1000


def test_latest_snapshot_and_overwrite_clear_only_that_run(tmp_path):
    for it in (2, 10, 4):
        (tmp_path / f"run_iter_{it}.solverstate").write_bytes(b"")
        (tmp_path / f"run_iter_{it}.caffemodel").write_bytes(b"")
    (tmp_path / "other_iter_99.solverstate").write_bytes(b"")
    assert latest_snapshot(tmp_path, "run").name == "run_iter_10.solverstate"
    prepare_new_run(tmp_path, "run", overwrite=True)
    assert latest_snapshot(tmp_path, "run") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other_iter_99.solverstate"]


def test_write_latest_and_caffe_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="w.caffemodel"):      # never names a missing file
        write_latest(tmp_path, tmp_path / "w.caffemodel", "d.prototxt", "synthetic", 7, "data")
    assert not (tmp_path / "latest.json").exists()
    (tmp_path / "w.caffemodel").write_bytes(b"x")
    info = write_latest(tmp_path, tmp_path / "w.caffemodel", "d.prototxt", "synthetic", 7, "data")
    assert json.loads((tmp_path / "latest.json").read_text()) == info
    assert set(info) == {"weights", "deploy_prototxt", "classes", "num_classes", "dataset"}
    cfg = RunConfig(name="r", solver=MODELS / "sec" / "solver.prototxt", net=MODELS / "sec" / "train.prototxt",
                    deploy=MODELS / "sec" / "deploy.prototxt", runs_root=tmp_path, classes="voc",
                    num_classes=21, dataset=tmp_path, source=tmp_path / "list.txt", root_folder="/voc/JPEGImages/",
                    cues=tmp_path / "cues.pickle", batch=10, iters=50)
    solver = formats.read_solver_prototxt(str(write_caffe_files(cfg)))
    assert (solver.max_iter, solver.base_lr) == (50, pytest.approx(1e-3))
    net = layers_by_name(solver.net)
    assert net["data"].image_data_param.batch_size == 10
    assert net["data"].image_data_param.root_folder == "/voc/JPEGImages/"
    assert yaml.safe_load(net["annotation"].python_param.param_str)["cues"] == str(tmp_path / "cues.pickle")


# ----- train.sh -----------------------------------------------------------------------------------
def run_train_sh(*args, cwd=REPO_ROOT):
    return subprocess.run(["bash", str(TRAIN_SH), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_train_sh_help_documents_every_flag():
    result = run_train_sh("--help")
    assert result.returncode == 0, result.stderr
    for flag in ("--voc", "--cues", "--weights", "--list", "--gpus", "--device", "--engine", "--resume",
                 "--iters", "--batch", "--seed"):
        assert flag in result.stdout


@pytest.mark.slow
def test_train_sh_voc_form_runs_on_a_tiny_voc_fixture(tmp_path):
    """The paper's form (faithful DeepLab-LargeFOV prototxts at 321x321) on a VOC-shaped folder:
    list written from trainaug.txt, cues keyed by those ids, init weights copied by name."""
    fixture = write_tiny_voc(tmp_path)
    voc = fixture["voc"]
    conv1 = formats.blob_to_array(formats.read_caffemodel(fixture["weights"]).layer[0].blobs[0])
    runs = tmp_path / "runs"
    result = subprocess.run(
        ["bash", str(TRAIN_SH), "--voc", str(voc), "--cues", str(tmp_path / "cues.pickle"),
         "--weights", str(tmp_path / "init.caffemodel"), "--iters", "1", "--batch", "2", "--device", "cpu",
         "--name", "voc", "--runs", str(runs)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    latest = json.loads((runs / "latest.json").read_text())
    assert latest["classes"] == "voc" and latest["num_classes"] == 21
    trained = formats.read_caffemodel(latest["weights"])
    blobs = {layer.name: layer.blobs for layer in trained.layer}
    # conv1_1 started from the given weights and moved by one SGD step; fc8-SEC exists with 21 outputs.
    start = conv1
    after = formats.blob_to_array(blobs["conv1_1"][0])
    assert after.shape == start.shape and not np.array_equal(after, start)
    assert np.abs(after - start).max() < 0.01
    assert formats.blob_to_array(blobs["fc8-SEC"][0]).shape[0] == 21
    rows = list(csv.DictReader(open(runs / "voc" / "losses.csv")))
    assert rows and all(math.isfinite(float(v)) for k, v in rows[-1].items() if k.startswith("loss"))


def test_train_sh_names_missing_inputs(tmp_path):
    voc = tmp_path / "VOC2012"
    result = run_train_sh("--voc", str(voc), "--cues", "c.pickle", "--weights", "w.caffemodel")
    assert result.returncode == 2 and "w.caffemodel" in result.stderr
    weights = tmp_path / "w.caffemodel"
    weights.write_bytes(b"")
    result = run_train_sh("--voc", str(voc), "--cues", "c.pickle", "--weights", str(weights))
    assert result.returncode == 2 and str(voc) in result.stderr
    (voc / "JPEGImages").mkdir(parents=True)
    result = run_train_sh("--voc", str(voc), "--cues", str(tmp_path / "nope.pickle"), "--weights", str(weights))
    assert result.returncode == 2 and "nope.pickle" in result.stderr


# ----- with the real engine, layers and CRF on a tiny synthetic set -------------------------------
TINY_IMAGE = 80          # generated image side; the net reads 81 x 81 -> 11 x 11 score maps
TINY_NET_SIDE = 81
TINY_CUE_SIDE = 11


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    from sec import synthetic
    folder = tmp_path_factory.mktemp("synthetic")
    synthetic.generate(folder, 12, 4, seed=0, image_size=TINY_IMAGE, cue_size=TINY_CUE_SIDE)
    return folder


def tiny_solver(tiny_set, tmp_path, batch=4, **kw):
    from sec.caffe.solver import NetOverrides, SGDSolver
    overrides = NetOverrides(batch_size=batch, image_size=TINY_NET_SIDE, source=str(tiny_set / "train.txt"),
                             root_folder=str(tiny_set / "images") + "/",
                             python_params={"AnnotationLayer": {"cues": str(tiny_set / "cues.pickle"),
                                                                "cue_size": TINY_CUE_SIDE}})
    return SGDSolver(MODELS / "synthetic" / "solver.prototxt", net=MODELS / "synthetic" / "train.prototxt",
                     snapshot_prefix=tmp_path / "snap" / "tiny", net_overrides=overrides, **kw)


def fixed_batch_losses(solver, feed):
    import torch
    torch.manual_seed(7)                        # same dropout masks for both measurements
    with torch.no_grad():
        outputs = solver.net.run(feed)
    return {name: float(outputs[name]) for name in solver.net.loss_weights}


@pytest.mark.slow
def test_a_few_iterations_lower_every_loss(tiny_set, tmp_path):
    import torch
    solver = tiny_solver(tiny_set, tmp_path, batch=6)
    images, ids = solver.net.data_layers()[0].next_batch()
    feed = {"images": torch.from_numpy(images), "ids": torch.from_numpy(ids)}
    before = fixed_batch_losses(solver, feed)
    solver.step(15)
    after = fixed_batch_losses(solver, feed)
    assert set(before) == {"loss-Seed", "loss-Expand", "loss-Constrain"}
    for name in before:
        assert after[name] < before[name], (name, before[name], after[name])


@pytest.mark.slow
def test_resume_with_the_real_net_is_bitwise(tiny_set, tmp_path):
    straight = tiny_solver(tiny_set, tmp_path / "a", batch=3)
    straight.step(6)
    first = tiny_solver(tiny_set, tmp_path / "b", batch=3)
    first.step(3)
    state = first.snapshot()
    resumed = tiny_solver(tiny_set, tmp_path / "c", batch=3)
    resumed.net.data_layers()[0].next_batch()   # move the data on: restore must bring it back
    resumed.restore(state)
    resumed.step(3)
    for a, b in zip(straight.params, resumed.params):
        assert a.param.detach().equal(b.param.detach()), a.layer


def tiny_run_config(tiny_set, tmp_path, **fields):
    """RunConfig 't' of the synthetic recipe on the tiny set (batch 2, 3 iterations; `fields`
    override), with the train and deploy nets rewritten for its 81 x 81 input (written to tmp_path)."""
    cfg = RunConfig(name="t", solver=MODELS / "synthetic" / "solver.prototxt",
                    net=tmp_path / "train.prototxt", deploy=tmp_path / "deploy.prototxt",
                    runs_root=tmp_path / "runs", classes="synthetic", num_classes=7, dataset=tiny_set,
                    source=tiny_set / "train.txt", root_folder=str(tiny_set / "images") + "/",
                    cues=tiny_set / "cues.pickle", batch=2, iters=3)
    for key, value in fields.items():
        setattr(cfg, key, value)
    deploy = (MODELS / "synthetic" / "deploy.prototxt").read_text()
    (tmp_path / "deploy.prototxt").write_text(deploy.replace("dim: 161", f"dim: {TINY_NET_SIDE}"))
    # the tiny set's 11 x 11 cues need the 81 x 81 input; rewrite the net the way overrides do
    train_net = (MODELS / "synthetic" / "train.prototxt").read_text()
    (tmp_path / "train.prototxt").write_text(train_net.replace("new_height: 161", f"new_height: {TINY_NET_SIDE}")
                                             .replace("new_width: 161", f"new_width: {TINY_NET_SIDE}")
                                             .replace('"cue_size": 21', f'"cue_size": {TINY_CUE_SIDE}'))
    return cfg


@pytest.mark.slow
def test_train_run_writes_the_run_folder_and_evaluates(tiny_set, tmp_path, capsys):
    from sec import train as sec_train
    cfg = tiny_run_config(tiny_set, tmp_path)
    weights = sec_train.train(cfg)
    assert Path(weights).name == "t_iter_3.caffemodel" and Path(weights).is_file()
    run = cfg.run_dir
    with open(run / "losses.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["iter"]) for r in rows] == [0, 1, 2]
    assert {"loss-Seed", "loss-Expand", "loss-Constrain", "forward_s"} <= set(rows[0])
    assert (run / "losses.png").is_file() and "Iteration 0, lr = " in (run / "train.log").read_text()
    sec_train.finish(cfg, weights)
    latest = json.loads((tmp_path / "runs" / "latest.json").read_text())
    assert latest["weights"] == str(Path(weights).resolve()) and latest["num_classes"] == 7
    summary = json.loads((run / "eval.json").read_text())
    assert summary["num_images"] == 4 and 0.0 <= summary["miou"] <= 1.0
    assert (run / "panels.png").is_file()
    assert "mIoU" in capsys.readouterr().out
    cfg.resume, cfg.iters = True, 5                # continue the same run to iteration 5
    weights = sec_train.train(cfg)
    assert Path(weights).name == "t_iter_5.caffemodel"
    with open(run / "losses.csv", newline="") as handle:
        assert [int(r["iter"]) for r in csv.DictReader(handle)] == [0, 1, 2, 3, 4]


def test_evaluate_refuses_weights_that_leave_a_layer_at_its_filler(tiny_set, tmp_path):
    """sec.train.evaluate, like deploy, errors (naming the layer) instead of scoring a net part of
    which kept its random fillers."""
    from sec import caffe, train as sec_train
    from sec.caffe.weights import MissingWeightsError
    cfg = tiny_run_config(tiny_set, tmp_path)
    net = caffe.Net(str(cfg.deploy), caffe.TEST)
    first = next(name for name, blobs in net.params.items() if len(blobs))
    weights = tmp_path / "partial.caffemodel"
    formats.write_caffemodel(weights, "partial", [(first, "Convolution", [b.data for b in net.params[first]])])
    untouched = [name for name, blobs in net.params.items() if len(blobs) and name != first]
    with pytest.raises(MissingWeightsError, match=untouched[-1]):
        sec_train.evaluate(cfg.deploy, weights, tiny_set / "val.txt", str(tiny_set / "images") + "/",
                           tiny_set / "masks", 7)


# ----- the synthetic pipeline: shared trunk, stages --------------------------------------------
TRUNK_TYPES = ("Convolution", "BatchNorm", "Scale")


def test_synthetic_sec_net_shares_the_localization_trunk():
    """SEC starts from the fg net's weights copied by layer name: every learnable layer of the
    SEC body must exist in the fg (and bg) net with the same type and shapes; the heads differ."""
    train = layers_by_name(MODELS / "synthetic" / "train.prototxt")
    trunk = [n for n, layer in train.items() if layer.type in TRUNK_TYPES and not n.startswith("fc")]
    assert trunk[0] == "input_scale" and "conv4_1" in trunk and "bn4_1" in trunk
    for which in ("fg", "bg"):
        net = layers_by_name(MODELS / "localization" / "synthetic" / f"{which}.prototxt")
        for name in trunk:
            assert net[name].type == train[name].type, (which, name)
            assert net[name].convolution_param == train[name].convolution_param, (which, name)
            assert list(net[name].param) == list(train[name].param), (which, name)
        if which == "fg":       # SEC's head starts from its fillers, not from the CAM head
            assert not {"fc6", "fc7", "fc8-SEC"} & set(net)
        assert output_side(MODELS / "localization" / "synthetic" / f"{which}.prototxt", 161, "conv4_1") == 21


def _train_script():
    return load_script("training/train.py")


def test_pipeline_runs_only_missing_or_stale_stages(tmp_path, monkeypatch):
    script = _train_script()
    ran = []

    def fake_stage(name, command):      # what the real stage leaves behind: its --out file
        ran.append(name)
        out = Path(command[command.index("--out") + 1])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"x")

    monkeypatch.setattr(script, "run_stage", fake_stage)
    dataset = tmp_path / "syn"
    dataset.mkdir()
    (dataset / "manifest.json").write_text("{}")

    def stages(*flags):
        ran.clear()
        args = script.build_parser().parse_args(["--synthetic-dir", str(dataset), "--runs", str(tmp_path / "runs"),
                                                 *flags])
        files = script.localization_stages(args, script.needed_stages(args))
        return list(ran), files

    done, files = stages()
    assert done == ["fg", "bg", "cues"] and files["cues"] == tmp_path / "runs" / "localization" / "synthetic" / "cues.pickle"
    assert stages()[0] == []                                    # everything kept
    assert stages("--cues", "c.pickle")[0] == []                # fg kept; bg and cues not needed
    files["fg"].unlink()
    assert stages("--cues", "c.pickle")[0] == ["fg"]            # fg for the initial weights only
    assert stages("--cues", "c.pickle", "--weights", "w")[0] == []
    assert stages("--redo-localization")[0] == ["fg", "bg", "cues"]
    files["bg"].unlink()
    assert stages()[0] == ["bg", "cues"]                        # cues are redone after a new bg net
    later = files["cues"].stat().st_mtime + 5
    os.utime(files["fg"], (later, later))                       # fg retrained by hand after the cues
    assert stages()[0] == ["cues"]
    later += 5
    os.utime(dataset / "manifest.json", (later, later))         # a regenerated dataset: all stale
    assert stages("--localization-only")[0] == ["fg", "bg", "cues"]
    assert script.needed_stages(script.build_parser().parse_args(["--list", "l.txt"])) == set()


def test_a_failed_stage_stops_the_pipeline_with_its_status(tmp_path, monkeypatch, capsys):
    script = _train_script()
    monkeypatch.setattr(script, "prepare_synthetic", lambda folder: None)
    monkeypatch.setattr(script.launch, "run_child", lambda command, env=None: (1, False))     # every stage fails
    args = script.build_parser().parse_args(["--synthetic-dir", str(tmp_path), "--runs", str(tmp_path / "runs")])
    assert script.main(args) == script.EXIT_STAGE_FAILED
    assert "stage 'fg' failed with exit status 1" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "localization" / "synthetic" / "bg.caffemodel").exists()


def test_adam_solver_follows_caffes_update(tmp_path):
    from sec.caffe.solver import AdamSolver, SGDSolver, make_solver
    from test_solver import LinearNet, TinyNet, write_solver
    coefs = [(np.arange(8, dtype=np.float32).reshape(2, 4) / 8 - 0.3, np.array([0.5, -1.0], np.float32)),
             (np.full((2, 4), 0.2, np.float32), np.array([-0.25, 2.0], np.float32))]
    path = write_solver(tmp_path, type="Adam", base_lr=0.01, momentum=0.9, momentum2=0.99, delta=1e-6,
                        weight_decay=0.1)
    net = LinearNet(coefs)
    solver = make_solver(path, net_factory=lambda *_: net)
    assert isinstance(solver, AdamSolver)
    w, b = net.weight.detach().double().numpy().copy(), net.bias.detach().double().numpy().copy()
    moments = {"w": [np.zeros_like(w), np.zeros_like(w)], "b": [np.zeros_like(b), np.zeros_like(b)]}
    for t in range(1, 5):                               # by hand: (lr_mult, decay_mult) 1/1 and 2/0
        cw, cb = coefs[(t - 1) % 2]
        for key, value, grad, lr_mult in (("w", w, cw + 0.1 * w, 1.0), ("b", b, cb.astype(np.float64), 2.0)):
            m, v = moments[key]
            m[:] = 0.9 * m + 0.1 * grad
            v[:] = 0.99 * v + 0.01 * grad * grad
            value -= 0.01 * lr_mult * np.sqrt(1 - 0.99 ** t) / (1 - 0.9 ** t) * m / (np.sqrt(v) + 1e-6)
    solver.step(4)
    np.testing.assert_allclose(net.weight.detach().numpy(), w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.bias.detach().numpy(), b, rtol=1e-5, atol=1e-6)
    state = solver.snapshot()                           # m and v travel through the .solverstate
    again = AdamSolver(path, net_factory=lambda *_: LinearNet(coefs))
    again.restore(state)
    for saved, restored in zip(solver.history, again.history):
        assert restored.equal(saved)
    assert len(again.history) == 2 * len(again.params)
    (tmp_path / "sgd").mkdir()
    sgd = write_solver(tmp_path / "sgd")
    assert type(make_solver(sgd, net_factory=TinyNet)) is SGDSolver
    assert len(AdamSolver(sgd, net_factory=TinyNet).history) == 4      # pycaffe's class wins over the type
