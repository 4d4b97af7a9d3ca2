"""deploy/deploy.py and sec.data.load_image on bad input: what the user sees, what is kept.

Image reading (16-bit and float images, broken links), flags and the output folder checked
before the model loads (exit 2), images the CRF cannot take (one failed file, the rest written),
the output folder's manifest (masks made with other options are refused, not kept), and weights
that leave a layer at its filler values or hold NaN.
"""
import json
import struct
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import load_script
from sec import caffe, data
from sec import deploy as pipeline
from test_deploy import TINY_PROTOTXT, ColourNet, halves, write_image

deploy_script = load_script("deploy/deploy.py")


# --- image reading ------------------------------------------------------------------------------

def write_png16(path, array):
    """A 16-bit greyscale PNG written by hand (Pillow's own writer keeps 16 bits too, but this
    makes the bit depth in the file certain): IHDR bit depth 16, colour type 0."""
    height, width = array.shape
    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def test_16bit_png_is_scaled_by_its_range(tmp_path):
    """65535 is white, 257 * v is v, and 16 -> 8 bits keeps the high byte as Caffe's cv::imread
    does (65280 -> 255, where rounding v * 255 / 65535 gives 254); before, Pillow's
    convert('RGB') clipped at 255 (all white)."""
    values = np.array([[0, 257, 257 * 100, 65280], [257 * 200, 65535, 128, 511]], np.uint16)
    image = data.load_image(write_png16(tmp_path / "deep.png", values))
    assert image.shape == (2, 4, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[:, :, 0], [[0, 1, 100, 255], [200, 255, 0, 1]])
    assert (image == image[:, :, :1]).all()


def test_float_tiff_is_read_as_0_to_1_and_other_ranges_are_refused(tmp_path):
    ramp = np.array([[0.0, 0.25, 0.5, 1.0]], np.float32)
    Image.fromarray(ramp).save(tmp_path / "ramp.tif")
    np.testing.assert_array_equal(data.load_image(tmp_path / "ramp.tif")[0, :, 1],
                                  [0, 64, 128, 255])
    Image.fromarray(ramp * 255).save(tmp_path / "wide.tif")
    with pytest.raises(data.ImageLoadError, match="wide.tif: mode F with values in \\[0, 255\\]"):
        data.load_image(tmp_path / "wide.tif")
    Image.fromarray(np.full((2, 2), np.nan, np.float32)).save(tmp_path / "nan.tif")
    with pytest.raises(data.ImageLoadError, match="nan.tif: mode F"):
        data.load_image(tmp_path / "nan.tif")
    Image.fromarray(np.full((2, 2), 70000, np.int32)).save(tmp_path / "int32.tif")
    with pytest.raises(data.ImageLoadError, match="int32.tif: mode I .*0..65535"):
        data.load_image(tmp_path / "int32.tif")


# --- the script, with a stand-in model ----------------------------------------------------------

@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """Files the script resolves as its model, and ColourNet loaded in their place; records
    whether the model was loaded."""
    loaded = []

    def load_net(spec, device, **kw):
        loaded.append(spec)
        return ColourNet()

    monkeypatch.setattr(pipeline, "load_net", load_net)
    weights, prototxt = tmp_path / "w.caffemodel", tmp_path / "deploy.prototxt"
    weights.write_bytes(b"weights one")
    prototxt.write_text("")
    images = tmp_path / "images"
    images.mkdir()
    for k in range(3):
        write_image(images / f"good{k}.png", halves(12, 16 + k))
    return SimpleNamespace(weights=weights, prototxt=prototxt, images=images,
                           out=tmp_path / "out", loaded=loaded)


def run_script(stand_in, *flags, weights=None):
    args = deploy_script.parse_args(
        ["--images", str(stand_in.images), "--out", str(stand_in.out), "--weights",
         str(weights or stand_in.weights), "--prototxt", str(stand_in.prototxt), "--quiet",
         *flags])
    return deploy_script.main(args)


def test_broken_symlink_is_a_failed_file(stand_in, capsys):
    (stand_in.images / "gone.jpg").symlink_to(stand_in.images / "deleted.jpg")
    assert run_script(stand_in) == deploy_script.EXIT_SOME_FAILED
    err = capsys.readouterr().err
    assert "3 written" in err and "1 failed" in err
    assert "broken symbolic link: " in err and "gone.jpg" in err


