"""--tensorboard of training/train.py and training/train_localization.py (sec.tensorboard).

The events are read back with TensorBoard's own reader and compared with losses.csv and
eval.json, which the runs write independently; the resume rule (append, the interrupted tail
purged) and the panel's pixels are checked against values made here. Rank 0 only under torchrun:
tests/test_multinode.py."""
import csv
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import load_script
from sec import tensorboard, visualize
from sec.data import MEAN_BGR

pytest.importorskip("tensorboard", reason="--tensorboard needs the 'tensorboard' package (pip install tensorboard)")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
TINY_IMAGE, TINY_NET, TINY_CUES = 80, 81, 11


def events(folder):
    reader = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    reader.Reload()
    return reader


def scalar_steps(reader, tag):
    return {event.step: event.value for event in reader.Scalars(tag)}


class FakeSolver:
    """What TrainingLog reads of a solver, for iteration `iter` with loss `value`."""

    def __init__(self, iteration, value):
        self.iter, self.smoothed_loss, self.lr = iteration + 1, value, 0.01
        self.last_outputs = {"loss-Seed": value / 2, "loss": value}
        self.last_timings = {"forward": 0.1, "backward": 0.2, "update": 0.01}
        self.test_results = []
        self.net = SimpleNamespace(blobs={})


def test_resume_appends_and_purges_the_interrupted_tail_a_new_run_starts_clean(tmp_path):
    first = tensorboard.TrainingLog(tmp_path)
    for step in range(5):                     # steps 3 and 4 logged, then a crash before snapshot 5
        first.iteration(FakeSolver(step, 1.0 + step))
    first.close()
    resumed = tensorboard.TrainingLog(tmp_path, resume_iter=3)
    for step in (3, 4, 5):
        resumed.iteration(FakeSolver(step, 10.0 + step))
    resumed.close()
    assert scalar_steps(events(tmp_path), "loss/total") == {0: 1.0, 1: 2.0, 2: 3.0, 3: 13.0, 4: 14.0, 5: 15.0}
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2       # appended, nothing overwritten
    fresh = tensorboard.TrainingLog(tmp_path)                            # a new run of that name
    fresh.iteration(FakeSolver(0, 7.0))
    fresh.close()
    assert scalar_steps(events(tmp_path), "loss/total") == {0: 7.0}


def test_panel_shows_image_cues_prediction_and_crf():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (2, 8, 6, 3)).astype(np.float32)
    images = (rgb[..., ::-1] - np.asarray(MEAN_BGR, np.float32)).transpose(0, 3, 1, 2)   # BGR - mean
    cues = np.zeros((2, 3, 4, 3), np.float32)
    cues[:, 2, 0, 0] = 1                        # one seeded cell of class 2; the rest unseeded
    scores = np.zeros((2, 3, 4, 3), np.float32)
    scores[:, 1] = 1                             # prediction: class 1 everywhere
    crf = np.zeros((2, 3, 4, 3), np.float32)
    crf[:, 0, :2] = 1                            # CRF: class 0 on the upper half,
    crf[:, 2, 2:] = 1                            # class 2 on the lower
    net = SimpleNamespace(blobs={name: SimpleNamespace(data=value) for name, value in
                                 (("images", images), ("cues", cues), ("fc8-SEC-Softmax", scores),
                                  ("fc8-SEC-CRF-log", crf))})
    panel = tensorboard.training_panel(net)
    assert panel.shape == (16, 24, 3) and panel.dtype == np.uint8
    np.testing.assert_array_equal(panel[:8, :6], rgb[0].astype(np.uint8))
    colours = visualize.palette_array()
    cue_cell = panel[:8, 6:12]
    assert (cue_cell[:2, :2] == colours[2]).all() and (cue_cell[4:, 2:] == colours[255]).all()
    assert (panel[:8, 12:18] == colours[1]).all()
    assert (panel[:4, 18:24] == colours[0]).all() and (panel[4:8, 18:24] == colours[2]).all()
    del net.blobs["cues"], net.blobs["fc8-SEC-Softmax"], net.blobs["fc8-SEC-CRF-log"]
    assert tensorboard.training_panel(net) is None        # an image alone is no panel


def test_a_missing_package_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(tensorboard.TensorBoardError, match="pip install tensorboard"):
        tensorboard.require()
    train = load_script("training/train.py")
    argv = ["--tensorboard", str(tmp_path / "tb"), "--runs", str(tmp_path / "runs"), "--cues", str(tmp_path / "c"),
            "--weights", str(tmp_path / "w")]
    assert train.main(train.build_parser().parse_args(argv), argv) == 2
    err = capsys.readouterr().err
    assert "--tensorboard needs the 'tensorboard' package: pip install tensorboard" in err
    assert not (tmp_path / "tb").exists() and not (tmp_path / "runs" / "synthetic").exists()


