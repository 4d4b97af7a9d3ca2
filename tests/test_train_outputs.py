"""training/train.py (and train_localization.py) as a careless user meets them (issue 19): flags
that contradict or would be ignored, run names that leave --runs, seeds out of Caffe's range, a
read-only --runs, a disk that fills up during snapshots, Ctrl-C while BVLC Caffe trains and a resume
without the RNG sidecar. Each is one line with a documented exit status, and every complete file
is kept."""
import errno
import json
import os
import sys
import textwrap

import numpy as np
import pytest
from conftest import load_script
from limited_folders import message_lines, python_script, run_limited
from test_train import tiny_run_config, tiny_set  # noqa: F401  (tiny_set: a fixture)
from test_train_failures import SCRIPT, cli, fake_run, write_solver

from sec import train as sec_train
from sec.caffe import formats

LOCALIZATION = load_script("training/train_localization.py")
SNAPSHOT_BYTES = 640 * 1024       # one snapshot of the tiny net: .caffemodel + .solverstate + .rng, about


def tiny_argv(tiny_set, tmp_path, *extra, runs=None):
    """train.py's flags for the tiny set, net and solver (written into tmp_path)."""
    tiny_run_config(tiny_set, tmp_path)
    if not (tmp_path / "solver.prototxt").is_file():
        write_solver(tmp_path)
    return ["--synthetic-dir", str(tiny_set), "--list", str(tiny_set / "train.txt"),
            "--cues", str(tiny_set / "cues.pickle"), "--net", str(tmp_path / "train.prototxt"),
            "--solver", str(tmp_path / "solver.prototxt"), "--runs", str(runs or tmp_path / "runs"),
            "--name", "t", "--batch", "2", "--device", "cpu", "--no-eval", *[str(e) for e in extra]]


def usage_error(parser, argv, capsys):
    with pytest.raises(SystemExit) as info:
        parser.parse_args(argv)
    return info.value.code, capsys.readouterr().err


# ----- flags ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs", "..", ".", ".hidden", "", "x y", "~user"])
def test_a_run_name_is_a_plain_name(name, capsys):
    status, err = usage_error(SCRIPT.build_parser(), ["--name", name], capsys)
    assert status == 2 and "argument --name: need a plain name" in err


def test_plain_run_names_are_accepted():
    assert SCRIPT.build_parser().parse_args(["--name", "voc-2.seed_0"]).name == "voc-2.seed_0"


@pytest.mark.parametrize("seed", ["18446744073709551616", "9223372036854775808", "-1", "1.5", "x"])
@pytest.mark.parametrize("script", [SCRIPT, LOCALIZATION], ids=["train", "train_localization"])
def test_a_seed_outside_caffes_int64_is_a_usage_error(script, seed, capsys):
    argv = ["--seed", seed] + (["--net", "fg"] if script is LOCALIZATION else [])
    status, err = usage_error(script.build_parser(), argv, capsys)
    assert status == 2 and "argument --seed: need" in err and "Traceback" not in err


def test_the_largest_seed_is_accepted():
    assert SCRIPT.build_parser().parse_args(["--seed", str(2 ** 63 - 1)]).seed == 2 ** 63 - 1


def test_resume_and_overwrite_together_are_refused(tiny_set, tmp_path, capsys):
    status, _, err = cli(tiny_set, tmp_path, capsys, "--resume", "--overwrite")
    assert status == 2 and "--resume" in err and "--overwrite" in err and "one of them" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "runs").exists()
    argv = ["--net", "bg", "--list", "l.txt", "--root", str(tmp_path), "--labels", "l.json", "--resume", "--overwrite"]
    assert LOCALIZATION.main(LOCALIZATION.build_parser().parse_args(argv)) == 2
    assert "one of them" in capsys.readouterr().err