@pytest.mark.parametrize("flags, message", [
    (["--crf-threads", "-1"], "--crf-threads must be >= 0"),
    (["--batch", "0"], "--batch must be >= 1"),
    (["--jobs", "0"], "--jobs must be >= 1"),
])
def test_bad_flag_values_are_usage_errors(stand_in, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        run_script(stand_in, *flags)
    assert exit_info.value.code == deploy_script.EXIT_SETUP_ERROR
    assert message in capsys.readouterr().err
    assert not stand_in.loaded and not stand_in.out.exists()


def test_unusable_out_is_a_setup_error_before_the_model_loads(stand_in, capsys):
    stand_in.out.write_text("a file, not a folder")
    assert run_script(stand_in) == deploy_script.EXIT_SETUP_ERROR
    assert "is not a folder" in capsys.readouterr().err
    stand_in.out = stand_in.out / "masks"          # below a file: cannot be created
    assert run_script(stand_in) == deploy_script.EXIT_SETUP_ERROR
    assert "--out: cannot write into" in capsys.readouterr().err
    assert not stand_in.loaded


def test_image_too_large_for_the_crf_is_one_failed_file(stand_in, capsys):
    """Before, the CRF's "image 0: need at most 2**26 pixels" ended the whole run and dropped
    the other images of its batch; the header check now finds it before the model loads."""
    Image.new("1", (8193, 8192)).save(stand_in.images / "huge.png")   # small on disk
    assert run_script(stand_in, "--crf", "--batch", "4") == deploy_script.EXIT_SOME_FAILED
    err = capsys.readouterr().err
    assert "huge.png: 8193x8192 = 67117056 pixels, more than the CRF's limit of 67108864" in err
    assert "without --crf" in err and "3 written" in err
    assert sorted(p.name for p in stand_in.out.glob("*.png")) == \
        ["good0.png", "good1.png", "good2.png"]


def test_an_image_the_crf_refuses_fails_alone(tmp_path, monkeypatch):
    """Whatever the CRF refuses in a batch, that image fails (named) and the others are written."""
    src = tmp_path / "images"
    src.mkdir()
    for name in ("a", "b", "c"):
        write_image(src / f"{name}.png", halves(10, 12 + (name == "b")))
    segmenter = pipeline.Segmenter(ColourNet(), crf=True)
    real_batch = segmenter._crf_batch

    def picky_batch(images, unaries, **kw):
        for k, image in enumerate(images):
            if image.shape[1] == 13:
                raise ValueError(f"image {k}: not this one")
        return real_batch(images, unaries, **kw)

    monkeypatch.setattr(segmenter, "_crf_batch", picky_batch)
    report = pipeline.deploy(pipeline.list_images(src), tmp_path / "out", segmenter, batch=3,
                             progress=False)
    assert report.written == [src / "a.png", src / "c.png"]
    assert len(report.failed) == 1 and report.failed[0][0] == src / "b.png"
    assert "b.png: image 0: not this one" in report.failed[0][1]


# --- the manifest: what made the masks ----------------------------------------------------------

def manifest(stand_in):
    return json.loads((stand_in.out / pipeline.MANIFEST_NAME).read_text())


def test_changed_weights_or_crf_are_refused_not_kept(stand_in, capsys):
    """Before, a rerun with other --weights or --crf kept every old mask as 'kept'."""
    assert run_script(stand_in) == 0
    first = {p.name: p.read_bytes() for p in stand_in.out.glob("*.png")}
    assert manifest(stand_in)["options"]["crf"] is None
    assert run_script(stand_in) == 0 and "3 kept" in capsys.readouterr().err

    other = stand_in.weights.with_name("other.caffemodel")
    other.write_bytes(b"weights two")
    for flags, weights, named in (([], other, "weights: "), (["--crf"], None, "crf: None ->")):
        stand_in.loaded.clear()
        assert run_script(stand_in, *flags, weights=weights) == deploy_script.EXIT_SETUP_ERROR
        err = capsys.readouterr().err
        assert named in err and "--overwrite" in err and not stand_in.loaded
        assert {p.name: p.read_bytes() for p in stand_in.out.glob("*.png")} == first
        assert manifest(stand_in)["options"]["crf"] is None

    assert run_script(stand_in, "--crf", "--overwrite") == 0
    assert "3 written" in capsys.readouterr().err
    assert manifest(stand_in)["options"]["crf"] == {"iterations": 10, "scale_factor": 1.0}
    assert manifest(stand_in)["overwrite_in_progress"] is False
    assert run_script(stand_in, "--crf") == 0 and "3 kept" in capsys.readouterr().err
    assert run_script(stand_in, "--crf", "--overlay") == 0   # more outputs, same masks: fine


def test_outputs_without_a_manifest_are_not_taken_as_done(stand_in, capsys):
    stand_in.out.mkdir()
    write_image(stand_in.out / "good1.png", np.zeros((12, 17)))
    assert run_script(stand_in) == deploy_script.EXIT_SETUP_ERROR
    assert "no deploy_manifest.json" in capsys.readouterr().err
    assert run_script(stand_in, "--overwrite") == 0


def test_an_interrupted_overwrite_is_not_resumed_as_done(stand_in, capsys, monkeypatch):
    assert run_script(stand_in) == 0
    saved = []

    def save_then_interrupt(*args):
        if saved:
            raise KeyboardInterrupt
        saved.append(args)
        real_save(*args)

    real_save = pipeline.save_outputs
    monkeypatch.setattr(pipeline, "save_outputs", save_then_interrupt)
    assert run_script(stand_in, "--crf", "--overwrite", "--batch", "1") == deploy_script.EXIT_INTERRUPTED
    monkeypatch.setattr(pipeline, "save_outputs", real_save)
    assert manifest(stand_in)["overwrite_in_progress"] is True
    err = capsys.readouterr().err
    assert "deploy.py: interrupted; every finished output" in err and "Traceback" not in err
    assert run_script(stand_in, "--crf") == deploy_script.EXIT_SETUP_ERROR
    assert "did not finish" in capsys.readouterr().err
    assert run_script(stand_in, "--crf", "--overwrite") == 0
    assert manifest(stand_in)["overwrite_in_progress"] is False


# --- weights that leave the net partly untrained ------------------------------------------------

EXTRA_LAYER = ('layer { name: "refine" type: "Convolution" bottom: "score" top: "refined"\n'
               '        convolution_param { num_output: 3 kernel_size: 1 } }\n')


@pytest.fixture
def tiny_files(tmp_path):
    """A tiny prototxt and its weights, and a prototxt with one more parameter layer."""
    prototxt, bigger = tmp_path / "tiny.prototxt", tmp_path / "bigger.prototxt"
    prototxt.write_text(TINY_PROTOTXT)
    bigger.write_text(TINY_PROTOTXT + EXTRA_LAYER)
    net = caffe.Net(str(prototxt), caffe.TEST)
    net.params["score"][0].data[...] = 0.01
    net.save(str(tmp_path / "tiny.caffemodel"))
    net.params["score"][0].data[1, 2] = np.nan
    net.save(str(tmp_path / "nan.caffemodel"))
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "a.png", halves(16, 16))
    return SimpleNamespace(prototxt=prototxt, bigger=bigger, weights=tmp_path / "tiny.caffemodel",
                           nan=tmp_path / "nan.caffemodel", images=images, out=tmp_path / "out")


