"""sec.export: ONNX and TorchScript exports of deploy nets, against the engine and the real Caffe.

ONNX Runtime runs the exported graphs: on the SEC deploy net with the weights and images of
Caffe's fixture (compared with Caffe's own output), on every one-layer net of the Caffe fixtures
(each either exports and equals Caffe's top, or is refused naming the layer), on the synthetic
deploy net with random weights and with a few trained iterations, at other batch and image sizes.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import randomize_weights
from sec import caffe
from sec.export import ExportError, export, main, parse_args
from sec.export_trace import CHECK_TOL, need_module, relative_difference

pytest.importorskip("onnx", reason="the ONNX export needs the 'onnx' package (pip install onnx)")
ort = pytest.importorskip("onnxruntime", reason="the export checks need onnxruntime (pip install onnxruntime)")

# torch.jit.load's deprecation notice: loading TorchScript is what these tests check
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "caffe"
SYNTHETIC_DEPLOY = REPO / "models" / "synthetic" / "deploy.prototxt"
TINY_SIDE = 81           # the synthetic net's input side in these tests (11 x 11 scores)
CAFFE_TOL = 1e-5         # exported graph against the real Caffe's top (the engine's own gate: 2e-6)

# One-layer fixture nets (TEST phase) that are refused, by type, with the reason why: loss and label
# layers (the check feeds random values where labels or indices belong, or ONNX lacks the op),
# ArgMax (torch's sort with out=), SPP (sizes computed in Python), Python layers, Silence (no
# output); and nets without an input blob (Parameter, DummyData: nothing to feed).
REFUSED_TYPES = {"Accuracy", "ArgMax", "BatchReindex", "ContrastiveLoss", "Embed", "HingeLoss",
                 "MultinomialLogisticLoss", "Python", "SPP", "SigmoidCrossEntropyLoss", "Silence", "SoftmaxWithLoss"}
# Pooling padded beyond kernel / 2 (its padding computed in Python) and MAX pooling's mask top.
REFUSED_POOLING = {"pool_max_4_3_3", "pool_ave_4_3_3", "vision_pool_max_mask", "vision_pool_max_mask_wide_pad",
                   "vision_pool_max_mask_rect", "vision_pool_max_mask_ties", "vision_pool_max_global_mask_ties"}


def expected_refusal(case, net):
    return not net.inputs or case["type"] in REFUSED_TYPES or case["name"] in REFUSED_POOLING


def onnx_run(path, feed):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {name: np.ascontiguousarray(x, np.float32) for name, x in feed.items()})


def engine_run(net, feed, outputs=None):
    with torch.no_grad():
        values = net.run({name: torch.from_numpy(np.asarray(x, np.float32)) for name, x in feed.items()})
    return [values[name].numpy() for name in (outputs or net.outputs)]


def synthetic_deploy(tmp_path, side=TINY_SIDE):
    path = tmp_path / "deploy.prototxt"
    path.write_text(SYNTHETIC_DEPLOY.read_text().replace("dim: 161", f"dim: {side}"))
    return path


def fixture(name):
    manifest = json.loads((FIXTURES / f"{name}.json").read_text())
    with np.load(FIXTURES / f"{name}.npz") as data:
        return manifest, {key: data[key] for key in data.files}


# ---- the SEC deploy net, against the real Caffe ---------------------------------------------

def test_sec_deploy_net_exports_equal_to_caffe_and_the_engine(tmp_path):
    """Caffe's fixture: models/sec/deploy.prototxt with channels / 32 (every kernel, pad, stride,
    dilation, ceil-mode pooling, the Softmax), Caffe's weights and images and Caffe's output."""
    manifest, arrays = fixture("sec_nets")
    prototxt, weights = tmp_path / "deploy.prototxt", tmp_path / "sec.caffemodel"
    prototxt.write_text(manifest["deploy_prototxt"])
    weights.write_bytes((FIXTURES / "sec_init.caffemodel").read_bytes())
    tops = {}
    for rec in manifest["deploy"]:
        tops.update(zip(rec["tops"], rec["top_data"]))
    images, want = arrays[tops["images"]], arrays[tops["fc8-SEC-Softmax"]]
    assert main(parse_args(["--prototxt", str(prototxt), "--weights", str(weights), "--onnx",
                            str(tmp_path / "sec.onnx"), "--torchscript", str(tmp_path / "sec.pt")])) == 0
    (got,) = onnx_run(tmp_path / "sec.onnx", {"images": images})
    assert relative_difference(got, want) <= CAFFE_TOL
    scripted = torch.jit.load(str(tmp_path / "sec.pt"))
    assert relative_difference(scripted(torch.from_numpy(images))[0].numpy(), want) <= CAFFE_TOL
    # another batch and image size than the prototxt's 1 x 3 x 41 x 41: the graph is dynamic
    net = caffe.Net(str(prototxt), caffe.TEST, weights=str(weights))
    other = np.random.default_rng(1).normal(0, 60, (3, 3, 57, 42)).astype(np.float32)
    (got,) = onnx_run(tmp_path / "sec.onnx", {"images": other})
    (engine,) = engine_run(net, {"images": other})
    assert got.shape == engine.shape == (3, 21, 8, 7)
    assert relative_difference(got, engine) <= CHECK_TOL


# ---- every one-layer fixture net ------------------------------------------------------------

def one_layer_cases():
    cases = []
    for path in sorted(FIXTURES.glob("layers*.json")):
        manifest = json.loads(path.read_text())
        cases += [dict(case, fixture=path.stem) for case in manifest["cases"]
                  if case["phase"] == "TEST" and case["name"] != "input_two_tops"]
    return cases


LAYER_CASES = one_layer_cases()


@pytest.mark.slow
@pytest.mark.parametrize("case", LAYER_CASES, ids=[c["name"] for c in LAYER_CASES])
def test_one_layer_net_exports_equal_to_caffe_or_is_refused_naming_the_layer(tmp_path, case):
    _, arrays = fixture(case["fixture"])
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(case["prototxt"])
    key = f"{case['name']}/caffemodel"
    if key in arrays:
        (tmp_path / "net.caffemodel").write_bytes(bytes(arrays[key]))
        net = caffe.Net(str(prototxt), caffe.TEST, weights=str(tmp_path / "net.caffemodel"))
    else:
        net = caffe.Net(str(prototxt), caffe.TEST)
    # blob values as Caffe left them (an in-place top overwrites its bottom); inputs as fed
    data = {name: arrays[k] for rec in case["layers"] for name, k in zip(rec["tops"], rec["top_data"])}
    fed = {name: arrays[k] for rec in case["layers"] if rec["type"] == "Input"
           for name, k in zip(rec["tops"], rec["top_data"])}
    inputs = [fed[name] for name in net.inputs]
    try:
        report = export(net, onnx=tmp_path / "net.onnx", examples=inputs)
    except ExportError as err:
        assert expected_refusal(case, net), f"refused: {err}"
        assert "layer 'l'" in str(err) or str(prototxt) in str(err), err
        assert not (tmp_path / "net.onnx").exists()
        return
    assert not expected_refusal(case, net), "exported although listed as refused"
    got = onnx_run(tmp_path / "net.onnx", dict(zip(net.inputs, inputs)))
    for name, value in zip(report.outputs, got):
        want = data[name]
        if value.size == want.size == 1:   # loss tops: shape () here, (1,) in Caffe
            value = value.reshape(want.shape)
        assert relative_difference(value, want) <= CAFFE_TOL, name


# ---- the synthetic net: random weights, a trained run, the command line ---------------------

def test_synthetic_net_with_random_weights_exports_with_dynamic_batch_and_size(tmp_path):
    net = caffe.Net(str(synthetic_deploy(tmp_path)), caffe.TEST)
    randomize_weights(net)
    report = export(net, onnx=tmp_path / "s.onnx", torchscript=tmp_path / "s.pt")
    assert report.dynamic == {"images": [0, 2, 3]}
    assert report.worst["onnx"] <= CHECK_TOL and report.worst["torchscript"] <= CHECK_TOL
    scripted = torch.jit.load(str(tmp_path / "s.pt"))
    rng = np.random.default_rng(3)
    for shape in [(1, 3, TINY_SIDE, TINY_SIDE), (4, 3, 120, 97), (2, 3, 33, 64)]:
        images = rng.normal(0, 60, shape).astype(np.float32)
        (engine,) = engine_run(net, {"images": images})
        assert float(engine.std()) > 1e-3            # not a degenerate (uniform) softmax
        (got,) = onnx_run(tmp_path / "s.onnx", {"images": images})
        assert relative_difference(got, engine) <= CHECK_TOL, shape
        assert relative_difference(scripted(torch.from_numpy(images))[0].numpy(), engine) <= CHECK_TOL


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A few SGD iterations of the synthetic SEC recipe on a tiny synthetic set; its deploy
    prototxt (81 x 81) and the trained weights."""
    from sec import synthetic
    from sec.caffe.solver import NetOverrides, SGDSolver
    folder = tmp_path_factory.mktemp("trained")
    synthetic.generate(folder / "set", 6, 2, seed=0, image_size=TINY_SIDE - 1, cue_size=11)
    overrides = NetOverrides(batch_size=2, image_size=TINY_SIDE, source=str(folder / "set" / "train.txt"),
                             root_folder=str(folder / "set" / "images") + "/",
                             python_params={"AnnotationLayer": {"cues": str(folder / "set" / "cues.pickle"),
                                                                "cue_size": 11}})
    solver = SGDSolver(REPO / "models" / "synthetic" / "solver.prototxt",
                       net=REPO / "models" / "synthetic" / "train.prototxt",
                       snapshot_prefix=folder / "snap" / "t", net_overrides=overrides)
    solver.step(3)
    solver.net.save(str(folder / "trained.caffemodel"))
    return synthetic_deploy(folder), folder / "trained.caffemodel", folder / "set"


