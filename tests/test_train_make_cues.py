"""training/make_cues.py as a careless user meets it (issue 19): partial results reused only when
every input and setting that decides the cues is the same, ranges checked per flag, outputs that
cannot be written found before any image is read, a full disk, a damaged .partial and Ctrl-C are
one line with their exit status, and every complete file is kept."""
import json
import pickle
import shutil

import numpy as np
import pytest
from conftest import load_script
from limited_folders import message_lines, python_script, run_limited
from PIL import Image

from sec import caffe
from sec import localization as loc

MAKE_CUES = load_script("training/make_cues.py")
IMAGES = 6
BAD_IMAGE = 4                     # its batch (of 2) comes after two saves of the .partial


@pytest.fixture(scope="module")
def cue_inputs(tmp_path_factory):
    """A 6-image synthetic set and randomly initialised (saved) localization nets."""
    import torch
    from sec import synthetic
    folder = tmp_path_factory.mktemp("cues")
    synthetic.generate(folder / "syn", IMAGES, 0, seed=3)
    torch.manual_seed(0)
    for which in ("fg", "bg"):
        net = caffe.Net(str(MAKE_CUES.REPO_ROOT / "models/localization/synthetic" / f"{which}.prototxt"), caffe.TEST)
        net.save(str(folder / f"{which}.caffemodel"))
    return folder


def argv_of(inputs, out, *extra, root=None, labels=None):
    dataset = inputs / "syn"
    return ["--list", str(dataset / "train.txt"), "--root", str(root or dataset / "images"),
            "--labels", str(labels or dataset / "train_labels.json"), "--fg-weights", str(inputs / "fg.caffemodel"),
            "--bg-weights", str(inputs / "bg.caffemodel"), "--out", str(out), "--batch", "2", "--save-every", "2",
            "--workers", "1", "--device", "cpu", "--no-report", *[str(e) for e in extra]]


def run(argv):
    """make_cues.main on argv: its exit status, or the exception type an older version raised."""
    try:
        return MAKE_CUES.main(MAKE_CUES.build_parser().parse_args(argv))
    except (Exception, KeyboardInterrupt) as err:
        return type(err).__name__


def image_file(inputs, index, root=None):
    listed = (inputs / "syn" / "train.txt").read_text().split()[2 * index]
    return (root or inputs / "syn" / "images") / listed


# ----- 1. a .partial of other inputs is never reused ----------------------------------------------
def other_labels(inputs, tmp_path):
    labels = {key: [c % 6 + 1 for c in classes]
              for key, classes in json.loads((inputs / "syn" / "train_labels.json").read_text()).items()}
    path = tmp_path / "other_labels.json"
    path.write_text(json.dumps(labels))
    return {"labels": path}


def other_root(inputs, tmp_path):
    root = tmp_path / "other_images"
    shutil.copytree(inputs / "syn" / "images", root)
    for path in root.iterdir():
        Image.fromarray(255 - np.asarray(Image.open(path).convert("RGB"))).save(path)
    return {"root": root}


CHANGES = {"labels": (other_labels, ()), "root": (other_root, ()),
           "threshold": (None, ("--threshold", "0.5")), "percentile": (None, ("--percentile", "40")),
           "rule": (None, ("--fg-bg-rule", "foreground"))}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_partial_results_of_other_inputs_are_not_reused(cue_inputs, tmp_path, change, capsys):
    """Killed after two .partial saves (a broken image stops the run), then rerun with another value
    of one input: the cues equal a fresh run's with that value, not the old ones."""
    make_paths, flags = CHANGES[change]
    bad = image_file(cue_inputs, BAD_IMAGE)
    good = bad.read_bytes()
    out = tmp_path / "cues.pickle"
    try:
        bad.write_bytes(b"not an image")
        assert run(argv_of(cue_inputs, out)) in (2, "ImageListError")
    finally:
        bad.write_bytes(good)
    partial = pickle.loads((tmp_path / "cues.pickle.partial").read_bytes())
    assert sorted(partial["cues"]) == [0, 1, 2, 3]
    paths = make_paths(cue_inputs, tmp_path) if make_paths else {}
    assert run(argv_of(cue_inputs, out, *flags, **paths)) == 0
    said = capsys.readouterr()
    assert "starting over" in said.err or "0 images done" in said.out and "4 others redone" in said.out
    fresh = tmp_path / "fresh.pickle"
    assert run(argv_of(cue_inputs, fresh, *flags, **paths)) == 0
    got, expected = pickle.loads(out.read_bytes()), pickle.loads(fresh.read_bytes())
    assert sorted(got) == sorted(expected)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_partial_results_of_the_same_inputs_are_reused(cue_inputs, tmp_path, capsys):
    out = tmp_path / "cues.pickle"
    bad = image_file(cue_inputs, BAD_IMAGE)
    good = bad.read_bytes()
    try:
        bad.write_bytes(b"not an image")
        assert run(argv_of(cue_inputs, out)) == 2
    finally:
        bad.write_bytes(good)
    err = capsys.readouterr().err
    assert f"the 4 of {IMAGES} images done are saved in {out}.partial" in err
    partial = out.with_name("cues.pickle.partial")
    saved = pickle.loads(partial.read_bytes())
    marker = (np.array([1], np.int64), np.array([[1], [0], [0]], np.int64))
    saved["cues"][2] = marker                     # a reused entry is taken as it is
    partial.write_bytes(pickle.dumps(saved))
    assert run(argv_of(cue_inputs, out)) == 0
    assert "resuming, 4 images done" in capsys.readouterr().out
    assert pickle.loads(out.read_bytes())["2_cues"].tolist() == [[1], [0], [0]] and not partial.exists()