def run_tiny(files, prototxt, weights, *flags):
    return deploy_script.main(deploy_script.parse_args(
        ["--images", str(files.images), "--out", str(files.out), "--weights", str(weights),
         "--prototxt", str(prototxt), "--quiet", *flags]))


def test_a_layer_without_weights_is_an_error_unless_allowed(tiny_files, capsys):
    """Before, the extra layer kept its filler values and the masks looked plausible, exit 0."""
    assert run_tiny(tiny_files, tiny_files.bigger, tiny_files.weights) == \
        deploy_script.EXIT_SETUP_ERROR
    err = capsys.readouterr().err
    assert "'refine'" in err and "--allow-missing-weights" in err
    assert not list(tiny_files.out.glob("*.png"))
    # Nothing was written, so no manifest claims the folder for these weights either.
    assert not (tiny_files.out / pipeline.MANIFEST_NAME).exists()
    assert run_tiny(tiny_files, tiny_files.prototxt, tiny_files.weights) == 0
    (tiny_files.out / "a.png").unlink()
    (tiny_files.out / pipeline.MANIFEST_NAME).unlink()
    assert run_tiny(tiny_files, tiny_files.bigger, tiny_files.weights,
                    "--allow-missing-weights") == 0
    assert (tiny_files.out / "a.png").is_file()


def test_nan_weights_are_refused_naming_the_layer(tiny_files, capsys):
    assert run_tiny(tiny_files, tiny_files.prototxt, tiny_files.nan) == \
        deploy_script.EXIT_SETUP_ERROR
    err = capsys.readouterr().err
    assert "nan.caffemodel" in err and "score" in err
    assert not list(tiny_files.out.glob("*.png"))
