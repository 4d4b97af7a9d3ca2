"""The VOC stand-ins (sec.voc_render) and bench/voc_shapes.py: renders deterministic per id, the
manifest and resuming, a class's appearance varying and overlapping other classes' (measured by a
colour-only classifier), the mask geometry; one slow end-to-end --quick run of the benchmark on
the real masks and cues (skipped without ../shared/data)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, load_script
from PIL import Image

from sec import ablation, voc_render
from sec.visualize import save_palette_png

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "bench" / "voc_shapes.py"
QUICK_TIMEOUT_S = 900
NUM_FOREGROUND = len(voc_render.CLASS_APPEARANCE)
COLOUR_ONLY_CEILING = 0.6        # a colour-only classifier must stay well below 100 %

voc_shapes = load_script("bench/voc_shapes.py")


def two_object_mask(height=90, width=120):
    """Background, a class-15 rectangle and a class-8 disc, with a void band around the disc."""
    mask = np.zeros((height, width), np.uint8)
    mask[10:60, 10:50] = 15
    yy, xx = np.mgrid[0:height, 0:width]
    radius = np.hypot(yy - 50, xx - 85)
    mask[radius <= 22] = 255
    mask[radius <= 19] = 8
    return mask


def write_mask_folder(folder, masks):
    """masks: {split: {id: mask}} -> <folder>/SegmentationClassAug/<id>.png and <split>.txt."""
    (folder / voc_render.MASK_FOLDER).mkdir(parents=True)
    for split, by_id in masks.items():
        for image_id, mask in by_id.items():
            save_palette_png(mask, folder / voc_render.MASK_FOLDER / f"{image_id}.png")
        (folder / f"{split}.txt").write_text("".join(f"{i}\n" for i in by_id))
    return folder


def test_render_is_deterministic_per_id_and_keeps_the_mask():
    mask = two_object_mask()
    image, small = voc_render.render(mask, "2007_000032", scale=1.0)
    again, _ = voc_render.render(mask, "2007_000032", scale=1.0)
    other, _ = voc_render.render(mask, "2007_000033", scale=1.0)
    assert image.dtype == np.uint8 and image.shape == (90, 120, 3)
    assert np.array_equal(image, again) and not np.array_equal(image, other)
    assert np.array_equal(small, mask)                          # scale 1: the mask itself, void kept
    image3, small3 = voc_render.render(mask, "2007_000032")     # default 1/3
    assert image3.shape == (30, 40, 3) and small3.shape == (30, 40)


def test_mask_geometry_by_hand():
    mask = np.arange(36).reshape(6, 6)
    # 6 -> 3 pixels: output i takes input floor((i + 0.5) * 2) = 1, 3, 5.
    assert voc_render.downsample_mask(mask, (3, 3)).tolist() == [[7, 9, 11], [19, 21, 23], [31, 33, 35]]
    assert voc_render.render_size((375, 500), 1 / 3) == (125, 167)
    labels = np.array([[1, 2], [3, 4]])
    # 2 -> 5 pixels: output i takes input floor((i + 0.5) * 2 / 5) = 0, 0, 1, 1, 1.
    assert ablation.enlarge_labels(labels, (5, 5))[:, 0].tolist() == [1, 1, 3, 3, 3]
    blocky = np.kron(np.array([[0, 3], [5, 0]]), np.ones((3, 3), int))
    assert np.array_equal(ablation.enlarge_labels(voc_render.downsample_mask(blocky, (2, 2)), (6, 6)), blocky)
    void = np.array([[1, 255, 255, 2]])
    assert voc_render.fill_void(void).tolist() == [[1, 1, 2, 2]]
    assert voc_render.fill_void(np.full((2, 2), 255)).tolist() == [[0, 0], [0, 0]]


def test_boundary_band_by_hand():
    gt = np.zeros((1, 9), np.uint8)
    gt[0, 5:] = 3                                     # boundary between columns 4 and 5
    assert ablation.boundary_band(gt, width=2)[0].tolist() == [False, False, True, True, True, True, True, True, False]
    assert not ablation.boundary_band(np.zeros((4, 4), np.uint8)).any()
    void = np.zeros((1, 7), np.uint8)
    void[0, 3] = 255                                  # the void label marks a boundary too
    assert ablation.boundary_band(void, width=1)[0].tolist() == [False, True, True, True, True, True, False]


def test_render_refuses_a_value_that_is_no_class():
    mask = two_object_mask()
    mask[0, 0] = 30
    with pytest.raises(ValueError, match="mask value 30 is neither a class 0..20 nor 255"):
        voc_render.render(mask, "x")
    with pytest.raises(ValueError, match="need an H x W class-index mask"):
        voc_render.render(np.zeros((4, 4, 3), np.uint8), "x")


def object_colours(instances_per_class=12, size=48):
    """(features, classes): mean and std of the RGB of one disc object per render, for every
    foreground class (renders at scale 1 of a disc on background)."""
    yy, xx = np.mgrid[0:size, 0:size]
    disc = np.hypot(yy - size / 2, xx - size / 2) <= size / 3
    features, classes = [], []
    for label in range(1, NUM_FOREGROUND + 1):
        mask = np.where(disc, label, 0).astype(np.uint8)
        for k in range(instances_per_class):
            image, _ = voc_render.render(mask, f"colour_{label}_{k}", scale=1.0)
            pixels = image[disc].astype(np.float64)
            features.append(np.concatenate([pixels.mean(axis=0), pixels.std(axis=0)]))
            classes.append(label)
    return np.array(features), np.array(classes)


def test_a_class_varies_and_colour_alone_does_not_classify():
    features, classes = object_colours()
    # Within a class, objects differ: the mean colour of a class's instances spreads by more than
    # 10 grey levels (sd over instances, averaged over channels) for every class.
    for label in range(1, NUM_FOREGROUND + 1):
        assert features[classes == label, :3].std(axis=0).mean() > 10.0, voc_render.VOC_CLASSES[label]
    # Colour-only nearest-centroid classifier, trained on even instances, tested on odd ones.
    train = np.arange(len(classes)) % 2 == 0
    centroids = np.stack([features[train & (classes == c)].mean(axis=0) for c in range(1, NUM_FOREGROUND + 1)])
    distances = ((features[~train, None, :] - centroids[None]) ** 2).sum(axis=2)
    accuracy = float((distances.argmin(axis=1) + 1 == classes[~train]).mean())
    assert 1.0 / NUM_FOREGROUND < accuracy < COLOUR_ONLY_CEILING, accuracy
    # Every hue mode of a class lies within 30 degrees of another class's mode: colours overlap.
    modes = [(label, hue) for label, a in enumerate(voc_render.CLASS_APPEARANCE, start=1) for hue in a.hues]
    for label, hue in modes:
        gaps = [min(abs(hue - other) % 360, 360 - abs(hue - other) % 360) for k, other in modes if k != label]
        assert min(gaps) <= 30, (voc_render.VOC_CLASSES[label], hue)
    shared = {name: sum(a.texture == name for a in voc_render.CLASS_APPEARANCE) for name in voc_render.TEXTURES}
    assert min(shared.values()) >= 2                            # every texture family names several classes


def test_render_folder_manifest_resume_and_workers(tmp_path):
    masks = write_mask_folder(tmp_path / "masks", {"train_aug": {"a1": two_object_mask(), "a2": two_object_mask(60, 60)},
                                                   "val": {"v1": two_object_mask(45, 90)}})
    out = tmp_path / "renders"
    manifest = voc_render.render_folder(masks, out, scale=0.5)
    assert manifest["complete"] and manifest["counts"] == {"train_aug": 2, "val": 1}
    stored = json.loads((out / "manifest.json").read_text())
    assert stored["parameters"]["generator"] == "sec.voc_render"
    assert stored["parameters"]["version"] == voc_render.GENERATOR_VERSION and stored["parameters"]["scale"] == 0.5
    assert (out / "ImageSets" / "Segmentation" / "val.txt").read_text() == "v1\n"
    jpgs = {p.name: p.read_bytes() for p in (out / "JPEGImages").iterdir()}
    assert sorted(jpgs) == ["a1.jpg", "a2.jpg", "v1.jpg"]
    assert Image.open(out / "JPEGImages" / "a1.jpg").size == (60, 45)
    assert np.asarray(Image.open(out / "SegmentationClassAug" / "a1.png")).shape == (45, 60)
    # Interrupted: one image missing and the manifest not complete -> only that image is redone.
    (out / "JPEGImages" / "a2.jpg").unlink()
    stored["complete"] = False
    (out / "manifest.json").write_text(json.dumps(stored))
    before = {p.name: p.stat().st_mtime_ns for p in (out / "JPEGImages").iterdir()}
    voc_render.render_folder(masks, out, scale=0.5)
    assert (out / "JPEGImages" / "a2.jpg").read_bytes() == jpgs["a2.jpg"]
    assert all((out / "JPEGImages" / name).stat().st_mtime_ns == t for name, t in before.items())
    # Another process layout gives the same bytes.
    voc_render.render_folder(masks, tmp_path / "two_workers", scale=0.5, workers=2)
    assert {p.name: p.read_bytes() for p in (tmp_path / "two_workers" / "JPEGImages").iterdir()} == jpgs
    # Other parameters: everything is rendered again.
    voc_render.render_folder(masks, out, scale=1.0)
    assert Image.open(out / "JPEGImages" / "a1.jpg").size == (120, 90)
    assert json.loads((out / "manifest.json").read_text())["parameters"]["scale"] == 1.0


def test_cli_checks_its_flags(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    run = subprocess.run([sys.executable, "-m", "sec.voc_render", "--scale", "0", "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    assert run.returncode == 2 and "--scale must be in (0, 1], got 0.0" in run.stderr
    run = subprocess.run([sys.executable, "-m", "sec.voc_render", "--masks", str(tmp_path / "none"),
                          "--out", str(tmp_path / "x")], capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    assert run.returncode == 2 and "id list not found" in run.stderr and not (tmp_path / "x").exists()


def test_training_subset_is_a_fixed_choice_in_list_order():
    entries = [(f"{i}.jpg", i) for i in range(100)]
    subset = voc_shapes.training_subset(entries, 10)
    assert subset == voc_shapes.training_subset(entries, 10) and len(subset) == 10
    assert [e[1] for e in subset] == sorted(e[1] for e in subset)
    assert voc_shapes.training_subset(entries, 1000) == entries


def test_variants_are_the_issue_rows():
    keys = {v.key: v for v in voc_shapes.VARIANTS}
    assert sorted(keys) == ["GAP", "GMP", "GT", "OWN", "S", "SC", "SE", "SEC"]
    assert (keys["GT"].losses, keys["GT"].cues) == ("S", "gt") and keys["OWN"].cues == "own"
    assert {keys[k].expand["pooling"] for k in ("GMP", "GAP", "SEC")} == {"gmp", "gap", "gwrp"}
    assert all(keys[k].cues == "cam" for k in ("S", "SE", "SC", "SEC", "GMP", "GAP"))


@pytest.mark.slow
def test_quick_benchmark_end_to_end_and_resume(tmp_path):
    """Every configuration trained briefly on a few renders of the real masks with the authors'
    cues, then a second call that reuses every run."""
    if not all((SHARED_DATA / name).is_file() for name in ("voc12_masks.tar.gz", "localization_cues.pickle.gz",
                                                           "input_list.txt")):
        pytest.skip(f"the real VOC masks, cues and list are not in {SHARED_DATA} (set SEC_SHARED_DATA)")
    command = [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)]
    env = dict(os.environ, SEC_SHARED_DATA=str(SHARED_DATA))
    early = subprocess.run(command + ["--report-only"], capture_output=True, text=True, cwd=REPO_ROOT, env=env)
    assert early.returncode == 2 and "--report-only: nothing to report yet" in early.stderr
    first = subprocess.run(command, capture_output=True, text=True, timeout=QUICK_TIMEOUT_S, cwd=REPO_ROOT, env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    report = json.loads((tmp_path / "table.json").read_text())
    keys = sorted(v.key for v in voc_shapes.VARIANTS)
    assert sorted(report["rows"]) == keys and report["settings"]["runs_trained"] == len(keys)
    assert report["settings"]["val_images"] == voc_shapes.QUICK_VAL_IMAGES
    for run in report["runs"]:
        assert 0.0 <= run["miou"] <= 1.0 and 0.0 <= run["miou_crf"] <= 1.0 and len(run["iou"]) == 21
        assert 0.0 <= run["miou_band"] <= 1.0 and 0.0 <= run["miou_band_crf"] <= 1.0
    for name in ("authors", "own"):
        cues = report["cues"][name]
        assert 0.0 < cues["precision"] <= 1.0 and 0.0 < cues["seeded_fraction"] < 1.0
        assert (tmp_path / f"cue_report_{name}.png").stat().st_size > 0
    table = (tmp_path / "table.md").read_text()
    for _, entries in voc_shapes.SECTIONS:
        for label, _ in entries:
            assert f"| {label} |" in table
    assert "| boundary band mIoU % (±10 px) | with CRF |" in table
    assert (tmp_path / "chart.png").stat().st_size > 0 and "Partial" not in table
    lists = {p: p.stat().st_mtime_ns for p in (tmp_path / "lists").iterdir()}
    (tmp_path / "runs" / "GT_seed0" / "scores.json").unlink()     # as if GT_seed0 had not finished
    partial = subprocess.run(command + ["--report-only"], capture_output=True, text=True, cwd=REPO_ROOT, env=env)
    assert partial.returncode == 0, partial.stderr[-3000:]
    assert "**Partial: 1 run(s) not finished: GT_seed0.**" in (tmp_path / "table.md").read_text()
    assert json.loads((tmp_path / "table.json").read_text())["settings"]["runs_trained"] == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "lists").iterdir()} == lists   # later stages stay fresh
    second = subprocess.run(command, capture_output=True, text=True, timeout=QUICK_TIMEOUT_S, cwd=REPO_ROOT, env=env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    again = json.loads((tmp_path / "table.json").read_text())
    assert again["settings"]["runs_skipped"] == len(keys) - 1 and again["settings"]["runs_trained"] == 1
    assert [r["miou_crf"] for r in again["runs"]] == [r["miou_crf"] for r in report["runs"]]


def test_benchmark_names_missing_shared_data(tmp_path):
    env = dict(os.environ, SEC_SHARED_DATA=str(tmp_path / "nowhere"), PYTHONPATH=str(REPO_ROOT))
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, cwd=REPO_ROOT, env=env)
    assert run.returncode == 2 and "voc12_masks.tar.gz not found" in run.stderr
    assert not (tmp_path / "out").exists()
