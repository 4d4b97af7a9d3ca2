"""The run folder (sec/run_folder.py) with both of Caffe's snapshot formats: `snapshot_format: HDF5`
writes `<name>_iter_<N>.caffemodel.h5` + `.solverstate.h5` (+ `.solverstate.h5.rng`), and
`train.sh --resume`, the refusal of a used run folder and --overwrite see them as they see
BINARYPROTO snapshots: the newest iteration first, whatever its format."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from test_train import tiny_set  # noqa: F401  (a fixture)

from sec import run_folder
from sec.caffe.snapshots import snapshot_paths


def write_snapshot(folder, name, iteration, hdf5):
    """Empty files under the names the solver writes (sec.caffe.snapshots.snapshot_paths)."""
    paths = [Path(p) for p in snapshot_paths(Path(folder) / name, iteration, hdf5=hdf5)]
    for path in paths:
        path.write_bytes(b"")
    return paths


def test_the_run_folder_knows_every_file_the_solver_writes():
    written = {suffix for hdf5 in (False, True) for suffix in
               (p[len("r_iter_1"):] for p in snapshot_paths("r", 1, hdf5=hdf5))}
    assert written == set(run_folder.SNAPSHOT_SUFFIXES)


def test_newest_iteration_first_whatever_the_format(tmp_path):
    for iteration, hdf5 in ((2, False), (10, True), (4, False), (6, True)):
        write_snapshot(tmp_path, "run", iteration, hdf5)
    write_snapshot(tmp_path, "other", 99, True)
    (tmp_path / "run_iter_x.solverstate.h5").write_bytes(b"")          # not a snapshot of the run
    assert [(n, p.name) for n, p in run_folder.snapshots(tmp_path, "run")] == [
        (10, "run_iter_10.solverstate.h5"), (6, "run_iter_6.solverstate.h5"), (4, "run_iter_4.solverstate"),
        (2, "run_iter_2.solverstate")]
    assert run_folder.latest_snapshot(tmp_path, "run").name == "run_iter_10.solverstate.h5"
    assert run_folder.resume_snapshot(tmp_path, "run").name == "run_iter_10.solverstate.h5"


def test_at_one_iteration_in_both_formats_the_one_written_last(tmp_path):
    binary = write_snapshot(tmp_path, "run", 4, False)[1]
    hdf5 = write_snapshot(tmp_path, "run", 4, True)[1]
    os.utime(binary, ns=(2_000_000_000, 2_000_000_000))
    os.utime(hdf5, ns=(1_000_000_000, 1_000_000_000))
    assert run_folder.latest_snapshot(tmp_path, "run") == binary
    os.utime(hdf5, ns=(3_000_000_000, 3_000_000_000))
    assert run_folder.latest_snapshot(tmp_path, "run") == hdf5


def test_a_folder_of_hdf5_snapshots_is_a_used_run_and_overwrite_deletes_them(tmp_path):
    files = write_snapshot(tmp_path, "run", 2, True) + write_snapshot(tmp_path, "run", 4, True)
    kept = write_snapshot(tmp_path, "other", 4, True)
    with pytest.raises(run_folder.RunInputError, match=r"snapshots up to run_iter_4.solverstate.h5\); pass --resume"):
        run_folder.prepare_new_run(tmp_path, "run", overwrite=False)
    assert all(path.is_file() for path in files)
    assert sorted(run_folder.prepare_new_run(tmp_path, "run", overwrite=True)) == sorted(files)
    assert sorted(tmp_path.iterdir()) == sorted(kept)


def test_resume_without_any_snapshot_names_both_formats(tmp_path):
    with pytest.raises(run_folder.RunInputError, match=r"--resume: no run_iter_\*.solverstate \(nor .solverstate.h5\)"):
        run_folder.resume_snapshot(tmp_path, "run")


def test_resume_restores_the_newest_readable_hdf5_snapshot(tmp_path):
    """A real solver writing HDF5 snapshots: --resume's restore takes the newest that reads (a
    damaged newer one skipped), also past a BINARYPROTO one of an older iteration."""
    pytest.importorskip("h5py")
    from test_solver import SGDSolver, TinyNet, params_of, write_solver
    path = write_solver(tmp_path)
    binary_solver = SGDSolver(path, net_factory=TinyNet)
    binary_solver.step(1)
    binary_solver.snapshot()                                 # tiny_iter_1.solverstate
    with open(path, "a") as handle:
        handle.write("snapshot_format: HDF5\n")
    solver = SGDSolver(path, net_factory=TinyNet)
    solver.step(2)
    solver.snapshot()
    at_two = params_of(solver.net)
    solver.step(1)
    newest = Path(solver.snapshot())
    assert newest.name == "tiny_iter_3.solverstate.h5"
    newest.write_bytes(b"damaged")
    resumed = SGDSolver(path, net_factory=TinyNet)
    state, skipped = run_folder.restore_newest_readable(resumed, tmp_path / "snap", "tiny")
    assert Path(state).name == "tiny_iter_2.solverstate.h5" and resumed.iter == 2
    assert [Path(bad).name for bad, _ in skipped] == ["tiny_iter_3.solverstate.h5"]
    for a, b in zip(params_of(resumed.net), at_two):
        np.testing.assert_array_equal(a, b)
    assert run_folder.missing_sidecar_note(state) is None    # its .solverstate.h5.rng is found


@pytest.mark.slow
def test_train_py_resumes_a_run_of_hdf5_snapshots(tiny_set, tmp_path, capsys):
    """training/train.py (what train.sh runs) with `snapshot_format: HDF5`: a second run without
    --resume is refused naming the newest .solverstate.h5, --resume continues from it, and
    runs/latest.json names the final .caffemodel.h5."""
    pytest.importorskip("h5py")
    from test_train_failures import SCRIPT, cli, write_solver
    write_solver(tmp_path, snapshot_format="HDF5")
    status, _, err = cli(tiny_set, tmp_path, capsys, "--iters", 4)
    assert status == 0, err
    run = tmp_path / "runs" / "t"
    assert sorted(p.name for p in run.glob("t_iter_*")) == sorted(
        Path(p).name for it in (2, 4) for p in snapshot_paths(run / "t", it, hdf5=True))
    status, _, err = cli(tiny_set, tmp_path, capsys, "--iters", 6)
    assert status == SCRIPT.EXIT_MISSING_INPUT and "snapshots up to t_iter_4.solverstate.h5); pass --resume" in err
    status, out, err = cli(tiny_set, tmp_path, capsys, "--iters", 6, "--resume")
    assert status == 0, err
    assert f"resuming from {run / 't_iter_4.solverstate.h5'} at iteration 4" in out
    assert json.loads((tmp_path / "runs" / "latest.json").read_text())["weights"] == str(
        (run / "t_iter_6.caffemodel.h5").resolve())


def test_the_sidecar_check_counts_every_kind_of_data_layer(tmp_path):
    """Net.data_layers() lists Data, ImageData, HDF5Data, WindowData and MemoryData sources alike;
    the refusal of a sidecar made for another net says data layers, not ImageData layers."""
    import pickle
    from sec.caffe.snapshots import SIDECAR_FORMAT, SIDECAR_KEYS, SnapshotError, read_sidecar
    sidecar = tmp_path / "t_iter_2.solverstate.h5.rng"
    extra = {key: None for key in SIDECAR_KEYS}
    extra.update(format=SIDECAR_FORMAT, iter=2, data_sources=[{}, {}], losses=[])
    sidecar.write_bytes(pickle.dumps(extra))
    assert read_sidecar(sidecar, 2, 1)["iter"] == 2
    with pytest.raises(SnapshotError, match=r"2 data source states, the net has 1 data layers \(layers that make"):
        read_sidecar(sidecar, 1, 1)
