"""sec.caffe against the real BVLC Caffe 1.0, from fixtures Caffe wrote (no Caffe needed here).

tests/fixtures/caffe/ is written by `bench/caffe_reference.py` run with pycaffe's Python (its
docstring lists the files). How the engines are compared:

* Each layer is fed the inputs Caffe's layer saw (bottoms, parameters from the Caffe-written
  .caffemodel, the top diffs of Caffe's backward) and its outputs are compared with Caffe's:
  tops, bottom diffs and parameter diffs. This holds for the one-layer nets and for every layer
  of the SEC nets, so rounding-level differences upstream cannot decide an argmax tie in MAX
  pooling or a ReLU at 0, nor be amplified by the CRF: each layer is checked on its own.
* The one-layer nets also run through the pycaffe API (forward(**inputs), diffs set in
  net.blobs, backward()), which checks the net's plumbing (in place, Split, layers handing back
  their bottom); and edge_nets.json says which nets Caffe's Net::Init refuses: sec.caffe refuses
  the same ones, and three more on purpose (listed with the reason).
* The SEC nets are also run whole, as a user runs them (ImageData reading the PNGs, the
  Annotation layer the cue pickle, pylayers and krahenbuhl2013 inside sec.caffe): every blob,
  the three losses, every diff and parameter diff. The CRF amplifies the forward's rounding
  differences, so what lies downstream of it (its top, loss-Constrain and the gradients it sends
  back) has its own, measured tolerance.
* Training is chaotic: five iterations from weights perturbed by 1e-6 (relative) already move
  Caffe's own losses and weights (solver.json records how far). sec.caffe's five iterations are
  gated against that sensitivity: within TRAJECTORY_GATE times Caffe's own spread, plus a floor.
* Caffe's SGD update is replayed exactly on Caffe's gradient from Caffe's snapshot
  (weights and history of iteration 5 -> weights of iteration 6), and the snapshot pair loads
  into and resumes in sec.caffe.

Relative error of an array: max |sec - caffe| / max |caffe|.
"""
import functools
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sec import caffe

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "caffe"
FORWARD_TOL = 2e-6       # tops of a layer fed Caffe's bottoms
BACKWARD_TOL = 1e-5      # bottom and parameter diffs of a layer fed Caffe's top diffs
NET_FORWARD_TOL = 2e-5   # whole nets, upstream of the CRF (rounding accumulates over ~40 layers)
NET_BACKWARD_TOL = 1e-4
CRF_TOL = 1e-3           # the CRF's top and what depends on it, whole-net runs
REPLAY_TOL = 1e-6       # one SGD update on Caffe's own gradient
TRAJECTORY_GATE = 10.0
TRAJECTORY_FLOOR = 1e-5
NOT_IN_SEC = ("Input", "ImageData")   # no forward of their own (fed, or compared whole-net)


@functools.lru_cache(maxsize=None)
def fixture(name):
    """(manifest dict, {key: array}) of tests/fixtures/caffe/<name>.json/.npz."""
    manifest = json.loads((FIXTURES / f"{name}.json").read_text())
    if not (FIXTURES / f"{name}.npz").is_file():
        return manifest, {}
    with np.load(FIXTURES / f"{name}.npz") as data:
        arrays = {key: data[key] for key in data.files}
    return manifest, arrays


