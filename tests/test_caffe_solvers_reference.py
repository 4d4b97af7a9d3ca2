"""Every solver and lr policy against the real BVLC Caffe, without Caffe: tests/fixtures/caffe/
solvers.json/.npz, written by bench/caffe_reference_solvers.py (five iterations of each case on a
tiny Convolution / BatchNorm / Scale / TanH / InnerProduct net, fixed batch).

* Replay: each of the five updates applied to Caffe's own weights, history and gradient of that
  iteration must give Caffe's weights, history and current_step at float32 rounding (REPLAY_TOL).
* Free run: five iterations from Caffe's initial weights, through this engine's forward, backward,
  update and snapshots, within FREE_RUN_TOL of Caffe's (the tiny net is smooth, so rounding-level
  differences stay at that level), and the log lines Caffe prints (smoothed loss, lr, multistep,
  clipping, test net outputs) carry the same values.
* Snapshots: Caffe's HDF5 pair restores here bitwise, ours has Caffe's HDF5 layout; snapshot_diff
  stores the last update as Caffe's does.
"""
import logging
import re

import numpy as np
import pytest
import torch

h5py = pytest.importorskip("h5py", reason="HDF5 snapshots need h5py (a project dependency; the GPU machine lacks it)")

from sec import caffe
from sec.caffe import formats, hdf5
from sec.caffe.solver import snapshot_paths
from test_caffe_reference import fixture, rel_error

REPLAY_TOL = 1e-6
FREE_RUN_TOL = 1e-5
LOG_TOL = 2e-5          # numbers Caffe printed with 6 significant digits
NAME = "solvers"


def cases():
    return sorted(fixture(NAME)[0]["cases"])


def case_solver(tmp_path, name):
    """This engine's solver for case `name`, from Caffe's initial weights and batch."""
    manifest, arrays = fixture(NAME)
    net_path, init = tmp_path / "net.prototxt", tmp_path / "init.caffemodel"
    net_path.write_text(manifest["net"])
    init.write_bytes(arrays[manifest["init_caffemodel"]].tobytes())
    text = manifest["cases"][name]["solver_prototxt"]
    solver_path = tmp_path / "solver.prototxt"
    solver_path.write_text(text.replace("@NET@", str(net_path)).replace("@PREFIX@", str(tmp_path / "snap")))
    solver = caffe.get_solver(str(solver_path))
    for net in [solver.net] + solver.test_nets:
        net.copy_from(str(init))
        net.blobs["data"].data[...] = arrays[manifest["data"]]
        net.blobs["label"].data[...] = arrays[manifest["label"]]
    return solver


def recorded(name, what):
    """Caffe's arrays of a case: what(iteration, key) -> array."""
    manifest, arrays = fixture(NAME)
    keys = manifest["cases"][name]["arrays"]
    return lambda it, key: arrays[keys[f"{what}{it}/{key}"]]


def blob_keys(solver):
    return [f"{info.layer}/{info.index}" for info in solver.params]


def replay_errors(tmp_path, name):
    """Worst relative error of weights and history over the five replayed updates."""
    case = fixture(NAME)[0]["cases"][name]
    solver = case_solver(tmp_path, name)
    assert type(solver).__name__ == case["type"] and blob_keys(solver) == case["blobs"]
    assert len(solver.history) == case["history_count"]
    weights, grads, history = (recorded(name, w) for w in ("w", "g", "h"))
    errors = {"weights": 0.0, "history": 0.0}
    for it in range(fixture(NAME)[0]["iterations"]):
        with torch.no_grad():
            for info, key in zip(solver.params, case["blobs"]):
                # lr_mult 0 blobs (BatchNorm) are those of the forward just run: Caffe's next on_start
                source = weights(it + 1 if info.lr_mult == 0 else it, key)
                info.param.copy_(torch.from_numpy(source))
                info.param.grad = torch.from_numpy(grads(it, key).copy())
            for index, buffer in enumerate(solver.history):
                buffer.copy_(torch.from_numpy(history(it, index)) if it else torch.zeros_like(buffer))
        solver.iter, solver.current_step = it, case["current_step"][it - 1] if it else 0
        solver.apply_update()
        assert solver.current_step == case["current_step"][it]
        for info, key in zip(solver.params, case["blobs"]):
            errors["weights"] = max(errors["weights"], rel_error(info.param.detach().numpy(), weights(it + 1, key)))
        for index, buffer in enumerate(solver.history):
            errors["history"] = max(errors["history"], rel_error(buffer.numpy(), history(it + 1, index)))
    return errors


