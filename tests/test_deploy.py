"""deploy/deploy.py and sec.deploy: sizes, palette, preprocessing, CRF, failures, resume.

Most tests run the pipeline with `ColourNet`, a stand-in net whose answer is known from the
image (class from the red channel), so a wrong size, orientation or palette shows. The end-to-end
tests run the real script on a small prototxt through the sec.caffe engine.
"""
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from conftest import load_script, shared_file
from sec import caffe
from sec import deploy as pipeline

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "deploy" / "deploy.py"

def _load_script():
    return load_script("deploy/deploy.py")


deploy_script = _load_script()

MEAN_BGR = (104.0, 117.0, 123.0)
# The standard PASCAL VOC colour map, first 8 classes, written out by hand.
VOC_FIRST_COLOURS = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0),
                     (0, 0, 128), (128, 0, 128), (0, 128, 128), (128, 128, 128)]
DARK, BRIGHT = 30, 220   # red values that ColourNet maps to class 0 and class 2


class ColourNet:
    """Stand-in for sec.caffe.Net (same .inputs/.outputs/.blobs/.run surface): 3 classes from the
    red channel, 0 for dark, 1 for mid grey, 2 for bright, on a 4x coarser grid than the input."""
    inputs = ["data"]
    outputs = ["score"]
    layers = [SimpleNamespace(type="Input"), SimpleNamespace(type="Convolution")]
    top_names = {"input": ["data"], "score": ["score"]}
    centres = torch.tensor([0.0, 127.5, 255.0]).view(1, 3, 1, 1)

    def __init__(self, size=(32, 32)):
        self.blobs = {"data": SimpleNamespace(data=np.zeros((1, 3) + size, np.float32)),
                      "score": SimpleNamespace(data=np.zeros((1, 3, size[0] // 4, size[1] // 4)))}
        self.batches = []

    def run(self, feed):
        x = feed["data"]
        self.batches.append(x.shape[0])
        red = x[:, 2:3] + MEAN_BGR[2]
        return {"score": -((F.avg_pool2d(red, 4) - self.centres) / 30.0) ** 2}


def write_image(path, array, **save_args):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path, **save_args)
    return path


def halves(height, width, left=DARK, right=BRIGHT):
    """RGB image whose left half has red `left`, right half red `right`."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2, 0] = left
    image[:, width // 2:, 0] = right
    return image


def run_pipeline(images, out, net=None, **kw):
    segmenter = pipeline.Segmenter(net or ColourNet(), crf=kw.pop("crf", False))
    return pipeline.deploy(sorted(images), out, segmenter, progress=False, **kw)


# --- preprocessing and upsampling: the original formulas -------------------------------------

def test_preprocess_matches_original_formula_by_hand(tmp_path):
    # 2x2 image -> 3x3: scipy zoom order=1 puts the corners on the corners and averages between.
    red = np.array([[0, 10], [20, 30]])
    image = np.stack([red, red + 40, red + 80], axis=2)  # R, G, B
    path = write_image(tmp_path / "tiny.png", image)
    red_3x3 = np.array([[0, 5, 10], [10, 15, 20], [20, 25, 30]], np.float32)
    expected = np.stack([red_3x3 + 80 - 104,    # B - 104
                         red_3x3 + 40 - 117,    # G - 117
                         red_3x3 - 123])        # R - 123
    decoded = pipeline.decode(path, (3, 3))
    np.testing.assert_allclose(decoded.inputs, expected, atol=1e-4)
    np.testing.assert_array_equal(decoded.image, image)


def test_upsample_equals_scipy_zoom_order1():
    rng = np.random.default_rng(0)
    probs = rng.random((4, 5, 6)).astype(np.float32)
    size = (13, 17)
    zoomed = scipy.ndimage.zoom(probs, (1, size[0] / 5, size[1] / 6), order=1)
    ours = pipeline.upsample(torch.from_numpy(probs), size).numpy()
    assert ours.shape == zoomed.shape == (4,) + size
    np.testing.assert_allclose(ours, zoomed, atol=1e-5)


# --- outputs: palette, sizes, orientation -----------------------------------------------------

def test_masks_have_image_size_palette_and_content(tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    sizes = {"wide": (37, 53), "tall": (64, 23), "square": (32, 32)}
    for name, (h, w) in sizes.items():
        write_image(src / f"{name}.jpg", halves(h, w), quality=98)
    report = run_pipeline(pipeline.list_images(src), tmp_path / "out", batch=2)
    assert len(report.written) == 3 and not report.failed
    for name, (h, w) in sizes.items():
        with Image.open(tmp_path / "out" / f"{name}.png") as png:
            assert png.mode == "P" and png.size == (w, h)
            colours = png.getpalette()[: 3 * len(VOC_FIRST_COLOURS)]
            mask = np.asarray(png)
        assert [tuple(colours[i:i + 3]) for i in range(0, len(colours), 3)] == VOC_FIRST_COLOURS
        # dark half -> class 0, bright half -> class 2 (away from the blurred middle)
        assert (mask[:, : w // 2 - 6] == 0).all() and (mask[:, w // 2 + 6:] == 2).all()


def test_greyscale_and_exif_rotated_inputs_give_viewer_sized_masks(tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    write_image(src / "grey.png", np.full((30, 50), BRIGHT, np.uint8))
    # stored 40 wide x 20 high, left half dark; orientation 6 = shown rotated 90 degrees clockwise,
    # i.e. 20 wide x 40 high with the dark half on top.
    exif = Image.Exif()
    exif[0x0112] = 6
    write_image(src / "rotated.jpg", halves(20, 40), quality=98, exif=exif)
    run_pipeline(pipeline.list_images(src), tmp_path / "out")
    grey = np.asarray(Image.open(tmp_path / "out" / "grey.png"))
    assert grey.shape == (30, 50) and (grey == 2).all()
    rotated = np.asarray(Image.open(tmp_path / "out" / "rotated.png"))
    assert rotated.shape == (40, 20)
    assert (rotated[:14] == 0).all() and (rotated[-14:] == 2).all()


def test_overlay_and_probs_outputs(tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    write_image(src / "a.png", halves(24, 40))
    run_pipeline([src / "a.png"], tmp_path / "out", overlay=True, probs=True)
    mask = np.asarray(Image.open(tmp_path / "out" / "a.png"))
    blend = np.asarray(Image.open(tmp_path / "out" / "overlay" / "a.jpg"))
    assert blend.shape == (24, 40, 3)
    probs = pipeline.load_probs(tmp_path / "out" / "probs" / "a.npz")
    assert probs.shape == (3, 24, 40)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(axis=0), mask)


def test_batches_of_n_give_the_same_masks_as_one_at_a_time(tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    rng = np.random.default_rng(1)
    for k in range(5):
        write_image(src / f"{k}.png", rng.integers(0, 256, (20 + 3 * k, 30, 3)))
    net = ColourNet()
    run_pipeline(pipeline.list_images(src), tmp_path / "one", net=ColourNet(), batch=1)
    run_pipeline(pipeline.list_images(src), tmp_path / "three", net=net, batch=3)
    assert net.batches == [3, 2]
    for k in range(5):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "one" / f"{k}.png")),
                                      np.asarray(Image.open(tmp_path / "three" / f"{k}.png")))


# --- CRF --------------------------------------------------------------------------------------

def test_crf_moves_the_boundary_to_the_colour_edge():
    pytest.importorskip("krahenbuhl2013",
                        reason="the dense CRF extension (pip install ./CRF) is absent")
    height, width, edge, blurred_edge = 24, 64, 40, 30
    image = np.zeros((height, width, 3), np.uint8)
    image[:, edge:] = 255
    # unaries blurred across the edge: label 1 wins from column 30 on, 10 columns too early
    column = np.arange(width, dtype=np.float32)
    p1 = 1.0 / (1.0 + np.exp(-(column - blurred_edge + 0.5) / 4.0))
    probs = np.broadcast_to(np.stack([1 - p1, p1])[:, None, :], (2, height, width))
    probs = torch.from_numpy(np.ascontiguousarray(probs))[None]
    plain = pipeline.Segmenter(ColourNet()).masks([image], probs)[0]
    smoothed = pipeline.Segmenter(ColourNet(), crf=True).masks([image], probs)[0]
    assert (plain.argmax(axis=1) == blurred_edge).all()
    assert (smoothed.argmax(axis=1) == edge).all()
    assert (smoothed[:, :edge] == 0).all() and (smoothed[:, edge:] == 1).all()


# --- failures and resume ----------------------------------------------------------------------

def make_folder_with_bad_files(folder):
    folder.mkdir()
    for k in range(3):
        write_image(folder / f"good{k}.jpg", halves(20 + k, 30), quality=95)
    buffer = io.BytesIO()
    Image.fromarray(halves(64, 64)).save(buffer, format="JPEG", quality=95)
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (folder / "notes.jpg").write_text("this is not an image\n")
    (folder / "readme.txt").write_text("ignored: not an image extension\n")


def test_corrupt_files_are_reported_and_the_others_written(tmp_path, monkeypatch, capsys):
    make_folder_with_bad_files(tmp_path / "images")
    monkeypatch.setattr(pipeline, "load_net", lambda spec, device, **kw: ColourNet())
    weights = tmp_path / "w.caffemodel"
    weights.write_bytes(b"")
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text("")
    args = deploy_script.parse_args(["--images", str(tmp_path / "images"), "--out",
                                     str(tmp_path / "out"), "--weights", str(weights),
                                     "--prototxt", str(prototxt), "--quiet"])
    assert deploy_script.main(args) == deploy_script.EXIT_SOME_FAILED
    err = capsys.readouterr().err
    assert "truncated.jpg" in err and "notes.jpg" in err and "3 written" in err
    assert "readme" not in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == \
        ["deploy_manifest.json", "good0.png", "good1.png", "good2.png"]


def test_existing_outputs_are_kept_unless_overwrite(tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    for name in ("a", "b"):
        write_image(src / f"{name}.png", halves(16, 24))
    out = tmp_path / "out"
    first = run_pipeline(pipeline.list_images(src), out)
    assert len(first.written) == 2
    sentinel = np.full((16, 24), 7, np.uint8)   # a mask the net would never produce
    Image.fromarray(sentinel).save(out / "a.png")
    (out / "b.png").unlink()
    again = run_pipeline(pipeline.list_images(src), out)
    assert again.skipped == [src / "a.png"] and again.written == [src / "b.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a.png")), sentinel)
    replaced = run_pipeline(pipeline.list_images(src), out, overwrite=True)
    assert len(replaced.written) == 2
    assert np.asarray(Image.open(out / "a.png")).max() == 2


def test_interrupted_write_leaves_no_file_that_counts_as_done(tmp_path, monkeypatch):
    src = tmp_path / "images"
    src.mkdir()
    write_image(src / "a.png", halves(16, 24))

    def half_then_interrupt(mask, path):
        Path(path).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.visualize, "save_palette_png", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline([src / "a.png"], tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
    monkeypatch.undo()
    assert len(run_pipeline([src / "a.png"], tmp_path / "out").written) == 1


def test_same_base_name_is_refused(tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    write_image(src / "x.png", halves(8, 8))
    write_image(src / "x.jpg", halves(8, 8))
    with pytest.raises(pipeline.DeployError, match="x.jpg, x.png"):
        run_pipeline(pipeline.list_images(src), tmp_path / "out")


# --- model selection and command line ---------------------------------------------------------

def test_help_works():
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True,
                            text=True, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert result.returncode == 0, result.stderr
    for flag in ("--images", "--out", "--weights", "--prototxt", "--crf", "--overlay", "--probs",
                 "--device", "--batch", "--jobs", "--overwrite"):
        assert flag in result.stdout


def test_no_weights_and_no_latest_json_says_how_to_get_one(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    args = deploy_script.parse_args(["--images", str(tmp_path / "images"), "--out",
                                     str(tmp_path / "out"), "--latest",
                                     str(tmp_path / "runs" / "latest.json")])
    assert deploy_script.main(args) == deploy_script.EXIT_SETUP_ERROR
    err = capsys.readouterr().err
    assert "latest.json does not exist" in err and "training/train.sh" in err and "--weights" in err


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(pipeline.DeployError, match="weights file not found: .*nope.caffemodel"):
        pipeline.resolve_model(tmp_path / "nope.caffemodel", None, tmp_path / "latest.json",
                               tmp_path / "deploy.prototxt")
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "latest.json").write_text(json.dumps(
        {"weights": "runs/gone.caffemodel", "deploy_prototxt": "d.prototxt"}))
    with pytest.raises(pipeline.DeployError, match="gone.caffemodel.*named in .*latest.json"):
        pipeline.resolve_model(None, None, runs / "latest.json", None)


def test_latest_json_paths_are_relative_to_the_checkout(tmp_path):
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    (tmp_path / "runs" / "r1" / "final.caffemodel").write_bytes(b"")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "deploy.prototxt").write_text("")
    (tmp_path / "runs" / "latest.json").write_text(json.dumps(
        {"weights": "runs/r1/final.caffemodel", "deploy_prototxt": "models/deploy.prototxt",
         "classes": "synthetic", "num_classes": 7, "dataset": "generated/synthetic"}))
    spec = pipeline.resolve_model(None, None, tmp_path / "runs" / "latest.json", None)
    assert spec.weights == tmp_path / "runs" / "r1" / "final.caffemodel"
    assert spec.prototxt == tmp_path / "models" / "deploy.prototxt"
    assert (spec.classes, spec.num_classes) == ("synthetic", 7)


@pytest.mark.cuda
def test_cuda_gives_the_cpu_masks(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device (torch.cuda.is_available() is False)")
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (21 + k, 34, 3)).astype(np.uint8) for k in range(3)]
    inputs = np.stack([pipeline.data.preprocess(image, 32, 32) for image in images])
    on_cpu = pipeline.Segmenter(ColourNet())
    net = ColourNet()
    net.centres = net.centres.cuda()
    on_gpu = pipeline.Segmenter(net, device="cuda")
    for a, b in zip(on_cpu.masks(images, on_cpu.probabilities(inputs)),
                    on_gpu.masks(images, on_gpu.probabilities(inputs))):
        np.testing.assert_array_equal(a, b)


# --- with the real engine (sec.caffe) ---------------------------------------------------------

TINY_PROTOTXT = """
name: "tiny"
layer { name: "input" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
        pooling_param { pool: AVE kernel_size: 4 stride: 4 } }
layer { name: "score" type: "Convolution" bottom: "pool" top: "score"
        convolution_param { num_output: 3 kernel_size: 1 } }
"""
SOFTMAX_LAYER = 'layer { name: "prob" type: "Softmax" bottom: "score" top: "prob" }\n'


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny deploy net, saved with weights that score red: class 0 for dark (R < 123),
    class 2 for bright, like ColourNet; one prototxt ends in scores, one in a Softmax."""
    folder = tmp_path_factory.mktemp("tiny_model")
    scores, probs = folder / "scores.prototxt", folder / "probs.prototxt"
    scores.write_text(TINY_PROTOTXT)
    probs.write_text(TINY_PROTOTXT + SOFTMAX_LAYER)
    net = caffe.Net(str(scores), caffe.TEST)
    weights = np.zeros((3, 3, 1, 1), np.float32)
    weights[0, 2], weights[2, 2] = -1 / 30, 1 / 30   # channel 2 is R - 123 (BGR, mean-subtracted)
    net.params["score"][0].data[...] = weights
    net.save(str(folder / "tiny.caffemodel"))
    return SimpleNamespace(folder=folder, scores=scores, probs=probs,
                           weights=folder / "tiny.caffemodel")


def test_script_end_to_end_with_latest_json(tmp_path, tiny_model):
    make_folder_with_bad_files(tmp_path / "images")
    checkout = tmp_path / "checkout"
    (checkout / "runs").mkdir(parents=True)
    (checkout / "runs" / "latest.json").write_text(json.dumps(
        {"weights": str(tiny_model.weights), "deploy_prototxt": "probs.prototxt",
         "classes": "synthetic", "num_classes": 3, "dataset": "generated/synthetic"}))
    (checkout / "probs.prototxt").write_text(tiny_model.probs.read_text())
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--images", str(tmp_path / "images"), "--out",
         str(tmp_path / "out"), "--latest", str(checkout / "runs" / "latest.json"), "--overlay",
         "--batch", "2", "--quiet"],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert result.returncode == 1, result.stderr
    assert "truncated.jpg" in result.stderr and "notes.jpg" in result.stderr
    assert "latest training run" in result.stderr
    for k in range(3):
        mask = np.asarray(Image.open(tmp_path / "out" / f"good{k}.png"))
        assert mask.shape == (20 + k, 30)
        assert (mask[:, :9] == 0).all() and (mask[:, -9:] == 2).all()
        assert (tmp_path / "out" / "overlay" / f"good{k}.jpg").is_file()


def test_list_selects_and_orders_the_images_and_refuses_an_id_without_one(tmp_path, tiny_model):
    images = tmp_path / "images"
    images.mkdir()
    for k in range(3):
        Image.fromarray(np.full((20, 30, 3), 60 * k, np.uint8)).save(images / f"im{k}.png")
    (tmp_path / "val.txt").write_text("im2\n\nim0\n")                    # VOC ImageSets ids
    (tmp_path / "sec.txt").write_text("/JPEGImages/im1.jpg 0\n")          # SEC's list format
    listed = pipeline.listed_images(pipeline.list_images(images), tmp_path / "val.txt")
    assert [p.name for p in listed] == ["im2.png", "im0.png"]
    assert [p.name for p in pipeline.listed_images(pipeline.list_images(images), tmp_path / "sec.txt")] == ["im1.png"]
    (tmp_path / "bad.txt").write_text("im0\nim7\nim8\n")
    with pytest.raises(pipeline.DeployError, match=r"--list: 2 of the 3 ids of .*bad.txt have no image in the folder, "
                                                   r"e.g. im7, im8"):
        pipeline.listed_images(pipeline.list_images(images), tmp_path / "bad.txt")
    common = ["--images", str(images), "--weights", str(tiny_model.weights), "--prototxt", str(tiny_model.probs),
              "--quiet"]
    assert deploy_script.main(deploy_script.parse_args([*common, "--out", str(tmp_path / "out"),
                                                        "--list", str(tmp_path / "val.txt")])) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["im0.png", "im2.png"]
    status = deploy_script.main(deploy_script.parse_args([*common, "--out", str(tmp_path / "out2"),
                                                          "--list", str(tmp_path / "bad.txt")]))
    assert status == deploy_script.EXIT_SETUP_ERROR and not (tmp_path / "out2").exists()


def test_softmax_output_of_the_net_is_not_softmaxed_again(tiny_model):
    rng = np.random.default_rng(3)
    inputs = (rng.random((2, 3, 16, 16), dtype=np.float32) - 0.5) * 200
    with_scores = pipeline.Segmenter(caffe.Net(str(tiny_model.scores), str(tiny_model.weights),
                                               caffe.TEST))
    with_softmax = pipeline.Segmenter(caffe.Net(str(tiny_model.probs), str(tiny_model.weights),
                                                caffe.TEST))
    assert not with_scores.output_is_softmax and with_softmax.output_is_softmax
    np.testing.assert_allclose(with_softmax.probabilities(inputs),
                               with_scores.probabilities(inputs), atol=1e-6)


def test_synthetic_deploy_net_batch_equals_single():
    prototxt = REPO_ROOT / "models" / "synthetic" / "deploy.prototxt"
    torch.manual_seed(0)
    segmenter = pipeline.Segmenter(caffe.Net(str(prototxt), caffe.TEST))
    assert segmenter.input_size == (161, 161)
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, (50 + 9 * k, 70, 3)).astype(np.uint8) for k in range(3)]
    inputs = np.stack([pipeline.data.preprocess(image, 161, 161) for image in images])
    together = segmenter.probabilities(inputs)
    for k, image in enumerate(images):
        alone = segmenter.probabilities(inputs[k:k + 1])
        np.testing.assert_allclose(together[k:k + 1], alone, atol=1e-5)
    masks = segmenter.masks(images, together)
    assert [m.shape for m in masks] == [image.shape[:2] for image in images]


