"""bench/ablation.py: variant nets, ground-truth cues, cue-only scoring, aggregation; one slow
end-to-end --quick run (trains every configuration briefly on a tiny synthetic set)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import load_script
from test_pylayers_blob import Driver

import pylayers
from sec.caffe import formats
from sec.visualize import save_palette_png

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "bench" / "ablation.py"
BASE_NET = REPO_ROOT / "models" / "synthetic" / "train.prototxt"
CRF_LAYER = "fc8-SEC-CRF-log"
SEED, EXPAND, CONSTRAIN = "loss-Seed", "loss-Expand", "loss-Constrain"
QUICK_TIMEOUT_S = 900


ablation = load_script("bench/ablation.py")

# Written out by hand: variant -> (loss layers kept, pooling, q_fg, q_bg) where None = not set.
EXPECTED_VARIANTS = {
    "S": ({SEED}, None),
    "SE": ({SEED, EXPAND}, ("gwrp", 0.996, 0.999)),
    "SC": ({SEED, CONSTRAIN}, None),
    "SEC": ({SEED, EXPAND, CONSTRAIN}, ("gwrp", 0.996, 0.999)),
    "GMP": ({SEED, EXPAND, CONSTRAIN}, ("gmp", None, None)),
    "GAP": ({SEED, EXPAND, CONSTRAIN}, ("gap", None, None)),
    "q0.9": ({SEED, EXPAND, CONSTRAIN}, ("gwrp", 0.9, 0.999)),
    "q0.99": ({SEED, EXPAND, CONSTRAIN}, ("gwrp", 0.99, 0.999)),
    "q0.999": ({SEED, EXPAND, CONSTRAIN}, ("gwrp", 0.999, 0.999)),
    "GT": ({SEED}, None),
}


@pytest.fixture(scope="module")
def base_net():
    return formats.read_net_prototxt(BASE_NET)


def expand_layer_from(layer):
    """The real pylayers ExpandLossLayer set up with the layer's param_str (its own parser)."""
    probs = np.full((1, 7, 3, 3), 1.0 / 7)
    labels = np.ones((1, 1, 1, 7))
    return Driver(pylayers.ExpandLossLayer, [probs, labels], param_str=layer.python_param.param_str).layer


def test_every_variant_is_listed_here():
    assert sorted(v.key for v in ablation.VARIANTS) == sorted(EXPECTED_VARIANTS)


@pytest.mark.parametrize("variant", ablation.VARIANTS, ids=lambda v: v.key)
def test_variant_nets_have_the_expected_losses_and_expand_params(tmp_path, base_net, variant):
    path = ablation.write_net(ablation.make_variant_net(base_net, variant.losses, variant.expand),
                              tmp_path / f"{variant.key}.prototxt")
    net = formats.read_net_prototxt(path)     # parsed back from the written file
    losses, expand = EXPECTED_VARIANTS[variant.key]
    names = [layer.name for layer in net.layer]
    assert {n for n in names if n.startswith("loss-")} == losses
    assert (CRF_LAYER in names) == (CONSTRAIN in losses)
    removed = {SEED, EXPAND, CONSTRAIN} - losses | ({CRF_LAYER} if CONSTRAIN not in losses else set())
    kept = [layer for layer in base_net.layer if layer.name not in removed]
    assert [layer.SerializeToString() for layer in net.layer if layer.name != EXPAND] == \
        [layer.SerializeToString() for layer in kept if layer.name != EXPAND]
    if expand is None:
        assert all(layer.python_param.param_str == base_layer.python_param.param_str
                   for layer in net.layer for base_layer in base_net.layer if layer.name == base_layer.name)
        return
    layer = expand_layer_from(next(layer for layer in net.layer if layer.name == EXPAND))
    pooling, q_fg, q_bg = expand
    assert layer.pooling == pooling
    if q_fg is not None:
        assert (layer.q_fg, layer.q_bg) == (q_fg, q_bg)