def rel_error(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.size == want.size, f"sizes differ: {got.shape} vs {want.shape}"
    scale = max(float(np.abs(want).max()) if want.size else 0.0, 1e-30)
    return float(np.abs(got.reshape(-1) - want.reshape(-1)).max() / scale) if want.size else 0.0


def build(tmp_path, text, phase, model_bytes=None, name="net"):
    """A sec.caffe Net from prototxt text, with weights from Caffe-written .caffemodel bytes."""
    path = tmp_path / f"{name}.prototxt"
    path.write_text(text)
    if model_bytes is None:
        return caffe.Net(str(path), phase)
    model = tmp_path / f"{name}.caffemodel"
    model.write_bytes(bytes(model_bytes))
    return caffe.Net(str(path), str(model), phase)


def phase_of(text):
    return caffe.TRAIN if text == "TRAIN" else caffe.TEST


def run_layer(net, rec, arrays, backward=True):
    """Layer rec["name"] of `net` fed Caffe's bottoms and top diffs; returns {what: rel error}
    for 'top i', 'bottom_diff i', 'param_diff i', 'param_after i' (BatchNorm's TRAIN update)."""
    step = next(s for s in net._layers if s.name == rec["name"])
    needs = rec.get("bottom_diff") if backward else None
    bottoms = []
    for i, key in enumerate(rec["bottom_data"]):
        tensor = torch.from_numpy(arrays[key].copy())
        bottoms.append(tensor.requires_grad_(bool(needs and needs[i] is not None)))
    errors = {}
    with torch.enable_grad():
        tops = step.fn(*bottoms)
    for i, (top, key) in enumerate(zip(tops, rec["top_data"])):
        errors[f"top {i}"] = rel_error(top.detach().numpy(), arrays[key])
    with torch.no_grad():
        for i, (param, key) in enumerate(zip(step.impl.params, rec["params_after_forward"])):
            if not param.requires_grad:
                errors[f"param_after {i}"] = rel_error(param.numpy(), arrays[key])
    if not backward:
        return errors
    outs = [(t, torch.from_numpy(arrays[k]).reshape(t.shape)) for t, k in zip(tops, rec["top_diff"])
            if t.requires_grad and k is not None]
    wrt = [b for b in bottoms if b.requires_grad] + [p for p in step.impl.params if p.requires_grad]
    if outs and wrt:
        grads = iter(torch.autograd.grad([t for t, _ in outs], wrt, [g for _, g in outs], allow_unused=True))
    else:
        grads = iter([None] * len(wrt))
    for i, (b, key) in enumerate(zip(bottoms, rec["bottom_diff"])):
        if b.requires_grad:
            grad = next(grads)
            errors[f"bottom_diff {i}"] = rel_error(np.zeros(b.shape) if grad is None else grad.numpy(), arrays[key])
    for i, (p, key) in enumerate(zip(step.impl.params, rec["param_diff"])):
        if p.requires_grad:
            grad = next(grads)
            errors[f"param_diff {i}"] = rel_error(np.zeros(p.shape) if grad is None else grad.numpy(), arrays[key])
    return errors


def layer_records(records, net):
    """The records of layers sec.caffe has (Caffe's inserted Split layers are not in the net)."""
    names = set(net.layer_names)
    return [r for r in records if r["type"] not in NOT_IN_SEC and r["name"] in names]


def check(errors, where):
    for what, err in errors.items():
        tol = FORWARD_TOL if what.startswith(("top", "param_after")) else BACKWARD_TOL
        assert err <= tol, f"{where}: {what} differs from Caffe by {err:.3g} (relative; tolerance {tol:g})"


# ------------------------------------------------------------------ one-layer nets

def one_layer_cases():
    """Every one-layer case of layers.json and of each family's layers_<family>.json, each with
    its fixture's name under "fixture"."""
    cases = []
    for path in sorted(FIXTURES.glob("layers*.json")):
        cases += [dict(case, fixture=path.stem) for case in fixture(path.stem)[0]["cases"]]
    return cases


LAYER_CASES = one_layer_cases()


def one_layer_errors(tmp_path, case):
    """{(layer type, what): rel error} of a one-layer case; weights from Caffe's .caffemodel."""
    _, arrays = fixture(case["fixture"])
    phase = phase_of(case["phase"])
    if case["name"] == "input_two_tops":
        net = build(tmp_path, case["prototxt"], phase)
        assert {b: list(net.blobs[b].shape) for b in net.blobs} == case["shapes"]
        return {}
    net = build(tmp_path, case["prototxt"], phase, arrays[f"{case['name']}/caffemodel"])
    if case["fill"]:   # Caffe's deterministic filler: sec.caffe fills the same values itself
        unfilled = build(tmp_path, case["prototxt"], phase, name="filled")
        for name, blobs in net.params.items():
            for got, want in zip(unfilled.params[name], blobs):
                np.testing.assert_array_equal(got.data, want.data)
    return {(rec["type"], what): err for rec in layer_records(case["layers"], net)
            for what, err in run_layer(net, rec, arrays, case["backward"]).items()}


@pytest.mark.parametrize("case", LAYER_CASES, ids=[c["name"] for c in LAYER_CASES])
def test_one_layer_net_matches_caffe(tmp_path, case):
    """Forward, backward and parameter diffs of one layer fed Caffe's inputs and weights."""
    check({what: err for (_, what), err in one_layer_errors(tmp_path, case).items()}, case["name"])


def pycaffe_path_errors(tmp_path, case):
    """The same one-layer net driven as pycaffe drives it: forward(**inputs), top diffs set in
    net.blobs, backward(); {what: rel error} of the tops, input diffs and parameter diffs. This
    checks the net's plumbing (in place, Split, layers that hand back their bottom) as Caffe's."""
    _, arrays = fixture(case["fixture"])
    net = build(tmp_path, case["prototxt"], phase_of(case["phase"]), arrays[f"{case['name']}/caffemodel"])
    inputs = {r["tops"][0]: arrays[r["top_data"][0]] for r in case["layers"] if r["type"] == "Input"}
    rec = case["layers"][-1]   # the case's layer comes after its inputs (Input or Parameter layers)
    net.forward(**inputs)
    errors = {f"top {i}": rel_error(net.blobs[t].data, arrays[k]) for i, (t, k) in enumerate(zip(rec["tops"], rec["top_data"]))}
    if not case["backward"]:
        return errors
    for name, key in zip(rec["tops"], rec["top_diff"]):
        net.blobs[name].diff[...] = arrays[key].reshape(net.blobs[name].diff.shape)
    net.backward()
    for i, (name, key) in enumerate(zip(rec["bottoms"], rec["bottom_diff"])):
        if key is not None:
            errors[f"bottom_diff {i}"] = rel_error(net.blobs[name].diff, arrays[key])
    for i, key in enumerate(rec["param_diff"]):
        if key is not None:
            errors[f"param_diff {i}"] = rel_error(net.params[rec["name"]][i].diff, arrays[key])
    return errors


PYCAFFE_CASES = [c for c in LAYER_CASES if c["layers"]]


@pytest.mark.parametrize("case", PYCAFFE_CASES, ids=[c["name"] for c in PYCAFFE_CASES])
def test_one_layer_net_through_pycaffe_api_matches_caffe(tmp_path, case):
    check(pycaffe_path_errors(tmp_path, case), f"{case['name']} (pycaffe API)")


def test_every_engine_layer_type_has_a_caffe_fixture():
    from sec.caffe.layers import LAYER_TYPES
    covered = {c["type"] for c in LAYER_CASES} | {"ImageData"}   # ImageData: image_data.json, sec_nets
    covered |= {"Data", "HDF5Data", "HDF5Output", "MemoryData", "WindowData"}  # data.json: test_caffe_data_reference
    assert set(LAYER_TYPES) <= covered, f"no Caffe fixture for {sorted(set(LAYER_TYPES) - covered)}"


def test_image_data_resizes_as_caffe(tmp_path):
    """ImageData tops of odd-sized images (PNG, so both read the same pixels) up- and downscaled
    by Caffe's cv::resize INTER_LINEAR, minus the means (image_data.json)."""
    from PIL import Image
    manifest, arrays = fixture("image_data")
    for index, line in enumerate(manifest["list"]):
        Image.fromarray(arrays[f"image{index}"][:, :, ::-1].copy()).save(tmp_path / line.split()[0])
    (tmp_path / "list.txt").write_text("".join(line + "\n" for line in manifest["list"]))
    for case in manifest["cases"]:
        net = build(tmp_path, case["prototxt"].replace("@ROOT@", str(tmp_path)), caffe.TEST, name=case["key"])
        net.forward()
        np.testing.assert_allclose(net.blobs["data"].data, arrays[f"{case['key']}/data"], rtol=0, atol=1e-4)
        np.testing.assert_array_equal(net.blobs["label"].data, arrays[f"{case['key']}/label"])


EDGE_NETS = fixture("edge_nets")[0]["nets"] if (FIXTURES / "edge_nets.json").is_file() else {}


@pytest.mark.parametrize("name", sorted(EDGE_NETS))
def test_sec_builds_exactly_the_edge_nets_caffe_builds(tmp_path, name):
    """Nets at the edge of what Caffe's Net::Init accepts (edge_nets.json records Caffe's verdict
    and message): sec.caffe builds the same ones, except those it refuses on purpose (listed with
    the reason, sec/caffe/README "Differences"); the others fail at build time naming the layer."""
    net = EDGE_NETS[name]
    path = tmp_path / f"{name}.prototxt"
    path.write_text(net["prototxt"])
    if net["accepted"] and not net["sec_refuses_on_purpose"]:
        caffe.Net(str(path), caffe.TEST)
        return
    with pytest.raises(caffe.NetError) as err:
        caffe.Net(str(path), caffe.TEST)
    assert f"{name}.prototxt:" in str(err.value) and "layer '" in str(err.value), (str(err.value), net["caffe_says"])


# ------------------------------------------------------------------ the SEC nets

def sec_root(tmp_path):
    """The SEC nets' images (PNG), list and cue pickle in tmp_path; returns the folder."""
    from PIL import Image
    manifest, arrays = fixture("sec_nets")
    root = tmp_path / "sec"
    root.mkdir()
    for line in manifest["list"]:
        name, index = line.split()
        Image.fromarray(arrays[f"image{index}"][:, :, ::-1].copy()).save(root / name)
    (root / "list.txt").write_text("".join(line + "\n" for line in manifest["list"]))
    cues = {key: np.array(value) for key, value in manifest["cues"].items()}
    with open(root / "cues.pickle", "wb") as handle:
        pickle.dump(cues, handle)
    return root


def train_net(tmp_path):
    manifest, _ = fixture("sec_nets")
    text = manifest["train_prototxt"].replace("@ROOT@", str(sec_root(tmp_path)))
    model = (FIXTURES / "sec_init.caffemodel").read_bytes()
    return build(tmp_path, text, caffe.TRAIN, model, "train"), text


def sec_layer_errors(tmp_path, which):
    """{layer name: {what: rel error}} of every layer of the SEC `which` net fed Caffe's inputs."""
    manifest, arrays = fixture("sec_nets")
    if which == "train":
        net, _ = train_net(tmp_path)
    else:
        net = build(tmp_path, manifest["deploy_prototxt"], caffe.TEST,
                    (FIXTURES / "sec_init.caffemodel").read_bytes(), "deploy")
    records = layer_records(manifest[which], net)
    assert {r["type"] for r in records} >= {"Convolution", "ReLU", "Pooling"}
    return {rec["name"]: run_layer(net, rec, arrays, which == "train") for rec in records}, records


@pytest.mark.parametrize("which", ["train", "deploy"])
def test_sec_net_layers_fed_caffe_inputs_match(tmp_path, which):
    errors, _ = sec_layer_errors(tmp_path, which)
    for name, layer_errors in errors.items():
        check(layer_errors, f"SEC {which} net: layer '{name}'")


def final_blobs(records):
    """{blob: (data key, diff key)} as Caffe's blobs hold them after forward + backward: data of
    the last writer, diff of the first consumer (for in-place chains: the first writer's top)."""
    data, diff = {}, {}
    for rec in records:
        for name, key in zip(rec["tops"], rec["top_data"]):
            data[name] = key
        for name, key in zip(rec["bottoms"], rec.get("bottom_diff") or []):
            diff.setdefault(name, key)
    for rec in records:   # blobs nobody consumes: the diff backward started from
        for name, key in zip(rec["tops"], rec.get("top_diff") or []):
            diff.setdefault(name, key)
    return data, diff


def downstream_of_crf(name):
    return "CRF" in name or name == "loss-Constrain"


def whole_train_errors(tmp_path):
    """The SEC training net run whole in sec.caffe (ImageData, Annotation, pylayers, CRF; weights
    from Caffe): {"data": {blob: err}, "diff": {blob: err}, "param_diff": {layer/i: err},
    "loss": {name: err}}."""
    manifest, arrays = fixture("sec_nets")
    net, _ = train_net(tmp_path)
    net.forward()
    data, diff = final_blobs(manifest["train"])
    assert set(net.blobs) <= set(data)
    errors = {"data": {name: rel_error(net.blobs[name].data, arrays[data[name]]) for name in net.blobs},
              "loss": {name: rel_error(net.blobs[name].data, np.float32(value))
                       for name, value in manifest["losses"].items()}}
    net.backward()
    errors["diff"] = {name: rel_error(net.blobs[name].diff, arrays[key]) for name, key in diff.items()
                      if name in net.blobs and key is not None and name not in manifest["losses"]}
    errors["param_diff"] = {f"{rec['name']}/{i}": rel_error(net.params[rec["name"]][i].diff, arrays[key])
                            for rec in manifest["train"] for i, key in enumerate(rec.get("param_diff") or [])}
    return errors


def net_tolerance(kind, name):
    """Whole-net tolerance: forward blobs and losses downstream of the CRF get CRF_TOL; diffs all
    carry the constrain loss's gradient, so they share NET_BACKWARD_TOL."""
    if kind in ("data", "loss"):
        return CRF_TOL if downstream_of_crf(name) else NET_FORWARD_TOL
    return NET_BACKWARD_TOL


def test_sec_training_net_whole_matches_caffe(tmp_path):
    """Every blob, the three losses, every diff and parameter diff of the whole training net."""
    for kind, errors in whole_train_errors(tmp_path).items():
        for name, err in errors.items():
            tol = net_tolerance(kind, name)
            assert err <= tol, f"{kind} of '{name}' differs from Caffe by {err:.3g} (tolerance {tol:g})"


def deploy_errors(tmp_path):
    """{"data": {blob: err}, "saliency": {blob: err}} of the deploy net and the notebooks'
    saliency (fc8-SEC diff 1, backward from fc8-SEC)."""
    manifest, arrays = fixture("sec_nets")
    net = build(tmp_path, manifest["deploy_prototxt"], caffe.TEST,
                (FIXTURES / "sec_init.caffemodel").read_bytes(), "deploy")
    data, _ = final_blobs(manifest["deploy"])
    net.forward(images=arrays[data["images"]])
    errors = {"data": {name: rel_error(net.blobs[name].data, arrays[key]) for name, key in data.items()}}
    net.blobs["fc8-SEC"].diff[...] = 1.0
    net.backward(start="fc8-SEC")
    errors["saliency"] = {name: rel_error(net.blobs[name].diff, arrays[key])
                          for name, key in manifest["saliency"].items()}
    return errors


def test_sec_deploy_net_and_saliency_match_caffe(tmp_path):
    errors = deploy_errors(tmp_path)
    for kind, tol in (("data", NET_FORWARD_TOL), ("saliency", NET_BACKWARD_TOL)):
        for name, err in errors[kind].items():
            assert err <= tol, f"deploy {kind} '{name}' differs from Caffe by {err:.3g} (tolerance {tol:g})"


# ------------------------------------------------------------------ solver and snapshots

def solver_files(tmp_path):
    """The solver prototxt for the fixture net in tmp_path, and the snapshot pair copied there."""
    manifest, _ = fixture("solver")
    _, train_text = train_net(tmp_path)
    train_path = tmp_path / "train_solver_net.prototxt"
    train_path.write_text(train_text)
    text = manifest["solver_prototxt"].replace("@NET@", str(train_path)).replace("@PREFIX@", str(tmp_path / "run"))
    solver_path = tmp_path / "solver.prototxt"
    solver_path.write_text(text)
    iters = manifest["iterations"]
    for suffix in ("caffemodel", "solverstate"):
        shutil.copy(FIXTURES / f"sec_iter_{iters}.{suffix}", tmp_path / f"sec_iter_{iters}.{suffix}")
    return solver_path, tmp_path / f"sec_iter_{iters}.solverstate"


def param_arrays(solver):
    return {f"{info.layer}/{info.index}": info.param.detach().numpy().copy() for info in solver.params}


def replay_errors(tmp_path):
    """Caffe's snapshot (iteration 5) restored in sec.caffe's SGDSolver (weights checked bitwise
    against a Net loading the .caffemodel), Caffe's gradient there put in the params' grads, one
    apply_update: {param: rel error against Caffe's iteration-6 weights}."""
    manifest, arrays = fixture("solver")
    solver_path, state = solver_files(tmp_path)
    solver = caffe.SGDSolver(str(solver_path))
    solver.restore(str(state))
    assert solver.iter == manifest["iterations"]
    snapshot = caffe.Net(str(tmp_path / "train_solver_net.prototxt"), str(state).replace("solverstate", "caffemodel"),
                         caffe.TRAIN)
    for info in solver.params:
        np.testing.assert_array_equal(info.param.detach().numpy(), snapshot.params[info.layer][info.index].data)
        info.param.grad = torch.from_numpy(arrays[f"g6/{info.layer}/{info.index}"].copy())
    solver.apply_update()
    return {key: rel_error(value, arrays[f"w6/{key}"]) for key, value in param_arrays(solver).items()}


def test_caffe_snapshot_loads_and_sgd_replays_caffe_update(tmp_path):
    for key, err in replay_errors(tmp_path).items():
        assert err <= REPLAY_TOL, f"{key}: SGD update differs from Caffe's by {err:.3g}"


def resume_errors(tmp_path):
    """sec.caffe resumes Caffe's snapshot for one iteration (data restart at the first batch, as
    in a fresh Caffe process): {"loss": {name: err}, "weights": {param: err}} against Caffe's."""
    manifest, arrays = fixture("solver")
    solver_path, state = solver_files(tmp_path)
    solver = caffe.SGDSolver(str(solver_path))
    solver.restore(str(state))
    solver.step(1)
    return {"loss": {name: rel_error(solver.last_outputs[name], value)
                     for name, value in zip(manifest["loss_names"], manifest["resumed_losses"])},
            "weights": {key: rel_error(value, arrays[f"w6/{key}"]) for key, value in param_arrays(solver).items()}}


def test_caffe_solverstate_resumes(tmp_path):
    errors = resume_errors(tmp_path)
    for name, err in errors["loss"].items():
        tol = CRF_TOL if downstream_of_crf(name) else NET_FORWARD_TOL
        assert err <= tol, f"resumed {name} differs from Caffe's by {err:.3g}"
    for key, err in errors["weights"].items():
        assert err <= NET_BACKWARD_TOL, f"{key}: resumed weights differ from Caffe's by {err:.3g}"


def trajectory(tmp_path):
    """sec.caffe's five iterations from Caffe's initial weights: [(iteration, loss name, |sec -
    caffe|, |caffe perturbed - caffe|, caffe)] and {param: (rel error of iteration-5 weights,
    Caffe's own spread)}."""
    manifest, _ = fixture("solver")
    solver_path, _ = solver_files(tmp_path)
    solver = caffe.SGDSolver(str(solver_path))
    solver.net.copy_from(str(FIXTURES / "sec_init.caffemodel"))
    losses = []
    for it, (want, other) in enumerate(zip(manifest["losses"], manifest["perturbed_losses"])):
        solver.step(1)
        losses += [(it, name, abs(solver.last_outputs[name] - value), abs(spread - value), value)
                   for name, value, spread in zip(manifest["loss_names"], want, other)]
    snapshot = caffe.Net(str(tmp_path / "train_solver_net.prototxt"),
                         str(tmp_path / f"sec_iter_{manifest['iterations']}.caffemodel"), caffe.TRAIN)
    weights = {}
    for key, value in param_arrays(solver).items():
        layer, index = key.split("/")
        weights[key] = (rel_error(value, snapshot.params[layer][int(index)].data), manifest["perturbed_w5_relative"][key])
    return losses, weights


def test_five_iterations_within_caffe_own_sensitivity(tmp_path):
    """Losses and iteration-5 weights within TRAJECTORY_GATE x Caffe's own spread (Caffe from
    1e-6-perturbed weights) + TRAJECTORY_FLOOR (relative)."""
    losses, weights = trajectory(tmp_path)
    for it, name, diff, spread, value in losses:
        gate = TRAJECTORY_GATE * spread + TRAJECTORY_FLOOR * abs(value)
        assert diff <= gate, f"iteration {it}: {name} differs from Caffe's by {diff:.3g} (gate {gate:.3g})"
    for key, (err, spread) in weights.items():
        assert err <= TRAJECTORY_GATE * spread + TRAJECTORY_FLOOR, f"{key}: {err:.3g} vs Caffe's own {spread:.3g}"


# ------------------------------------------------------------------ the README table

def agreement_rows(tmp_path):
    """[(what, worst forward rel error, worst backward rel error, how)] for the README table
    (bench/caffe_reference.py --agreement prints it)."""
    by_type = {}
    for index, case in enumerate(LAYER_CASES):
        sub = tmp_path / f"case{index}"
        sub.mkdir()
        for (kind, what), err in one_layer_errors(sub, case).items():
            by_type.setdefault(kind, {"cases": set(), "fwd": 0.0, "bwd": 0.0})["cases"].add(case["name"])
            side = "fwd" if what.startswith(("top", "param_after")) else "bwd"
            by_type[kind][side] = max(by_type[kind][side], err)
    rows = [(kind, v["fwd"], v["bwd"], f"{len(v['cases'])} one-layer nets") for kind, v in sorted(by_type.items())]
    for which in ("train", "deploy"):
        sub = tmp_path / f"layers_{which}"
        sub.mkdir()
        errors, _ = sec_layer_errors(sub, which)
        fwd = max(e for errs in errors.values() for w, e in errs.items() if w.startswith(("top", "param_after")))
        bwd = max([e for errs in errors.values() for w, e in errs.items() if not w.startswith("top")] or [None],
                  key=lambda e: -1 if e is None else e)
        rows.append((f"SEC {which} net, each layer fed Caffe's inputs", fwd, bwd, f"{len(errors)} layers"))
    sub = tmp_path / "whole"
    sub.mkdir()
    whole = whole_train_errors(sub)
    up = max(e for n, e in whole["data"].items() if not downstream_of_crf(n))
    crf = max(e for n, e in whole["data"].items() if downstream_of_crf(n))
    rows.append(("SEC training net whole, blobs upstream of the CRF", up, max(whole["diff"].values()),
                 "every blob / every blob diff"))
    rows.append(("SEC training net whole, CRF top and loss-Constrain", crf, max(whole["param_diff"].values()),
                 "blobs / every parameter diff"))
    rows.append(("SEC training net whole, loss-Seed / loss-Expand",
                 max(whole["loss"]["loss-Seed"], whole["loss"]["loss-Expand"]), None, "the losses"))
    sub = tmp_path / "deploy"
    sub.mkdir()
    deploy = deploy_errors(sub)
    rows.append(("SEC deploy net whole; saliency", max(deploy["data"].values()), max(deploy["saliency"].values()),
                 "every blob; conv4_1 and images diffs"))
    for name, fn in (("replay", replay_errors), ("resume", resume_errors)):
        sub = tmp_path / name
        sub.mkdir()
        result = fn(sub)
        if name == "replay":
            rows.append(("SGD update on Caffe's gradient, from Caffe's snapshot", None, max(result.values()),
                         "weights of iteration 6"))
        else:
            rows.append(("Caffe's .solverstate resumed, one iteration", max(result["loss"].values()),
                         max(result["weights"].values()), "losses; weights of iteration 6"))
    sub = tmp_path / "trajectory"
    sub.mkdir()
    losses, weights = trajectory(sub)
    ratio = max(diff / max(spread, 1e-30) for _, _, diff, spread, _ in losses)
    wratio = max(err / max(spread, 1e-30) for err, spread in weights.values())
    rows.append(("5 iterations of the SEC solver: losses, weights (x Caffe's own spread)", ratio, wratio,
                 "ratio to Caffe vs Caffe from 1e-6-perturbed weights"))
    return rows