# ----- 2. ranges ---------------------------------------------------------------------------------
@pytest.mark.parametrize("flag, value", [("--threshold", "1.5"), ("--threshold", "1"), ("--threshold", "-0.1"),
                                         ("--threshold", "nan"), ("--percentile", "150"), ("--percentile", "-1"),
                                         ("--percentile", "inf"), ("--batch", "0"), ("--save-every", "-2"),
                                         ("--workers", "-1"), ("--threshold", "x")])
def test_out_of_range_values_are_usage_errors_naming_the_flag(flag, value, capsys):
    with pytest.raises(SystemExit) as info:
        MAKE_CUES.build_parser().parse_args([flag, value])
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"argument {flag}: need" in err, err


@pytest.mark.parametrize("flag, value", [("--threshold", "0"), ("--threshold", "0.99"), ("--percentile", "0"),
                                         ("--percentile", "100")])
def test_values_at_the_ends_of_a_range_are_accepted(flag, value):
    assert getattr(MAKE_CUES.build_parser().parse_args([flag, value]), flag[2:]) == float(value)


# ----- 3. outputs that cannot be written, a full disk, a damaged .partial, Ctrl-C -----------------
def test_a_read_only_out_folder_is_refused_before_any_image(cue_inputs, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    result = run_limited(python_script("training/make_cues.py", *argv_of(cue_inputs, folder / "cues.pickle")),
                         read_only=[folder])
    assert result.returncode == 2, result.stderr
    assert message_lines(result.stderr, "make_cues:") == [line for line in result.stderr.splitlines() if line]
    assert "--out" in result.stderr and str(folder) in result.stderr and "Traceback" not in result.stderr
    assert not list(folder.iterdir())


def test_a_full_disk_is_one_line_and_keeps_the_cues(cue_inputs, tmp_path):
    """The cues (44 kB) fit, the report figure does not: exit 2 naming report.png, the cues
    complete, no half-written report.png."""
    full, copy = tmp_path / "full", tmp_path / "copy"
    argv = [a for a in argv_of(cue_inputs, full / "cues.pickle", "--save-every", "100") if a != "--no-report"]
    result = run_limited(python_script("training/make_cues.py", *argv), full=full, full_bytes=96 * 1024,
                         copy_full_to=copy)
    assert result.returncode == 2, result.stderr
    message = message_lines(result.stderr, "make_cues:")
    assert len(message) == 1 and "report.png" in message[0] and "No space left" in message[0], result.stderr
    assert f"the cues of all {IMAGES} images are in" in message[0] and "Traceback" not in result.stderr
    cues = pickle.loads((copy / "cues.pickle").read_bytes())
    assert len(cues) == 2 * IMAGES
    assert not (copy / "report.png").exists() and not list(copy.glob(".*"))


def test_a_damaged_partial_is_named(cue_inputs, tmp_path, capsys):
    out = tmp_path / "cues.pickle"
    partial = tmp_path / "cues.pickle.partial"
    partial.write_bytes(b"\x80\x04garbage")
    assert run(argv_of(cue_inputs, out)) == 2
    err = capsys.readouterr().err
    assert str(partial) in err and "--restart" in err and len(err.splitlines()) == 1
    assert partial.read_bytes() == b"\x80\x04garbage" and not out.exists()
    assert run(argv_of(cue_inputs, out, "--restart")) == 0 and not partial.exists()


def test_a_partial_of_an_older_make_cues_is_started_over(cue_inputs, tmp_path, capsys):
    out = tmp_path / "cues.pickle"
    marker = (np.array([1], np.int64), np.array([[1], [0], [0]], np.int64))
    (tmp_path / "cues.pickle.partial").write_bytes(pickle.dumps({"fingerprint": {"threshold": 0.2}, "cues": {2: marker}}))
    assert run(argv_of(cue_inputs, out)) == 0
    assert "starting over" in capsys.readouterr().err and pickle.loads(out.read_bytes())["2_cues"].shape[1] > 1


def test_ctrl_c_saves_what_was_done(cue_inputs, tmp_path, capsys, monkeypatch):
    calls = []
    heatmaps = loc.CueNets.heatmaps

    def interrupted(self, images):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return heatmaps(self, images)
    monkeypatch.setattr(loc.CueNets, "heatmaps", interrupted)
    out = tmp_path / "cues.pickle"
    assert run(argv_of(cue_inputs, out, "--save-every", "100")) == MAKE_CUES.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "make_cues: interrupted; the 2 of 6 images done are saved in" in err and "Traceback" not in err
    assert sorted(pickle.loads((tmp_path / "cues.pickle.partial").read_bytes())["cues"]) == [0, 1]
