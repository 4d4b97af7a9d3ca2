"""Snapshots in Caffe's two formats (BINARYPROTO, HDF5: Net::ToHDF5 and SnapshotSolverStateToHDF5
layouts), snapshot_diff, exact resume from either, HDF5 weights loaded as Caffe's
CopyTrainedLayersFromHDF5 loads them, and solverstates of the engine's older BatchNorm layout."""
import os
import re

import numpy as np
import pytest
import torch

h5py = pytest.importorskip("h5py", reason="HDF5 snapshots need h5py (a project dependency; the GPU machine lacks it)")

from sec.caffe import formats, hdf5
from sec.caffe import solver as solver_mod
from sec.caffe.weights import copy_weights
from test_solver import LinearNet, TinyNet, params_of, write_solver

COEFS = [(np.full((2, 4), 0.5, np.float32), np.array([1.0, -1.0], np.float32))]


def solver_file(tmp_path, **fields):
    """test_solver.write_solver, with the enum snapshot_format and the bool snapshot_diff unquoted."""
    path = write_solver(tmp_path, **fields)
    path.write_text(re.sub(r'(snapshot_format|snapshot_diff): "(\w+)"', r"\1: \2", path.read_text()))
    return path


def test_hdf5_snapshot_has_caffes_layout(tmp_path):
    solver = solver_mod.make_solver(solver_file(tmp_path, type="Adam", snapshot_format="HDF5", snapshot=2),
                                    net_factory=TinyNet)
    solver.step(2)
    model, state, sidecar = solver_mod.snapshot_paths(tmp_path / "snap" / "tiny", 2, hdf5=True)
    assert model.endswith("tiny_iter_2.caffemodel.h5") and state.endswith("tiny_iter_2.solverstate.h5")
    assert os.path.isfile(sidecar) and not os.path.exists(model[:-3])
    with h5py.File(model, "r") as f:
        assert list(f) == ["data"] and list(f["data"]) == ["fc"] and list(f["data/fc"]) == ["0", "1"]
        assert f["data/fc/0"].dtype == np.float32 and f["data/fc/0"].shape == (2, 4)
        np.testing.assert_array_equal(f["data/fc/0"][()], params_of(solver.net)[0])
    with h5py.File(state, "r") as f:
        assert sorted(f) == ["current_step", "history", "iter", "learned_net"]
        assert f["iter"].dtype == np.int32 and f["iter"].shape == (1,) and f["iter"][0] == 2
        kind = f["learned_net"].id.get_type()
        assert f["learned_net"].shape == () and kind.get_strpad() == h5py.h5t.STR_NULLTERM
        assert f["learned_net"][()] == model.encode() and kind.get_size() == len(model) + 1   # + its NUL
        assert sorted(f["history"], key=int) == ["0", "1", "2", "3"]          # Adam: m of fc/0, fc/1, then v
        np.testing.assert_array_equal(f["history/3"][()], solver.history[3].numpy())


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_resume_from_either_format_is_bitwise(tmp_path, fmt):
    path = solver_file(tmp_path, type="Nesterov", snapshot_format=fmt)
    straight = solver_mod.make_solver(path, net_factory=TinyNet)
    straight.step(6)
    first = solver_mod.make_solver(path, net_factory=TinyNet)
    first.step(3)
    state = first.snapshot()
    assert state.endswith(".solverstate.h5" if fmt == "HDF5" else ".solverstate")
    resumed = solver_mod.make_solver(path, net_factory=TinyNet)
    resumed.restore(state)
    resumed.step(3)
    for a, b in zip(params_of(straight.net), params_of(resumed.net)):
        assert np.array_equal(a, b)
    for a, b in zip(straight.history, resumed.history):
        assert torch.equal(a, b)


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_snapshot_diff_stores_the_last_update(tmp_path, fmt):
    net = LinearNet(COEFS)
    solver = solver_mod.SGDSolver(solver_file(tmp_path, snapshot_format=fmt, snapshot_diff="true"),
                                  net_factory=lambda *_: net)
    before = params_of(net)
    solver.step(1)
    model = solver.snapshot().replace("solverstate", "caffemodel")
    updates = [b - a for a, b in zip(params_of(net), before)]
    if fmt == "HDF5":
        with h5py.File(model, "r") as f:
            stored = [f["diff/fc/0"][()], f["diff/fc/1"][()]]
    else:
        layer = formats.read_caffemodel(model).layer[0]
        stored = [np.array(blob.diff, np.float32).reshape(blob.shape.dim) for blob in layer.blobs]
    for got, want in zip(stored, updates):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_hdf5_weights_load_as_caffe_loads_them(tmp_path):
    """Caffe's CopyTrainedLayersFromHDF5: layers by name, a blob shared with an earlier layer may be
    absent, a missing unshared blob, a wrong shape or a non-number are errors before any copy."""
    shared = torch.zeros(3)
    targets = {"a": [torch.zeros(2, 2), shared], "b": [shared], "c": [torch.zeros(1)]}
    path = str(tmp_path / "w.caffemodel.h5")
    stored = np.arange(3.0)
    hdf5.write_model(path, [("a", [(np.ones((2, 2)), None), (stored, None)]), ("b", [(stored, None)]), ("z", [])])
    assert list(hdf5.read_model(path)[1][1]) == []     # b's blob is a's: stored at its first layer only
    report = copy_weights(path, targets)
    assert report.loaded == ["a", "b"] and report.untouched == ["c"] and report.ignored == ["z"]
    np.testing.assert_array_equal(shared.numpy(), [0, 1, 2])
    bad = str(tmp_path / "bad.caffemodel.h5")
    hdf5.write_model(bad, [("a", [(np.ones((2, 3)), None), (np.arange(3.0), None)])])
    with pytest.raises(formats.WeightShapeError, match=r"bad.caffemodel.h5: layer 'a' blob 0: expected shape \(2, 2\)"):
        copy_weights(bad, {"a": [torch.full((2, 2), 7.0), torch.zeros(3)]})
    hdf5.write_model(bad, [("c", [])])
    with pytest.raises(formats.WeightShapeError, match="layer 'c' has no blob 0"):
        copy_weights(bad, {"c": [torch.zeros(1)]})
    (tmp_path / "junk.h5").write_bytes(formats.HDF5_MAGIC + b"junk")
    with pytest.raises(formats.CaffeFormatError, match="junk.h5: not a readable HDF5 file"):
        hdf5.read_state(str(tmp_path / "junk.h5"))


