"""sec.synthetic: determinism, labels vs masks, colour is not the class, cue pickle format."""
import colorsys
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT
from sec import synthetic
from sec.synthetic import CLASSES, CueParams, generate, render, simulate_cues

N_TRAIN, N_VAL, CUE_SIZE, SIZE = 40, 8, 21, 96  # 48 jobs: two chunks of 32 with workers=2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, N_TRAIN, N_VAL, seed=5, image_size=SIZE, cue_size=CUE_SIZE)
    return out


def all_files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def read_mask(path):
    with Image.open(path) as image:
        assert image.mode == "P"
        return np.asarray(image)


def test_files_and_lists(dataset):
    train = (dataset / "train.txt").read_text().split("\n")
    assert train[0] == "train_000000.jpg 0" and len(train) == N_TRAIN + 1 and train[-1] == ""
    assert len((dataset / "val.txt").read_text().split()) == 2 * N_VAL
    for line in (dataset / "val.txt").read_text().splitlines():
        name = line.split()[0]
        with Image.open(dataset / "images" / name) as image:
            assert image.size == (SIZE, SIZE) and image.mode == "RGB"
        assert (dataset / "masks" / name.replace(".jpg", ".png")).is_file()


def test_same_seed_same_files_any_workers(dataset, tmp_path):
    generate(tmp_path / "again", N_TRAIN, N_VAL, seed=5, image_size=SIZE, cue_size=CUE_SIZE,
             workers=2)
    assert all_files(tmp_path / "again") == all_files(dataset)
    generate(tmp_path / "other", N_TRAIN, N_VAL, seed=6, image_size=SIZE, cue_size=CUE_SIZE)
    other = all_files(tmp_path / "other")
    assert other["masks/train_000000.png"] != all_files(dataset)["masks/train_000000.png"]


def test_labels_match_masks(dataset):
    cues = pickle.loads((dataset / "cues.pickle").read_bytes())
    for split, count in (("train", N_TRAIN), ("val", N_VAL)):
        labels = json.loads((dataset / f"{split}_labels.json").read_text())
        assert sorted(labels, key=int) == [str(i) for i in range(count)]
        for i in range(count):
            mask = read_mask(dataset / "masks" / f"{split}_{i:06d}.png")
            values = set(np.unique(mask).tolist())
            assert values <= set(range(len(CLASSES))), "255 and unknown labels are never used"
            foreground = sorted(values - {0})
            assert 1 <= len(foreground) <= 3
            assert labels[str(i)] == foreground
            if split == "train":
                assert cues[f"{i}_labels"].dtype == np.int64
                assert cues[f"{i}_labels"].tolist() == foreground


def region_colours(count, seed):
    """Mean RGB of every object region (with its class) and of the background, over `count`
    rendered samples."""
    rng = np.random.default_rng(seed)
    objects, classes, backgrounds = [], [], []
    for _ in range(count):
        image, mask = render(rng, 64)
        backgrounds.append(image[mask == 0].mean(axis=0))
        for label in np.unique(mask[mask > 0]):
            objects.append(image[mask == label].mean(axis=0))
            classes.append(label)
    return np.array(objects), np.array(classes), np.array(backgrounds)


def test_hsv_to_rgb_matches_colorsys():
    for hue, saturation, value in [(0, 1, 1), (59.5, 0.3, 0.8), (200, 0.7, 0.4), (359, 0.05, 0.95), (420, 1, 0.5)]:
        want = np.array(colorsys.hsv_to_rgb((hue % 360) / 360, saturation, value)) * 255
        np.testing.assert_allclose(synthetic.hsv_to_rgb(hue, saturation, value), want, atol=1e-3)


def test_objects_carry_their_class_hue_on_a_washed_out_background():
    objects, classes, backgrounds = region_colours(80, seed=1)
    assert set(classes.tolist()) == set(range(1, len(CLASSES)))
    for colour, label in zip(objects, classes):
        hue, saturation, _ = colorsys.rgb_to_hsv(*np.clip(colour, 0, 255) / 255)
        off = abs((hue * 360 - synthetic.CLASS_HUES[label - 1] + 180) % 360 - 180)
        # two colours within HUE_JITTER of the class hue, plus pixel noise and the texture mix
        assert off <= synthetic.HUE_JITTER + 5, (label, hue * 360)
        assert saturation >= synthetic.OBJECT_SATURATION[0] - 0.1
    saturations = [colorsys.rgb_to_hsv(*np.clip(c, 0, 255) / 255)[1] for c in backgrounds]
    assert max(saturations) <= synthetic.BG_SATURATION + 0.1 < synthetic.OBJECT_SATURATION[0]


