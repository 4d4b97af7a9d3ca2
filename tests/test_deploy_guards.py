"""deploy.py and evaluate.py refuse what would give plausible nonsense (issues 19 and 22): weights
that fill no layer even with --allow-missing-weights, an --output-blob that holds no class scores,
masks of one class set scored as another; and evaluate.py reads a prediction whose palette was
changed by an image editor by its colours."""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import load_script
from sec import caffe
from sec import deploy as pipeline
from sec.caffe import formats
from sec.visualize import palette_array, save_palette_png
from test_deploy import halves, write_image
from test_deploy_failures import run_script, stand_in  # noqa: F401  (stand_in: a fixture)

deploy_script = load_script("deploy/deploy.py")
evaluate = load_script("deploy/evaluate.py")

FEATURES_PROTOTXT = """
name: "features"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }
layer { name: "feat" type: "Convolution" bottom: "data" top: "feat"
        convolution_param { num_output: 8 kernel_size: 4 stride: 4 } }
layer { name: "score" type: "Convolution" bottom: "feat" top: "score"
        convolution_param { num_output: 3 kernel_size: 1 } }
"""


@pytest.fixture
def feature_net(tmp_path):
    prototxt = tmp_path / "features.prototxt"
    prototxt.write_text(FEATURES_PROTOTXT)
    net = caffe.Net(str(prototxt), caffe.TEST)
    net.save(str(tmp_path / "features.caffemodel"))
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "a.png", halves(16, 16))
    return prototxt, tmp_path / "features.caffemodel", images


def deploy(prototxt, weights, images, out, *flags):
    return deploy_script.main(deploy_script.parse_args(
        ["--images", str(images), "--out", str(out), "--weights", str(weights), "--prototxt", str(prototxt),
         "--quiet", *flags]))


# ----- deploy.py ----------------------------------------------------------------------------------
def test_weights_that_fill_no_layer_are_refused_even_with_allow_missing_weights(feature_net, tmp_path, capsys):
    prototxt, _, images = feature_net
    stranger = tmp_path / "stranger.caffemodel"
    formats.write_caffemodel(stranger, "x", [("conv9", "Convolution", [np.ones((2, 2), np.float32)])])
    out = tmp_path / "out"
    assert deploy(prototxt, stranger, images, out, "--allow-missing-weights") == deploy_script.EXIT_SETUP_ERROR
    err = capsys.readouterr().err
    assert "no layer of the file matches a parameter layer" in err and "conv9" in err and "feat" in err
    assert not list(out.glob("*.png"))


def test_an_output_blob_of_features_is_refused(feature_net, tmp_path, capsys):
    prototxt, weights, images = feature_net
    out = tmp_path / "out"
    assert deploy(prototxt, weights, images, out, "--output-blob", "feat") == deploy_script.EXIT_SETUP_ERROR
    err = capsys.readouterr().err
    assert "--output-blob feat: 8 channels" in err and "'score' 3 classes" in err and not list(out.glob("*.png"))
    assert deploy(prototxt, weights, images, out, "--output-blob", "score") == 0


def test_the_manifest_records_the_class_set(stand_in, tmp_path):  # noqa: F811
    assert run_script(stand_in) == 0
    options = json.loads((stand_in.out / pipeline.MANIFEST_NAME).read_text())["options"]
    assert options["num_classes"] == 3 and options["classes"] is None          # --weights: no class set name
    latest = tmp_path / "latest.json"
    latest.write_text(json.dumps({"weights": str(stand_in.weights), "deploy_prototxt": str(stand_in.prototxt),
                                  "classes": "synthetic", "num_classes": 3}))
    out = tmp_path / "from_latest"
    assert deploy_script.main(deploy_script.parse_args(
        ["--images", str(stand_in.images), "--out", str(out), "--latest", str(latest), "--quiet"])) == 0
    options = json.loads((out / pipeline.MANIFEST_NAME).read_text())["options"]
    assert options["classes"] == "synthetic" and options["num_classes"] == 3


# ----- evaluate.py: the class set -------------------------------------------------------------------
GT = np.array([[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 255]])


def masks(tmp_path, manifest_options=None):
    """gt/a.png and pred/a.png (= gt, 255 as 0), and pred's manifest with these options."""
    save_palette_png(GT, tmp_path / "gt" / "a.png")
    save_palette_png(np.where(GT == 255, 0, GT), tmp_path / "pred" / "a.png")
    if manifest_options is not None:
        (tmp_path / "pred" / pipeline.MANIFEST_NAME).write_text(json.dumps({"format": 1, "options": manifest_options}))
    return tmp_path / "pred", tmp_path / "gt"