def test_engine_caffe_refuses_tensorboard(tmp_path, capsys):
    train = load_script("training/train.py")
    argv = ["--engine", "caffe", "--tensorboard", str(tmp_path / "tb"), "--runs", str(tmp_path / "runs")]
    assert train.main(train.build_parser().parse_args(argv), argv) == 2
    assert "--tensorboard: torch engine only" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    from sec import synthetic
    folder = tmp_path_factory.mktemp("tb_synthetic")
    synthetic.generate(folder, 6, 4, seed=0, image_size=TINY_IMAGE, cue_size=TINY_CUES)
    return folder


def tiny_config(tiny_set, tmp_path, **fields):
    from sec.train import RunConfig
    deploy = (MODELS / "synthetic" / "deploy.prototxt").read_text().replace("dim: 161", f"dim: {TINY_NET}")
    (tmp_path / "deploy.prototxt").write_text(deploy)
    net = (MODELS / "synthetic" / "train.prototxt").read_text()
    (tmp_path / "train.prototxt").write_text(net.replace("new_height: 161", f"new_height: {TINY_NET}")
                                             .replace("new_width: 161", f"new_width: {TINY_NET}")
                                             .replace('"cue_size": 21', f'"cue_size": {TINY_CUES}'))
    cfg = RunConfig(name="t", solver=MODELS / "synthetic" / "solver.prototxt", net=tmp_path / "train.prototxt",
                    deploy=tmp_path / "deploy.prototxt", runs_root=tmp_path / "runs", classes="synthetic",
                    num_classes=7, dataset=tiny_set, source=tiny_set / "train.txt",
                    root_folder=str(tiny_set / "images") + "/", cues=tiny_set / "cues.pickle", batch=2, iters=3,
                    tensorboard=tmp_path / "tb", tensorboard_panels=2)
    for key, value in fields.items():
        setattr(cfg, key, value)
    return cfg


@pytest.mark.slow
def test_training_logs_every_loss_lr_time_panels_and_the_evaluation(tiny_set, tmp_path):
    from sec import train as sec_train
    cfg = tiny_config(tiny_set, tmp_path)
    weights = sec_train.train(cfg)
    sec_train.finish(cfg, weights)
    reader = events(tmp_path / "tb" / "t")
    with open(cfg.run_dir / "losses.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = {"loss/loss-Seed": "loss-Seed", "loss/loss-Expand": "loss-Expand",
               "loss/loss-Constrain": "loss-Constrain", "loss/total": "loss", "loss/smoothed": "smoothed_loss",
               "lr": "lr", "time/forward_s": "forward_s", "time/backward_s": "backward_s"}
    for tag, column in columns.items():
        logged = scalar_steps(reader, tag)
        assert sorted(logged) == [0, 1, 2], tag
        for row in rows:
            assert logged[int(row["iter"])] == pytest.approx(float(row[column]), rel=1e-6), tag
    assert all(value > 0 for value in scalar_steps(reader, "time/iteration_s").values())
    panels = reader.Images("panels")
    assert [p.step for p in panels] == [0, 2] and (panels[0].width, panels[0].height) == (4 * TINY_NET, 2 * TINY_NET)
    miou = json.loads((cfg.run_dir / "eval.json").read_text())["miou"]
    assert scalar_steps(reader, "eval/mIoU") == {2: pytest.approx(miou)}


@pytest.mark.slow
def test_localization_training_logs_its_losses(tmp_path, tiny_set):
    train_localization = load_script("training/train_localization.py")
    argv = ["--net", "fg", "--list", str(tiny_set / "train.txt"), "--root", str(tiny_set / "images"),
            "--labels", str(tiny_set / "train_labels.json"), "--run-dir", str(tmp_path / "run"),
            "--out", str(tmp_path / "fg.caffemodel"), "--iters", "2", "--device", "cpu",
            "--tensorboard", str(tmp_path / "tb")]
    assert train_localization.main(train_localization.build_parser().parse_args(argv)) == 0
    reader = events(tmp_path / "tb" / "localization-synthetic-fg")
    assert sorted(scalar_steps(reader, "loss/total")) == [0, 1]
    assert "lr" in reader.Tags()["scalars"] and not reader.Tags()["images"]   # no SEC blobs: no panels


def test_panels_flag_needs_tensorboard(tmp_path, capsys):
    train = load_script("training/train.py")
    argv = ["--tensorboard-panels", "5", "--runs", str(tmp_path / "runs")]
    assert train.main(train.build_parser().parse_args(argv), argv) == 2
    assert "--tensorboard-panels: only with --tensorboard DIR" in capsys.readouterr().err
