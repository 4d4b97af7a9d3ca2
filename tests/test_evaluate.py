"""deploy/evaluate.py end to end on tiny folders (synthetic-style and VOC-shaped); sec.visualize."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT, load_script
from sec.visualize import overlay, palette_array, save_palette_png, save_panels, voc_palette

SCRIPT = REPO_ROOT / "deploy" / "evaluate.py"
IGNORE = 255


evaluate = load_script("deploy/evaluate.py")


def run(*argv):
    return evaluate.main(evaluate.build_parser().parse_args([str(a) for a in argv]))


# Three images, three classes. Image c has no prediction.
GT = {"a": np.array([[0, 0, 1, 1], [0, 0, 1, 1]]),
      "b": np.array([[2, 2, 0, IGNORE], [2, 2, 0, IGNORE]]),
      "c": np.array([[1, 1, 1, 0], [1, 1, 1, 0]])}
PRED = {"a": np.array([[0, 0, 1, 1], [0, 1, 1, 1]]),   # one 0 predicted as 1
        "b": np.array([[2, 2, 2, 1], [2, 0, 0, 1]])}   # one 2 as 0, one 0 as 2


def write_folder(root, masks, mode="P"):
    root.mkdir(parents=True, exist_ok=True)
    for name, mask in masks.items():
        if mode == "P":
            save_palette_png(mask, root / f"{name}.png")
        else:
            Image.fromarray(mask.astype(np.uint8), mode=mode).save(root / f"{name}.png")


def iou(tp, gt_count, pred_count):
    return tp / (gt_count + pred_count - tp)


def test_missing_prediction_counts_as_wrong_and_fails(tmp_path, capsys):
    write_folder(tmp_path / "gt", GT)
    write_folder(tmp_path / "pred", PRED, mode="L")
    status = run("--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "--classes", "3",
                 "--json", tmp_path / "out.json")
    assert status == 1
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["missing"] == ["c"] and result["num_images"] == 3
    # Hand counts over a, b and c (c all wrong). Class 0: gt 4+2+2=8, TP 3+1=4, predicted 3+2=5.
    # Class 1: gt 4+6=10, TP 4, predicted 5.  Class 2: gt 4, TP 3, predicted 4.
    expected = [iou(4, 8, 5), iou(4, 10, 5), iou(3, 4, 4)]
    assert [c["iou"] for c in result["classes"]] == pytest.approx(expected)
    assert result["miou"] == pytest.approx(np.mean(expected))
    assert result["pixel_accuracy"] == pytest.approx(11 / 22)
    out = capsys.readouterr()
    assert "class_2" in out.out and "mIoU" in out.out and "missing predictions (1): c" in out.err


def test_allow_missing_leaves_the_image_out(tmp_path):
    write_folder(tmp_path / "gt", GT)
    write_folder(tmp_path / "pred", PRED)
    (tmp_path / "ids.txt").write_text("a.jpg 0\nb.jpg 1\nc.jpg 2\n")  # original list format
    status = run("--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "--classes", "synthetic",
                 "--list", tmp_path / "ids.txt", "--allow-missing", "--json", tmp_path / "out.json")
    assert status == 0
    result = json.loads((tmp_path / "out.json").read_text())
    expected = [iou(4, 6, 5), iou(4, 4, 5), iou(3, 4, 4)]
    assert result["pixel_accuracy"] == pytest.approx(11 / 14)
    assert [c["iou"] for c in result["classes"][:3]] == pytest.approx(expected)
    assert [c["iou"] for c in result["classes"][3:]] == [None] * 4
    assert result["classes"][1]["name"] == "disk"
    assert result["num_images"] == 2 and result["missing"] == ["c"]


def test_size_mismatch_and_bad_mode_name_the_file(tmp_path, capsys):
    write_folder(tmp_path / "gt", {"a": GT["a"]})
    write_folder(tmp_path / "pred", {"a": np.zeros((3, 4), np.uint8)})
    assert run("--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "--classes", "3") == 2
    assert "pred/a.png: size 4x3 differs" in capsys.readouterr().err
    Image.new("LA", (4, 2)).save(tmp_path / "pred" / "a.png")
    assert run("--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "--classes", "3") == 2
    assert "a.png: need a palette (P), greyscale (L) or RGB PNG, got mode LA" in capsys.readouterr().err
    Image.new("RGB", (4, 2), (1, 2, 3)).save(tmp_path / "pred" / "a.png")
    assert run("--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "--classes", "3") == 2
    assert "a.png: colour (1, 2, 3) is not in the VOC colour map" in capsys.readouterr().err
    write_folder(tmp_path / "pred", {"a": np.full((2, 4), 5)})
    assert run("--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "--classes", "3") == 2
    assert "predicted value 5" in capsys.readouterr().err


def make_voc(root):
    """VOC-shaped fixture: palette ground truth with a 255 boundary band, a val list."""
    gt = {"2007_000001": np.array([[0, 255, 15, 15], [0, 255, 15, 15]]),
          "2007_000002": np.array([[12, 12, 255, 0], [12, 12, 255, 0]]),
          "2007_000003": np.zeros((2, 4), int)}   # in trainval only: not evaluated
    write_folder(root / "SegmentationClass", gt)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000001\n2007_000002\n")


def test_voc_layout(tmp_path):
    make_voc(tmp_path / "VOC2012")
    # person (15) perfect, dog (12) half wrong as cat (8); background perfect.
    write_folder(tmp_path / "pred", {"2007_000001": np.array([[0, 0, 15, 15], [0, 8, 15, 15]]),
                                     "2007_000002": np.array([[12, 8, 0, 0], [12, 8, 8, 0]])})
    expected = {"background": 1.0, "cat": 0.0, "dog": 0.5, "person": 1.0}
    for gt_args in (["--gt", tmp_path / "VOC2012"],
                    ["--gt", tmp_path / "VOC2012" / "SegmentationClass",
                     "--list", tmp_path / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt"]):
        assert run("--pred", tmp_path / "pred", *gt_args, "--json", tmp_path / "voc.json") == 0
        result = json.loads((tmp_path / "voc.json").read_text())
        by_name = {c["name"]: c for c in result["classes"]}
        assert {n: by_name[n]["iou"] for n in expected} == pytest.approx(expected)
        assert not by_name["cat"]["in_ground_truth"]
        assert result["miou"] == pytest.approx((1.0 + 0.5 + 1.0) / 3)
        assert result["num_images"] == 2 and len(result["classes"]) == 21


def test_runs_as_a_script(tmp_path):
    write_folder(tmp_path / "gt", {"a": GT["a"]})
    write_folder(tmp_path / "pred", {"a": GT["a"]})
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run([sys.executable, str(SCRIPT), "--pred", str(tmp_path / "pred"),
                           "--gt", str(tmp_path / "gt"), "--classes", "2"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "100.00" in done.stdout
    (tmp_path / "none").mkdir()   # a folder without the prediction: counted as missing
    missing = subprocess.run([sys.executable, str(SCRIPT), "--pred", str(tmp_path / "none"),
                              "--gt", str(tmp_path / "gt"), "--classes", "2"],
                             capture_output=True, text=True, env=env)
    assert missing.returncode == 1


def test_voc_palette_follows_the_bit_rule():
    palette = palette_array()
    # Well-known VOC colours: aeroplane, person, the 255 boundary.
    assert tuple(palette[1]) == (128, 0, 0)
    assert tuple(palette[15]) == (192, 128, 128)
    assert tuple(palette[255]) == (224, 224, 192)
    # Bit rule, written differently: bit k of red is bit 3*(7-k) of the label, and so on.
    for label in (0, 7, 38, 200):
        for channel in range(3):
            value = sum(((label >> (3 * j + channel)) & 1) << (7 - j) for j in range(3))
            assert palette[label][channel] == value
    assert len(voc_palette()) == 768 and len(set(map(tuple, palette))) == 256


def test_palette_png_round_trip_and_panels(tmp_path):
    mask = np.array([[0, 1, 2], [15, 255, 20]], np.uint8)
    save_palette_png(mask, tmp_path / "m.png")
    with Image.open(tmp_path / "m.png") as image:
        assert image.mode == "P"
        np.testing.assert_array_equal(np.asarray(image), mask)
    image = np.full((2, 3, 3), 100, np.uint8)
    blended = overlay(image, mask, alpha=0.5)
    assert tuple(blended[0, 0]) == (100, 100, 100) and tuple(blended[1, 1]) == (100, 100, 100)
    assert tuple(blended[0, 1]) == (114, 50, 50)  # halfway to (128, 0, 0)
    canvas = save_panels([[image, mask], [mask]], tmp_path / "panels.png")
    assert canvas.shape == (2 * 2 + 3 * 4, 2 * 3 + 3 * 4, 3)
    assert (tmp_path / "panels.png").is_file()
    with pytest.raises(ValueError, match="panel cells"):
        save_panels([[np.zeros((2, 2, 4), np.uint8)]], tmp_path / "bad.png")


def test_missing_pred_folder_is_bad_input_not_a_table_of_zeros(tmp_path, capsys):
    """Before, a misspelt --pred printed a full table with mIoU 0 and never said why."""
    write_folder(tmp_path / "gt", GT)
    write_folder(tmp_path / "pred", PRED)
    assert run("--pred", tmp_path / "perd", "--gt", tmp_path / "gt", "--classes", 3) == \
        evaluate.EXIT_BAD_INPUT
    out, err = capsys.readouterr()
    assert "prediction folder not found: " in err and "perd" in err
    assert "mIoU" not in out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run("--pred", empty, "--gt", tmp_path / "gt", "--classes", 3) == evaluate.EXIT_MISSING
    assert "none of the predictions was found" in capsys.readouterr().err


def test_unwritable_json_is_bad_input_before_any_work(tmp_path, capsys):
    """Before, an unwritable --json was a traceback after the table, with exit status 1."""
    write_folder(tmp_path / "gt", GT)
    write_folder(tmp_path / "pred", PRED)
    (tmp_path / "a_file").write_text("")
    for target in (tmp_path / "a_file" / "results.json", tmp_path / "pred"):
        assert run("--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "--classes", 3,
                   "--json", target, "--allow-missing") == evaluate.EXIT_BAD_INPUT
        out, err = capsys.readouterr()
        assert "--json" in err and str(target) in err and "mIoU" not in out
    good = tmp_path / "out" / "results.json"
    assert run("--pred", tmp_path / "pred", "--gt", tmp_path / "nowhere", "--classes", 3,
               "--json", good) == evaluate.EXIT_BAD_INPUT   # checked after the --json
    assert not good.exists()   # the check leaves no empty file behind
    assert run("--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "--classes", 3,
               "--json", good, "--allow-missing") == 0
    assert json.loads(good.read_text())["num_images"] == 2