@pytest.mark.parametrize("name", cases())
def test_each_update_on_caffes_gradient_gives_caffes_weights_and_history(tmp_path, name):
    errors = replay_errors(tmp_path, name)
    assert max(errors.values()) <= REPLAY_TOL, errors


def our_snapshot(prefix, iteration, hdf5_format):
    """({"layer/i": weights}, [history], current_step) of this engine's snapshot."""
    model, state, _ = snapshot_paths(prefix, iteration, hdf5_format)
    if hdf5_format:
        weights = {f"{layer}/{i}": blobs[i] for layer, blobs in hdf5.read_model(model) for i in blobs}
    else:
        weights = {f"{layer.name}/{i}": formats.blob_to_array(b)
                   for layer in formats.read_caffemodel(model).layer for i, b in enumerate(layer.blobs)}
    saved = (hdf5.read_state if hdf5_format else formats.read_solverstate)(state)
    return weights, saved["history"], saved["current_step"]


NUMBER = r"(-?[\d.]+(?:e[-+]\d+)?|nan|inf)"
LOG_PATTERNS = [  # (kind, regex); numbers compared at LOG_TOL, the rest of the match exactly
    ("smoothed", rf"^Iteration (\d+) \(.*\), loss = {NUMBER}$"),
    ("final", rf"^Iteration (\d+), loss = {NUMBER}$"),
    ("output", rf"^    Train net output #(\d+): (\S+) = {NUMBER} \(\* 1 = {NUMBER} loss\)$"),
    ("lr", r"^Iteration (\d+), lr = (\S+)$"),
    ("multistep", r"^MultiStep Status: Iteration (\d+), step = (\d+)$"),
    ("clip", rf"^Gradient clipping: scaling down gradients \(L2 norm {NUMBER} > {NUMBER}\) by scale factor {NUMBER}$"),
    ("testing", r"^Iteration (\d+), Testing net \(#(\d+)\)$"),
    ("test_loss", rf"^Test loss: {NUMBER}$"),
    ("test_output", rf"^    Test net output #(\d+): (\S+) = {NUMBER}(?: \(\* 1 = {NUMBER} loss\))?$"),
]


def log_entries(lines):
    """[(kind, [whole-number and name fields], [other numbers])] of the solver lines both engines print."""
    entries = []
    for line in lines:
        for kind, pattern in LOG_PATTERNS:
            match = re.match(pattern, line)
            if match:
                groups = [g for g in match.groups() if g is not None]
                real = [re.fullmatch(NUMBER, g) is not None and not g.isdigit() for g in groups]
                entries.append((kind, [g for g, r in zip(groups, real) if not r],
                                [float(g) for g, r in zip(groups, real) if r]))
                break
    return entries