def test_variant_errors_name_the_problem(base_net):
    with pytest.raises(ValueError, match="losses made of"):
        ablation.make_variant_net(base_net, "SX")
    with pytest.raises(ValueError, match="losses made of"):
        ablation.make_variant_net(base_net, "")
    with pytest.raises(ValueError, match="need exactly one ExpandLossLayer"):
        ablation.make_variant_net(base_net, "S", {"pooling": "gmp"})
    broken = ablation.make_variant_net(base_net, "SEC")
    next(layer for layer in broken.layer if layer.name == EXPAND).name = "loss-Other"
    with pytest.raises(ValueError, match=r"my.prototxt: no layer named \['loss-Expand'\]"):
        ablation.make_variant_net(broken, "S", source="my.prototxt")


def write_tiny_set(folder, masks):
    """masks: {id: HxW uint8} -> list file, mask PNGs named img<id>.png."""
    (folder / "masks").mkdir(parents=True)
    lines = []
    for image_id, mask in masks.items():
        save_palette_png(np.asarray(mask, dtype=np.uint8), folder / "masks" / f"img{image_id}.png")
        lines.append(f"img{image_id}.jpg {image_id}")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder / "list.txt", folder / "masks"


def test_ground_truth_cues_seed_every_cell_through_the_annotation_layer(tmp_path):
    rng = np.random.default_rng(3)
    masks = {4: rng.integers(0, 7, size=(10, 10)), 9: np.zeros((10, 10), int)}
    masks[9][6:, 6:] = 2
    masks[9][3, 3] = 255                                   # an ignored cell stays unseeded
    image_list, mask_folder = write_tiny_set(tmp_path, masks)
    path = ablation.write_cues(ablation.ground_truth_cues(image_list, mask_folder, cue_size=4), tmp_path / "gt.pickle")
    driver = Driver(pylayers.AnnotationLayer, [np.array([4.0, 9.0])], num_tops=2,
                    param_str=f"cues: {path}\nnum_classes: 7\ncue_size: 4", dtype=np.float32)
    labels, cues = driver.forward(np.array([4.0, 9.0], dtype=np.float32))
    # Grid positions of 4 cells on 10 pixels, corners aligned: 0, 3, 6, 9.
    grid4 = masks[4][::3, ::3]
    assert (cues[0].sum(axis=0) == 1).all() and (cues[0].argmax(axis=0) == grid4).all()
    assert np.flatnonzero(labels[0, 0, 0]).tolist() == sorted(set(np.unique(masks[4]).tolist()) - {0})
    assert cues[1].sum(axis=0)[1, 1] == 0 and cues[1].sum() == 15
    assert cues[1][2, 2:, 2:].all() and cues[1][0].sum() == 11
    assert np.flatnonzero(labels[1, 0, 0]).tolist() == [2]


def test_cue_scoring_on_a_hand_made_case(tmp_path):
    mask = np.array([[1, 1, 0, 0],
                     [1, 1, 0, 0],
                     [0, 0, 0, 2],
                     [255, 0, 2, 2]])
    image_list, mask_folder = write_tiny_set(tmp_path, {5: mask})
    # 2 x 2 grid on 4 pixels: each cell covers one 2 x 2 quadrant. Seeds: top-left 1, top-right 0,
    # bottom-right 2, bottom-left unseeded.
    cues = {"5_cues": np.array([[1, 0, 2], [0, 0, 1], [0, 1, 1]])}
    seeded, background, coverage = ablation.score_cues(cues, image_list, mask_folder, num_classes=3, cue_size=2)
    # Seeded only: class 0 TP 4 FN 1, class 1 TP 4, class 2 TP 3 FP 1.
    assert np.allclose(seeded.iou(), [4 / 5, 1.0, 3 / 4])
    assert math.isclose(seeded.miou(), (4 / 5 + 1 + 3 / 4) / 3)
    # Unseeded as background adds 3 correct background pixels (the 4th is ignored).
    assert np.allclose(background.iou(), [7 / 8, 1.0, 3 / 4])
    assert math.isclose(coverage, 12 / 15)