def test_train_localization_checks_its_outputs_before_training(tmp_path, capsys):
    from sec import synthetic
    synthetic.generate(tmp_path / "syn", 2, 0, seed=1)
    (tmp_path / "out").mkdir()
    argv = ["--net", "bg", "--list", str(tmp_path / "syn" / "train.txt"), "--root", str(tmp_path / "syn" / "images"),
            "--labels", str(tmp_path / "syn" / "train_labels.json"), "--run-dir", str(tmp_path / "run"),
            "--out", str(tmp_path / "out"), "--iters", "1", "--device", "cpu"]
    assert LOCALIZATION.main(LOCALIZATION.build_parser().parse_args(argv)) == 2
    assert "--out: " in capsys.readouterr().err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, named", [(["--precision", "bf16"], "--precision bf16"),
                                          (["--channels-last"], "--channels-last"), (["--no-tf32"], "--no-tf32"),
                                          (["--threads", "2"], "--threads"), (["--gpus", "2"], "--gpus > 1")])
def test_torch_only_flags_are_refused_with_the_caffe_engine(tiny_set, tmp_path, capsys, flags, named):
    missing_python = tmp_path / "no-python"          # an older train.py would fail here instead, later
    status, _, err = cli(tiny_set, tmp_path, capsys, "--engine", "caffe", "--caffe-python", missing_python, *flags)
    assert status == 2 and named in err and "torch engine only" in err and len(err.splitlines()) == 1


def test_flags_for_other_engines_or_recipes_are_refused(tiny_set, tmp_path, capsys):
    status, _, err = cli(tiny_set, tmp_path, capsys, "--caffe-bin", "/usr/bin/caffe")
    assert status == 2 and "--caffe-bin: only with --engine caffe" in err
    for flag in (["--localization-only"], ["--loc-iters", "3"], ["--redo-localization"]):
        status, _, err = cli(tiny_set, tmp_path, capsys, *flag)
        assert status == 2 and f"{flag[0]}: the synthetic recipe's own localization stages" in err


# ----- --gpus N: one line and the worker's own status, not torchrun's report and status 1 ------------
def test_with_gpus_bad_inputs_are_found_before_torchrun_starts(tiny_set, tmp_path, capsys, monkeypatch):
    import pickle
    cues = pickle.loads((tiny_set / "cues.pickle").read_bytes())
    del cues["3_cues"]
    bad = tmp_path / "bad.pickle"
    bad.write_bytes(pickle.dumps(cues))

    def no_torchrun(*args):
        raise AssertionError("torchrun started although the cues lack an id")
    monkeypatch.setattr(SCRIPT, "relaunch_with_torchrun", no_torchrun)
    status, _, err = cli(tiny_set, tmp_path, capsys, "--gpus", "2", cues=bad)
    assert status == 2 and "id 3" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_with_gpus_a_diverged_worker_gives_status_3(tiny_set, tmp_path):
    """Two gloo processes on the CPU, base_lr 1e6: torchrun exits 1 whatever the reason; train.py
    returns the workers' own status 3 and says so in its last line."""
    write_solver(tmp_path, base_lr=1e6, snapshot=1, max_iter=12)
    result = run_limited(python_script("training/train.py", *tiny_argv(tiny_set, tmp_path, "--gpus", "2")))
    assert result.returncode == SCRIPT.EXIT_NONFINITE, result.stderr[-3000:]
    assert message_lines(result.stderr, "train.py:")[-1].startswith("train.py: a training process stopped with "
                                                                   "exit status 3")


# ----- outputs that cannot be written ---------------------------------------------------------------
def test_a_read_only_runs_folder_is_one_line_and_loses_nothing(tiny_set, tmp_path):
    runs = tmp_path / "runs"
    files = fake_run(runs / "earlier")
    result = run_limited(python_script("training/train.py", *tiny_argv(tiny_set, tmp_path, runs=runs)),
                         read_only=[runs])
    assert result.returncode == 2, result.stderr
    assert message_lines(result.stderr, "train.py:") == result.stderr.strip().splitlines()
    assert "--runs" in result.stderr and str(runs) in result.stderr and "Traceback" not in result.stderr
    assert {path: path.read_bytes() for path in files} == files and sorted(runs.iterdir()) == [runs / "earlier"]