def test_cue_pickle_format(dataset):
    cues = pickle.loads((dataset / "cues.pickle").read_bytes())
    assert sorted(cues) == sorted([f"{i}_labels" for i in range(N_TRAIN)] +
                                  [f"{i}_cues" for i in range(N_TRAIN)])
    for i in range(N_TRAIN):
        seeds = cues[f"{i}_cues"]
        assert seeds.dtype == np.int64 and seeds.ndim == 2 and seeds.shape[0] == 3
        classes, rows, cols = seeds
        assert set(classes.tolist()) <= {0} | set(cues[f"{i}_labels"].tolist())
        assert rows.min() >= 0 and cols.min() >= 0 and max(rows.max(), cols.max()) < CUE_SIZE
        assert len(set(zip(rows.tolist(), cols.tolist()))) == seeds.shape[1], "a cell with two seeds"


def precision_at_cell_centres(seeds, mask, cue_size):
    """Fraction of seeds whose class is the mask's class at their cell's pixel (corners aligned:
    cell i on pixel i (H - 1) / (S - 1), as deploy's upsampling and the CRF layer's zoom)."""
    step = (mask.shape[0] - 1) / (cue_size - 1)
    rows, cols = (np.floor(seeds[k] * step + 0.5).astype(int) for k in (1, 2))
    return (mask[rows, cols] == seeds[0]).mean(), seeds.shape[1]


@pytest.mark.parametrize("error_rate, slack", [(0.0, 0.0), (0.05, 0.01), (0.2, 0.05)])
def test_cue_precision_is_in_documented_range(error_rate, slack):
    rng = np.random.default_rng(11)
    correct = total = 0
    fg_seeded = present = 0
    for _ in range(40):
        _, mask = render(rng, SIZE)
        seeds = simulate_cues(mask, CUE_SIZE, rng, CueParams(error_rate=error_rate))
        precision, count = precision_at_cell_centres(seeds, mask, CUE_SIZE)
        correct += precision * count
        total += count
        labels = set(np.unique(mask[mask > 0]).tolist())
        present += len(labels)
        fg_seeded += len(labels & set(seeds[0].tolist()))
    precision = correct / total
    # Documented: never below 1 - error_rate (up to rounding), a little above when the band
    # around the objects has no room for all wrong seeds.
    assert 1 - error_rate - 0.005 <= precision <= 1 - error_rate + slack
    assert fg_seeded >= 0.9 * present, "most objects must get seeds"


def test_cues_are_sparse_and_leave_object_borders_open():
    rng = np.random.default_rng(3)
    _, mask = render(rng, SIZE)
    seeds = simulate_cues(mask, CUE_SIZE, rng, CueParams(error_rate=0.0))
    assert 0 < seeds.shape[1] < CUE_SIZE * CUE_SIZE
    grid = synthetic.grid_sample(mask, CUE_SIZE)
    foreground_cells = int((grid > 0).sum())
    assert int((seeds[0] > 0).sum()) < foreground_cells


def test_generate_skips_a_complete_set_and_redoes_a_changed_one(tmp_path):
    generate(tmp_path, 3, 2, seed=1, image_size=48, cue_size=CUE_SIZE)
    probe = tmp_path / "images" / "train_000000.jpg"
    probe.write_bytes(b"sentinel: skipped sets are not rewritten")
    generate(tmp_path, 3, 2, seed=1, image_size=48, cue_size=CUE_SIZE)
    assert probe.read_bytes().startswith(b"sentinel")
    generate(tmp_path, 3, 1, seed=1, image_size=48, cue_size=CUE_SIZE)
    assert not probe.read_bytes().startswith(b"sentinel")
    assert not (tmp_path / "masks" / "val_000001.png").exists(), "stale files are removed"
    (tmp_path / "masks" / "val_000000.png").unlink()
    generate(tmp_path, 3, 1, seed=1, image_size=48, cue_size=CUE_SIZE)
    assert (tmp_path / "masks" / "val_000000.png").is_file(), "an incomplete set is regenerated"


def test_cli(tmp_path):
    help_text = subprocess.run([sys.executable, "-m", "sec.synthetic", "--help"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout
    assert "--train" in help_text and "--seed" in help_text
    done = subprocess.run([sys.executable, "-m", "sec.synthetic", "--out", str(tmp_path), "--train",
                           "2", "--val", "1", "--seed", "3", "--image-size", "48", "--workers", "1"],
                          cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert "3 images" in done.stdout
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["parameters"]["seed"] == 3 and manifest["parameters"]["n_train"] == 2


def test_grid_upsampling_inverts_grid_sampling():
    grid = np.random.default_rng(0).integers(0, 7, size=(21, 21))
    up = synthetic.grid_upsample(grid, (160, 160))
    assert up.shape == (160, 160) and (synthetic.grid_sample(up, 21) == grid).all()
    # corners aligned: the first and last rows and columns are the grid's edges
    assert (up[0, 0], up[-1, -1], up[0, -1]) == (grid[0, 0], grid[-1, -1], grid[0, -1])
    # each pixel takes the cell whose pixel (grid_positions) is nearest
    positions = synthetic.grid_positions(160, 21)
    for pixel in (0, 3, 4, 77, 159):
        nearest = int(np.argmin(np.abs(positions - pixel)))
        assert up[pixel, 0] == grid[nearest, 0]