def test_cue_scoring_errors(tmp_path):
    image_list, mask_folder = write_tiny_set(tmp_path, {5: np.zeros((4, 4), int)})
    with pytest.raises(ValueError, match="image id 5: a cell carries two seeds"):
        ablation.score_cues({"5_cues": np.array([[1, 0], [0, 0], [1, 1]])}, image_list, mask_folder,
                            num_classes=3, cue_size=2)
    with pytest.raises(KeyError, match="image id 5 has no '5_cues'"):
        ablation.score_cues({}, image_list, mask_folder, num_classes=3, cue_size=2)


def test_mean_std_and_aggregation():
    mean, std, count = ablation.mean_std([60.0, 62.0, 67.0])
    assert (mean, count) == (63.0, 3) and math.isclose(std, math.sqrt((9 + 1 + 16) / 2))
    assert ablation.mean_std([5.0]) == (5.0, None, 1)
    with pytest.raises(ValueError):
        ablation.mean_std([])
    records = [{"variant": "S", "seed": s, "miou": m, "miou_crf": c, "train_s": t, "eval_s": 1.0, "eval_crf_s": 2.0}
               for s, m, c, t in ((1, 0.5, 0.6, 10.0), (0, 0.7, 0.8, 20.0))]
    records.append({"variant": "GT", "seed": 0, "miou": 0.9, "miou_crf": 0.95, "train_s": 5.0, "eval_s": 1.0,
                    "eval_crf_s": 2.0})
    rows = ablation.aggregate(records)
    assert rows["S"]["seeds"] == [0, 1] and math.isclose(rows["S"]["miou"]["mean"], 60.0)
    assert math.isclose(rows["S"]["miou"]["std"], math.sqrt(200.0)) and rows["S"]["train_s"] == 15.0
    assert rows["GT"]["miou_crf"] == {"mean": 95.0, "std": None}
    settings = {"val_images": 3, "iters": 7, "seeds": [0, 1], "command": "cmd", "wall_s": 60.0,
                "runs_trained": 3, "runs_skipped": 0}
    table = ablation.markdown_table(rows, None, settings)
    assert "| S (seed only) | 60.0 ± 14.1 | 70.0 ± 14.1 | 2 | 15 + 1 + 2 |" in table
    assert "| ground-truth cues, seed loss | 90.0 | 95.0 | 1 |" in table and "S+E |" not in table
    assert "expansion pooling" not in table and "| **upper bound** |" in table   # no empty sections


@pytest.mark.slow
def test_quick_ablation_end_to_end_and_resume(tmp_path):
    """The slow one (about 2 minutes on 2 cores): every configuration trained briefly, then a
    second call that reuses every run."""
    command = [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=QUICK_TIMEOUT_S, cwd=REPO_ROOT)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    report = json.loads((tmp_path / "ablation.json").read_text())
    assert sorted(report["rows"]) == sorted(EXPECTED_VARIANTS)
    assert len(report["runs"]) == len(EXPECTED_VARIANTS) and report["settings"]["runs_trained"] == len(EXPECTED_VARIANTS)
    for run in report["runs"]:
        assert 0.0 <= run["miou"] <= 1.0 and 0.0 <= run["miou_crf"] <= 1.0
        assert Path(run["weights"]).is_file() and Path(run["weights"]).parent.parent == tmp_path / "runs"
    for split in ("val", "train"):
        for key in ("miou_seeded", "miou_background", "coverage"):
            assert 0.0 <= report["cue_reference"][split][key] <= 1.0
    table = (tmp_path / "ablation.md").read_text()
    for _, entries in ablation.SECTIONS:
        for label, _ in entries:
            assert f"| {label} |" in table
    assert (tmp_path / "ablation.png").stat().st_size > 0
    second = subprocess.run(command, capture_output=True, text=True, timeout=QUICK_TIMEOUT_S, cwd=REPO_ROOT)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    again = json.loads((tmp_path / "ablation.json").read_text())
    assert again["settings"]["runs_skipped"] == len(EXPECTED_VARIANTS)
    assert [r["miou"] for r in again["runs"]] == [r["miou"] for r in report["runs"]]