def score(pred, gt, *flags):
    return evaluate.main(evaluate.build_parser().parse_args(["--pred", str(pred), "--gt", str(gt), *map(str, flags)]))


@pytest.mark.parametrize("options, classes", [({"classes": "synthetic", "num_classes": 7}, "voc"),
                                              ({"classes": None, "num_classes": 7}, "voc"),
                                              ({"classes": "voc", "num_classes": 21}, "synthetic"),
                                              ({"classes": None, "num_classes": 21}, "3")])
def test_masks_of_another_class_set_are_refused(tmp_path, capsys, options, classes):
    pred, gt = masks(tmp_path, dict(options, weights="/runs/x/x_iter_600.caffemodel"))
    assert score(pred, gt, "--classes", classes) == evaluate.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert pipeline.MANIFEST_NAME in err and f"--classes {classes}" in err and f"of {options['num_classes']} classes" in err
    assert "x_iter_600.caffemodel" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("options, classes", [({"classes": "voc", "num_classes": 21}, "voc"),
                                              ({"classes": None, "num_classes": 21}, "voc"),
                                              ({"classes": "synthetic", "num_classes": 7}, "7"),
                                              ({"weights": "w"}, "voc"), (None, "voc")])
def test_masks_of_the_class_set_or_without_a_record_are_scored(tmp_path, options, classes):
    pred, gt = masks(tmp_path, options)
    assert score(pred, gt, "--classes", classes) == 0


# ----- evaluate.py: palettes ------------------------------------------------------------------------
PRED = np.array([[0, 1, 1, 1, 2, 2], [0, 0, 1, 2, 2, 0]])


def resaved(mask, path, order):
    """A palette PNG showing the VOC colours of `mask`, with palette entries permuted by `order`
    (as an image editor re-saving it may): index order[c] holds class c's colour."""
    colours = palette_array()
    indices = np.asarray(order, np.uint8)[mask]
    palette = np.zeros((256, 3), np.uint8)
    palette[np.asarray(order)] = colours[:len(order)]
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette.reshape(-1).tolist())
    image.save(path)


def result(tmp_path, name):
    path = tmp_path / f"{name}.json"
    assert score(tmp_path / name, tmp_path / "gt", "--classes", "3", "--json", path) == 0
    return json.loads(path.read_text())


def test_a_prediction_with_another_palette_is_read_by_colour(tmp_path, capsys):
    save_palette_png(GT, tmp_path / "gt" / "a.png")
    save_palette_png(PRED, tmp_path / "vocpal" / "a.png")
    for name in ("edited", "rgb"):
        (tmp_path / name).mkdir()
    resaved(PRED, tmp_path / "edited" / "a.png", order=[2, 0, 1])
    Image.fromarray(palette_array()[PRED]).save(tmp_path / "rgb" / "a.png")
    expected = result(tmp_path, "vocpal")
    assert "note" not in capsys.readouterr().err
    assert 0 < expected["pixel_accuracy"] < 1
    for name in ("edited", "rgb"):
        got = result(tmp_path, name)
        assert got["pixel_accuracy"] == expected["pixel_accuracy"] and got["miou"] == expected["miou"], name
        assert "their classes were read by colour" in capsys.readouterr().err


def test_a_palette_outside_the_voc_colours_keeps_its_indices_with_a_warning(tmp_path, capsys):
    save_palette_png(GT, tmp_path / "gt" / "a.png")
    (tmp_path / "grey").mkdir()
    image = Image.fromarray(PRED.astype(np.uint8), mode="P")
    image.putpalette([v for i in range(256) for v in (i, i, i)])     # class c shown as grey level c
    image.save(tmp_path / "grey" / "a.png")
    save_palette_png(PRED, tmp_path / "vocpal" / "a.png")
    assert result(tmp_path, "grey")["miou"] == result(tmp_path, "vocpal")["miou"]
    assert "warning: 1 palette mask(s) use colours outside the VOC colour map" in capsys.readouterr().err


def test_evaluate_help_says_how_palettes_are_read(capsys):
    with pytest.raises(SystemExit):
        evaluate.build_parser().parse_args(["--help"])
    assert "by colour" in capsys.readouterr().out


def test_ctrl_c_in_evaluate_is_one_line(tmp_path, capsys, monkeypatch):
    pred, gt = masks(tmp_path)

    def interrupted(path, readings=None):
        raise KeyboardInterrupt
    monkeypatch.setattr(evaluate, "read_mask", interrupted)
    try:
        assert score(pred, gt, "--classes", "3") == evaluate.EXIT_INTERRUPTED
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped evaluate.py as a KeyboardInterrupt")
    assert capsys.readouterr().err == "evaluate.py: interrupted; nothing written\n"