@pytest.mark.slow
def test_trained_run_exports_from_the_command_line(trained_run, tmp_path, capsys):
    from sec.data import load_image, preprocess
    prototxt, weights, dataset = trained_run
    out = tmp_path / "m.onnx"
    assert main(parse_args(["--prototxt", str(prototxt), "--weights", str(weights), "--onnx", str(out),
                            "--torchscript", str(tmp_path / "m.pt")])) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} (ONNX): equal to the engine" in printed and "(TorchScript)" in printed
    net = caffe.Net(str(prototxt), caffe.TEST, weights=str(weights))
    assert net.params["bn1_1"][2].data[0] > 0   # trained BatchNorm statistics, not fillers
    images = sorted((dataset / "images").glob("*.jpg"))[:3]
    for side in (TINY_SIDE, 113):
        batch = np.stack([preprocess(load_image(p), side, side) for p in images])
        (engine,) = engine_run(net, {"images": batch})
        (got,) = onnx_run(out, {"images": batch})
        assert relative_difference(got, engine) <= CHECK_TOL, side


# ---- what cannot be exported ----------------------------------------------------------------

PYTHON_NET = """layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 2 kernel_size: 1 } }
layer {
  name: "prob"
  type: "Python"
  bottom: "y"
  top: "p"
  python_param { module: "pylayers" layer: "SoftmaxLayer" }
}
"""
WIDE_PAD_NET = """layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 9 dim: 9 } } }
layer { name: "wide" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: MAX kernel_size: 4 stride: 3 pad: 3 } }
"""
FC_NET = """layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } } }
layer { name: "fc" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 4 } }
"""