def test_a_damaged_hdf5_state_is_named_and_changes_nothing(tmp_path):
    solver = solver_mod.SGDSolver(solver_file(tmp_path, snapshot_format="HDF5"), net_factory=TinyNet)
    solver.step(2)
    state = solver.snapshot()
    with h5py.File(state, "a") as f:
        del f["history/1"]
    fresh = solver_mod.SGDSolver(solver_file(tmp_path, snapshot_format="HDF5"), net_factory=TinyNet)
    before = params_of(fresh.net)
    with pytest.raises(ValueError, match=r"tiny_iter_2.solverstate.h5: 1 history blobs"):
        fresh.restore(state)
    assert fresh.iter == 0 and all(np.array_equal(a, b) for a, b in zip(before, params_of(fresh.net)))


class NormNet(TinyNet):
    """TinyNet plus a BatchNorm-like layer whose three blobs are not learnable."""

    def __init__(self, *args):
        super().__init__(*args)
        self.stats = [torch.nn.Parameter(torch.full((2,), 3.0), requires_grad=False) for _ in range(3)]

    def layer_params(self):
        return [("norm", "BatchNorm", self.stats)] + super().layer_params()


def test_an_older_engine_state_without_the_statistics_still_resumes(tmp_path, caplog):
    """Before this change the engine kept no history for BatchNorm's blobs (23 for the synthetic net,
    Caffe 35): such a solverstate is widened with zero history, and says so."""
    solver = solver_mod.SGDSolver(write_solver(tmp_path), net_factory=NormNet)
    assert [(i.layer, i.index, i.lr_mult) for i in solver.params][:3] == [("norm", 0, 0), ("norm", 1, 0), ("norm", 2, 0)]
    solver.step(2)
    model, state, _ = solver_mod.snapshot_paths(tmp_path / "old", 2)
    formats.write_caffemodel(model, "tiny", [(n, t, [p.detach().numpy() for p in ps])
                                             for n, t, ps in solver.net.layer_params()])
    formats.write_solverstate(state, 2, model, [h.numpy() for h in solver.history[3:]])
    resumed = solver_mod.SGDSolver(write_solver(tmp_path), net_factory=NormNet)
    resumed.restore(state)
    assert "their history starts at zero" in caplog.text
    for a, b in zip(solver.history[3:], resumed.history[3:]):
        assert torch.equal(a, b)
    assert not any(h.any() for h in resumed.history[:3])