class Lines(logging.Handler):
    """The messages of the solver's log, kept in a list."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def free_run(tmp_path, name):
    """Five iterations here (solve, as Caffe ran them): ({what: worst relative error}, our log)."""
    case = fixture(NAME)[0]["cases"][name]
    solver = case_solver(tmp_path, name)
    logger, handler = logging.getLogger("sec.caffe.solver"), Lines()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        solver.solve()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    log = handler.lines
    weights, history = recorded(name, "w"), recorded(name, "h")
    errors = {"weights": 0.0, "history": 0.0}
    flat = np.concatenate
    for it in range(1, fixture(NAME)[0]["iterations"] + 1):
        ours, our_history, step = our_snapshot(tmp_path / "snap", it, solver.hdf5)
        assert step == case["current_step"][it - 1] and len(our_history) == case["history_count"]
        # whole vectors: a blob whose gradient is zero in exact arithmetic (the bias of a convolution
        # that BatchNorm follows) holds rounding noise in both engines
        errors["weights"] = max(errors["weights"], rel_error(flat([ours[k].ravel() for k in case["blobs"]]),
                                                             flat([weights(it, k).ravel() for k in case["blobs"]])))
        errors["history"] = max(errors["history"], rel_error(
            flat([h.ravel() for h in our_history]), flat([history(it, i).ravel() for i in range(len(our_history))])))
    return errors, log, solver


@pytest.mark.parametrize("name", cases())
def test_five_iterations_run_free_as_caffes_and_log_the_same(tmp_path, name):
    errors, log, _ = free_run(tmp_path, name)
    assert max(errors.values()) <= FREE_RUN_TOL, errors
    theirs, ours = log_entries(fixture(NAME)[0]["cases"][name]["log"]), log_entries(log)
    assert [(k, t) for k, t, _ in ours] == [(k, t) for k, t, _ in theirs]
    for (kind, _, mine), (_, _, caffes) in zip(ours, theirs):
        assert mine == pytest.approx(caffes, rel=LOG_TOL, abs=1e-6), kind


def test_caffes_hdf5_snapshot_restores_bitwise(tmp_path):
    manifest, arrays = fixture(NAME)
    case = manifest["cases"]["adam_hdf5"]
    for suffix, key in case["files"].items():
        (tmp_path / f"snap_iter_5.{suffix}").write_bytes(arrays[key].tobytes())
    (tmp_path / "run").mkdir()
    solver = case_solver(tmp_path / "run", "adam_hdf5")
    solver.restore(str(tmp_path / "snap_iter_5.solverstate.h5"))
    assert solver.iter == 5 and solver.restored_from[1] == str(tmp_path / "snap_iter_5.caffemodel.h5")
    weights, history = recorded("adam_hdf5", "w"), recorded("adam_hdf5", "h")
    for info, key in zip(solver.params, case["blobs"]):
        np.testing.assert_array_equal(info.param.detach().numpy(), weights(5, key))
    for index, buffer in enumerate(solver.history):
        np.testing.assert_array_equal(buffer.numpy(), history(5, index))


def h5_layout(path):
    """{name: (kind, dtype, shape, string type size - name length)} of every object of an HDF5 file."""
    layout = {}

    def visit(name, item):
        if isinstance(item, h5py.Dataset):
            if item.dtype.kind == "S":      # a string: its length is the path's; compare the padding
                kind = item.id.get_type()
                layout[name] = ("string", item.shape, kind.get_size() - len(item[()]), kind.get_strpad())
            else:
                layout[name] = ("dataset", str(item.dtype), item.shape)
        else:
            layout[name] = ("group",)
    with h5py.File(path, "r") as handle:
        handle.visititems(visit)
    return layout


def test_our_hdf5_snapshot_has_caffes_layout(tmp_path):
    manifest, arrays = fixture(NAME)
    free_run(tmp_path, "adam_hdf5")
    for suffix, key in manifest["cases"]["adam_hdf5"]["files"].items():
        theirs = tmp_path / f"caffe.{suffix}"
        theirs.write_bytes(arrays[key].tobytes())
        assert h5_layout(tmp_path / f"snap_iter_5.{suffix}") == h5_layout(theirs), suffix


def test_snapshot_diff_holds_the_last_update_as_caffes(tmp_path):
    manifest, arrays = fixture(NAME)
    free_run(tmp_path, "sgd_snapshot_diff")
    theirs = tmp_path / "caffe.caffemodel"
    theirs.write_bytes(arrays[manifest["cases"]["sgd_snapshot_diff"]["files"]["caffemodel"]].tobytes())

    def diffs(path):
        return {f"{layer.name}/{i}": np.array(b.diff, np.float32) for layer in formats.read_caffemodel(path).layer
                for i, b in enumerate(layer.blobs)}
    ours, caffes = diffs(tmp_path / "snap_iter_5.caffemodel"), diffs(theirs)
    assert set(ours) == set(caffes) and all(len(v) for v in caffes.values())
    for key in caffes:
        assert rel_error(ours[key], caffes[key]) <= FREE_RUN_TOL * 10 or not np.abs(caffes[key]).max(), key


def agreement(make_folder):
    """{case: (worst replay error, worst free-run error)}: the rows of docs/caffe/solvers.md
    (make_folder() -> a new empty folder)."""
    rows = {}
    for name in cases():
        replay = max(replay_errors(make_folder(), name).values())
        free = max(free_run(make_folder(), name)[0].values())
        rows[name] = (replay, free)
    return rows