def save_net(tmp_path, text):
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(text)
    net = caffe.Net(str(prototxt), caffe.TEST)
    randomize_weights(net)
    net.save(str(tmp_path / "net.caffemodel"))
    return prototxt, tmp_path / "net.caffemodel"


def test_python_layer_is_refused_naming_file_line_and_layer(tmp_path, capsys):
    prototxt, weights = save_net(tmp_path, PYTHON_NET)
    out = tmp_path / "out" / "n.onnx"
    out.parent.mkdir()
    status = main(parse_args(["--prototxt", str(prototxt), "--weights", str(weights), "--onnx", str(out)]))
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert f"{prototxt}:4: layer 'prob' (type Python): cannot be exported" in err
    assert list(out.parent.iterdir()) == []


def test_layer_that_fixes_the_traced_size_is_named_and_static_exports_it(tmp_path, capsys):
    """Pooling padded beyond kernel / 2 computes its padding in Python: the traced graph holds
    only at the traced size. The dynamic export names the layer; --static exports it."""
    prototxt, weights = save_net(tmp_path, WIDE_PAD_NET)
    args = ["--prototxt", str(prototxt), "--weights", str(weights), "--onnx", str(tmp_path / "w.onnx")]
    assert main(parse_args(args)) == 2
    err = capsys.readouterr().err
    assert "layer 'wide' (type Pooling): cannot be expressed in ONNX" in err and "--static" in err
    assert not (tmp_path / "w.onnx").exists()
    assert main(parse_args(args + ["--static"])) == 0
    net = caffe.Net(str(prototxt), caffe.TEST, weights=str(weights))
    x = np.random.default_rng(0).normal(0, 1, (1, 2, 9, 9)).astype(np.float32)
    assert relative_difference(onnx_run(tmp_path / "w.onnx", {"x": x})[0], engine_run(net, {"x": x})[0]) <= CHECK_TOL