def snapshots_load(folder):
    """Every .caffemodel/.solverstate left in folder reads whole; returns their names."""
    names = []
    for path in sorted(folder.glob("t_iter_*")):
        if path.suffix == ".caffemodel":
            formats.read_caffemodel(path)
        elif path.suffix == ".solverstate":
            formats.read_solverstate(str(path))
        names.append(path.name)
    return names


def test_a_full_disk_during_snapshots_is_exit_2_and_keeps_every_complete_file(tiny_set, tmp_path):
    """--runs on a file system with room for one snapshot and a half: the snapshot at iteration 4
    fails; one line, exit 2, the iteration-2 snapshot whole, no temporary file left behind."""
    full, copy = tmp_path / "full", tmp_path / "copy"
    argv = tiny_argv(tiny_set, tmp_path, "--iters", "6", runs=full)
    result = run_limited(python_script("training/train.py", *argv), full=full, full_bytes=int(1.55 * SNAPSHOT_BYTES),
                         copy_full_to=copy)
    assert result.returncode == 2, result.stderr[-3000:]
    message = message_lines(result.stderr, "train.py:")
    assert len(message) == 1 and "No space left on device" in message[0] and "--resume" in message[0], result.stderr
    assert "Traceback" not in result.stderr and "Logging error" not in result.stderr
    names = snapshots_load(copy / "t")
    assert {"t_iter_2.caffemodel", "t_iter_2.solverstate", "t_iter_2.solverstate.rng"} <= set(names)
    assert "t_iter_6.caffemodel" not in names and not list((copy / "t").glob(".*"))
    assert not (copy / "latest.json").exists()