def test_crf_unary_is_the_log_of_the_floored_zoomed_probabilities():
    rng = np.random.default_rng(5)
    probs = rng.random((3, 6, 7)).astype(np.float32) ** 8   # many values under the 1e-5 floor
    zoomed = scipy.ndimage.zoom(probs, (1, 11 / 6, 15 / 7), order=1)
    expected = np.log(np.maximum(zoomed, pipeline.PROB_FLOOR)).transpose(1, 2, 0)
    unary = pipeline.crf_unary(torch.from_numpy(probs), (11, 15))
    assert unary.shape == (11, 15, 3) and unary.dtype == np.float32 and unary.flags.c_contiguous
    np.testing.assert_allclose(unary, expected, atol=1e-4)


def test_weights_that_do_not_fit_the_prototxt_are_a_clear_error(tmp_path, tiny_model):
    wider = tmp_path / "wider.prototxt"
    wider.write_text(TINY_PROTOTXT.replace("num_output: 3", "num_output: 5"))
    spec = pipeline.ModelSpec(wider, tiny_model.weights, "test")
    with pytest.raises(pipeline.DeployError, match="cannot load .*tiny.caffemodel.*score"):
        pipeline.load_net(spec)


def test_class_count_of_latest_json_is_checked(tmp_path, tiny_model, capsys):
    (tmp_path / "images").mkdir()
    write_image(tmp_path / "images" / "a.png", halves(8, 8))
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "latest.json").write_text(json.dumps(
        {"weights": str(tiny_model.weights), "deploy_prototxt": str(tiny_model.probs),
         "classes": "voc", "num_classes": 21}))
    args = deploy_script.parse_args(["--images", str(tmp_path / "images"), "--out",
                                     str(tmp_path / "out"), "--latest",
                                     str(tmp_path / "runs" / "latest.json")])
    assert deploy_script.main(args) == deploy_script.EXIT_SETUP_ERROR
    assert "says 21 classes" in capsys.readouterr().err


def test_real_photograph_gets_a_mask_of_its_size(tmp_path, tiny_model):
    photo = shared_file("example.jpg")
    with Image.open(photo) as image:
        shown = tuple(reversed(ImageOps.exif_transpose(image).size))
    net = caffe.Net(str(tiny_model.probs), str(tiny_model.weights), caffe.TEST)
    report = pipeline.deploy([photo], tmp_path, pipeline.Segmenter(net, crf=True), progress=False,
                             overlay=True)
    assert report.written == [photo]
    with Image.open(tmp_path / f"{photo.stem}.png") as mask:
        assert mask.mode == "P" and mask.size[::-1] == shown