def test_inner_product_net_keeps_its_spatial_size_and_a_dynamic_batch(tmp_path):
    prototxt, weights = save_net(tmp_path, FC_NET)
    net = caffe.Net(str(prototxt), caffe.TEST, weights=str(weights))
    report = export(net, onnx=tmp_path / "f.onnx")
    assert report.dynamic == {"x": [0]}
    x = np.random.default_rng(0).normal(0, 1, (7, 3, 5, 5)).astype(np.float32)
    assert relative_difference(onnx_run(tmp_path / "f.onnx", {"x": x})[0], engine_run(net, {"x": x})[0]) <= CHECK_TOL


def test_missing_packages_and_bad_flags_are_one_clear_line(tmp_path, capsys, monkeypatch):
    with pytest.raises(ExportError, match=r"needs the 'no_such_pkg' package: pip install no_such_pkg"):
        need_module("no_such_pkg", "this")
    prototxt, weights = save_net(tmp_path, FC_NET)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    args = ["--prototxt", str(prototxt), "--weights", str(weights), "--onnx", str(tmp_path / "f.onnx")]
    assert main(parse_args(args)) == 2
    assert "pip install onnxruntime" in capsys.readouterr().err and not (tmp_path / "f.onnx").exists()
    assert main(parse_args(args + ["--no-check"])) == 0     # --no-check needs no ONNX Runtime
    assert (tmp_path / "f.onnx").is_file()
    assert main(parse_args(["--prototxt", str(prototxt), "--weights", str(tmp_path / "none.caffemodel"),
                            "--onnx", str(tmp_path / "g.onnx")])) == 2
    assert "--weights: file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--prototxt", str(prototxt), "--weights", str(weights)])
    assert "give --onnx and/or --torchscript" in capsys.readouterr().err


def test_weights_that_leave_a_layer_at_its_filler_are_refused(tmp_path, capsys):
    prototxt, _ = save_net(tmp_path, FC_NET)
    from sec.caffe import formats
    formats.write_caffemodel(str(tmp_path / "empty.caffemodel"), "n",
                             [("other", "InnerProduct", [np.ones((2, 2), np.float32)])])
    args = ["--prototxt", str(prototxt), "--weights", str(tmp_path / "empty.caffemodel"),
            "--onnx", str(tmp_path / "e.onnx")]
    assert main(parse_args(args)) == 2
    assert "'fc'" in capsys.readouterr().err
    assert main(parse_args(args + ["--allow-missing-weights"])) == 0


def test_output_that_rewrites_an_input_in_place_is_renamed(tmp_path):
    text = ('layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }\n'
            'layer { name: "relu" type: "ReLU" bottom: "x" top: "x" }\n')
    prototxt = tmp_path / "n.prototxt"
    prototxt.write_text(text)
    report = export(caffe.Net(str(prototxt), caffe.TEST), onnx=tmp_path / "n.onnx")
    assert report.output_names == ["x_top"]
    x = np.random.default_rng(0).normal(0, 1, (2, 2, 5, 4)).astype(np.float32)
    np.testing.assert_array_equal(onnx_run(tmp_path / "n.onnx", {"x": x})[0], np.maximum(x, 0))


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = capsys.readouterr().out
    for flag in ("--prototxt", "--weights", "--onnx", "--torchscript", "--outputs", "--static", "--no-check",
                 "--allow-missing-weights"):
        assert flag in text, flag


def test_an_output_that_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    import sec.export
    prototxt, weights = save_net(tmp_path, FC_NET)

    def full_disk(path, write):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(sec.export, "atomic_save", full_disk)
    args = ["--prototxt", str(prototxt), "--weights", str(weights), "--onnx", str(tmp_path / "f.onnx")]
    assert main(parse_args(args)) == 2
    err = capsys.readouterr().err
    assert err.startswith("export: error: cannot write the export: ") and "No space left" in err
    assert err.count("\n") == 1
    assert main(parse_args(["--prototxt", str(prototxt), "--weights", str(weights),
                            "--onnx", str(tmp_path / "no" / "f.onnx")])) == 2
    assert "the folder" in capsys.readouterr().err