def test_a_full_disk_while_training_in_process(tiny_set, tmp_path, capsys, monkeypatch):
    """The same without a private mount namespace: ENOSPC raised at the iteration-4 .solverstate."""
    write = formats.atomic_write_bytes

    def full_at_iteration_4(path, data):
        if str(path).endswith("t_iter_4.solverstate"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(path, data)
    monkeypatch.setattr(formats, "atomic_write_bytes", full_at_iteration_4)
    status, _, err = cli(tiny_set, tmp_path, capsys, "--iters", "6")
    assert status == 2 and "No space left on device" in err and len(message_lines(err, "train.py:")) == 1
    run = tmp_path / "runs" / "t"
    assert snapshots_load(run)[:3] == ["t_iter_2.caffemodel", "t_iter_2.solverstate", "t_iter_2.solverstate.rng"]
    assert [line.split(",")[0] for line in (run / "losses.csv").read_text().splitlines()[1:]] == ["0", "1", "2"]


# ----- resume, Ctrl-C under Caffe, the closing hint ----------------------------------------------
def test_resume_without_the_rng_sidecar_says_so_in_the_terminal(tiny_set, tmp_path, capsys):
    assert cli(tiny_set, tmp_path, capsys, "--iters", "4")[0] == 0
    (tmp_path / "runs" / "t" / "t_iter_4.solverstate.rng").unlink()
    status, _, err = cli(tiny_set, tmp_path, capsys, "--iters", "5", "--resume")
    assert status == 0
    assert "t_iter_4.solverstate.rng is missing, so the RNG states and the data order are not restored" in err


FAKE_CAFFE = """
import os, signal, sys, time
from pathlib import Path
solver = Path(next(a for a in sys.argv if a.startswith("--solver="))[len("--solver="):])
def stop(signum, frame):          # as caffe train -sigint_effect stop: a snapshot, then exit 0
    (solver.parent / "t_iter_3.caffemodel").write_bytes(b"snapshot")
    sys.exit(0)
signal.signal(signal.SIGINT, stop)
time.sleep(0.5)                   # train.py is waiting for this process by now
os.kill(os.getppid(), signal.SIGINT)   # a terminal's Ctrl-C reaches train.py and caffe alike
os.kill(os.getpid(), signal.SIGINT)
time.sleep(30)
"""


def test_ctrl_c_while_caffe_trains_is_one_line_and_status_130(tiny_set, tmp_path, capsys, monkeypatch):
    from sec import bvlc_caffe
    caffe = tmp_path / "caffe"
    caffe.write_text(f"#!{sys.executable}\n" + textwrap.dedent(FAKE_CAFFE))
    caffe.chmod(0o755)
    monkeypatch.setattr(bvlc_caffe, "find_caffe_python", lambda explicit: sys.executable)
    monkeypatch.setattr(bvlc_caffe, "locate_pycaffe", lambda python: None)
    monkeypatch.setattr(bvlc_caffe, "probe", lambda python, env: {"numpy": np.__version__, "caffe": "c",
                                                                  "pylayers": "p/__init__.py"})
    monkeypatch.setattr(bvlc_caffe, "find_caffe_binary", lambda explicit, found, env: caffe)
    try:
        status, _, err = cli(tiny_set, tmp_path, capsys, "--engine", "caffe")
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped train.py as a KeyboardInterrupt")
    assert status == SCRIPT.EXIT_INTERRUPTED
    assert message_lines(err, "train.py:") == [line for line in err.splitlines() if line]
    assert "interrupted" in err and "--resume" in err and (tmp_path / "runs" / "t" / "t_iter_3.caffemodel").is_file()
    assert not (tmp_path / "runs" / "latest.json").exists()


def test_the_closing_hint_names_the_latest_json_it_wrote(tmp_path, capsys):
    weights = tmp_path / "w.caffemodel"
    weights.write_bytes(b"w")
    runs = tmp_path / "elsewhere"
    cfg = sec_train.RunConfig(name="voc", solver=tmp_path / "s", net=tmp_path / "n", deploy=tmp_path / "d.prototxt",
                              runs_root=runs, classes="voc", num_classes=21, dataset=tmp_path / "VOC2012")
    sec_train.finish(cfg, weights)
    out = capsys.readouterr().out
    assert f"--latest {runs.resolve() / 'latest.json'}" in out and "--classes voc" in out
    assert json.loads((runs / "latest.json").read_text())["classes"] == "voc"


# ----- issue 22: the authors' cue pickle with a list of another order ---------------------------------
PAIRED_IMAGES = 6


@pytest.fixture(scope="module")
def authors_voc(tmp_path_factory):
    """A VOC-shaped folder from real data: the first images of the authors' input_list.txt (random
    JPEGs, their real SegmentationClassAug masks), trainaug.txt in VOC's sorted order; and that list."""
    import tarfile

    from conftest import shared_file
    from PIL import Image
    masks_archive, authors_list = shared_file("voc12_masks.tar.gz"), shared_file("input_list.txt")
    lines = authors_list.read_text().splitlines()[:PAIRED_IMAGES]
    names = [line.split()[0][:-len(".jpg")] for line in lines]
    folder = tmp_path_factory.mktemp("voc")
    voc = folder / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    wanted = {f"voc12/SegmentationClassAug/{name}.png": name for name in names}
    with tarfile.open(masks_archive) as archive:
        for member in archive:
            if member.name in wanted:
                (voc / "SegmentationClassAug" / f"{wanted.pop(member.name)}.png").write_bytes(
                    archive.extractfile(member).read())
                if not wanted:
                    break
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{name}.jpg")
    (voc / "ImageSets/Segmentation/trainaug.txt").write_text("".join(f"{n}\n" for n in sorted(names)))
    (folder / "input_list.txt").write_text("".join(f"{line}\n" for line in lines))
    (folder / "w.caffemodel").write_bytes(b"")
    return {"folder": folder, "voc": voc, "list": folder / "input_list.txt",
            "cues": shared_file("localization_cues.pickle.gz")}


def voc_argv(authors_voc, tmp_path, *extra):
    return ["--voc", str(authors_voc["voc"]), "--cues", str(authors_voc["cues"]), "--weights",
            str(authors_voc["folder"] / "w.caffemodel"), "--runs", str(tmp_path / "runs"), "--device", "cpu",
            "--iters", "1", *[str(e) for e in extra]]


def test_the_authors_cues_without_their_list_are_refused_by_the_masks(authors_voc, tmp_path, capsys):
    argv = voc_argv(authors_voc, tmp_path)
    assert SCRIPT.main(SCRIPT.build_parser().parse_args(argv), argv) == 2
    err = capsys.readouterr().err
    assert "differ from their ground-truth masks" in err and "--list" in err and "input_list.txt" in err
    assert len(err.splitlines()) == 1 and not list((tmp_path / "runs" / "voc").glob("*.caffemodel"))


def test_the_authors_cues_with_their_list_match_the_masks(authors_voc, tmp_path, capsys):
    args = SCRIPT.build_parser().parse_args(voc_argv(authors_voc, tmp_path, "--list", authors_voc["list"]))
    sec_train.check_inputs(SCRIPT.recipe(args))
    assert "note:" not in capsys.readouterr().out


def test_without_masks_the_authors_cues_need_their_list(authors_voc, tmp_path, capsys):
    import shutil
    voc = tmp_path / "VOC2012"
    shutil.copytree(authors_voc["voc"], voc, ignore=shutil.ignore_patterns("SegmentationClassAug"))
    argv = voc_argv(authors_voc, tmp_path)
    argv[argv.index("--voc") + 1] = str(voc)
    with pytest.raises(sec_train.RunInputError, match="as in the authors' localization_cues.pickle.*--list"):
        sec_train.check_inputs(SCRIPT.recipe(SCRIPT.build_parser().parse_args(argv)))
    sec_train.check_inputs(SCRIPT.recipe(SCRIPT.build_parser().parse_args(argv + ["--list", str(authors_voc["list"])])))


# ----- --gpus above the device count; the process group closed at exit (issue 21) -------------------
def test_gpus_above_the_device_count_is_one_line_before_torchrun(tiny_set, tmp_path, capsys, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)

    def no_torchrun(*args):
        raise AssertionError("torchrun started for more processes than GPUs (each would fail with "
                             "'invalid device ordinal')")
    monkeypatch.setattr(SCRIPT, "relaunch_with_torchrun", no_torchrun)
    status, _, err = cli(tiny_set, tmp_path, capsys, "--gpus", "3", "--device", "cuda")
    assert status == 2 and err.strip() == ("train.py: --gpus 3: torch sees 2 CUDA device(s); pass at most that "
                                           "many (or --device cpu for gloo processes)")


def test_a_worker_past_the_devices_is_one_line(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cfg = type("Cfg", (), {"device": "cuda"})()
    with pytest.raises(sec_train.RunInputError, match="--gpus 2: torch sees 1 CUDA device"):
        sec_train.init_distributed(cfg, local_rank=1)


def test_the_process_group_is_destroyed_when_the_worker_ends(tiny_set, tmp_path, capsys, monkeypatch):
    import torch.distributed as dist

    def init(cfg, local_rank):
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)

    def train(cfg):
        assert dist.is_initialized()
        raise sec_train.RunInputError("stopped here")
    monkeypatch.setattr(sec_train, "environment_world", lambda: (0, 2, 0))
    monkeypatch.setattr(sec_train, "init_distributed", init)
    monkeypatch.setattr(sec_train, "train", train)
    monkeypatch.setenv("WORLD_SIZE", "2")                 # as under torchrun: no relaunch
    status, _, err = cli(tiny_set, tmp_path, capsys)
    assert status == 2 and "stopped here" in err
    assert not dist.is_initialized()
