"""The ImageData source against BVLC Caffe's ImageData layer, bitwise.

tests/data/caffe_imagedata.npz holds a few odd-sized uint8 RGB images ("image<i>") and the
`data` top blob that real Caffe's ImageData layer (cv::imread + cv::resize INTER_LINEAR, OpenCV
4.6) produced from them saved as PNG, for each target size ("top_<h>x<w>", N x 3 x h x w, BGR,
no mean: integers 0..255 stored as uint8). The offline test compares sec.caffe.image_data.ImageDataSource
with it on every run; the live test (SEC_CAFFE_PYTHON naming the Python that imports pycaffe)
runs Caffe again, on the stored images and on fresh random ones. Regenerate the file with

    SEC_CAFFE_PYTHON=/opt/caffe/venv/bin/python python3 tests/test_data_caffe.py
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sec.caffe.image_data import ImageDataSource
from sec.data import write_image_list

FIXTURE = Path(__file__).resolve().parent / "data" / "caffe_imagedata.npz"
CAFFE_PYTHON = os.environ.get("SEC_CAFFE_PYTHON")
IMAGE_SHAPES = ((7, 5), (13, 29), (48, 64))
TARGETS = ((11, 13), (5, 4), (41, 41), (33, 47))
NO_MEAN = (0.0, 0.0, 0.0)
# Run by Caffe's own Python: argv = list file, root folder, height, width, output .npy.
CAFFE_SCRIPT = """
import sys
import numpy as np
import caffe
source, root, height, width, out = sys.argv[1:]
count = sum(1 for line in open(source) if line.strip())
net_path = out + ".prototxt"
with open(net_path, "w") as f:
    f.write('layer { name: "d" type: "ImageData" top: "data" top: "label" image_data_param { '
            'source: "%s" root_folder: "%s/" batch_size: %d new_height: %s new_width: %s '
            'shuffle: false } }' % (source, root, count, height, width))
caffe.set_mode_cpu()
net = caffe.Net(net_path, caffe.TEST)
net.forward()
np.save(out, net.blobs["data"].data)
"""


def fixture_images(rng):
    """Noise plus a ramp, so both flat and busy regions are resized."""
    images = []
    for height, width in IMAGE_SHAPES:
        ramp = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
        noise = rng.integers(-60, 61, (height, width, 3))
        images.append(np.clip(ramp + noise, 0, 255).astype(np.uint8))
    return images


def write_list(folder, images):
    """PNG files (lossless) and an image list for them; returns the list path."""
    names = []
    for index, image in enumerate(images):
        names.append((f"image{index}.png", index))
        Image.fromarray(image).save(folder / names[-1][0])
    write_image_list(folder / "list.txt", names)
    return folder / "list.txt"


def ours(list_path, count, size):
    with ImageDataSource(list_path, list_path.parent, count, *size, mean_values=NO_MEAN,
                         shuffle=False, workers=0) as source:
        return source.next_batch()[0]


def caffe_tops(caffe_python, list_path, size):
    """Caffe's ImageData `data` top for every image of the list, N x 3 x h x w float32."""
    out = list_path.parent / f"caffe_{size[0]}x{size[1]}.npy"
    env = dict(os.environ, GLOG_minloglevel="2")
    subprocess.run([caffe_python, "-c", CAFFE_SCRIPT, str(list_path), str(list_path.parent),
                    str(size[0]), str(size[1]), str(out)], check=True, env=env,
                   capture_output=True, text=True)
    return np.load(out)


def test_image_data_source_equals_caffes_stored_tops(tmp_path):
    stored = np.load(FIXTURE)
    images = [stored[f"image{i}"] for i in range(len(IMAGE_SHAPES))]
    list_path = write_list(tmp_path, images)
    for size in TARGETS:
        expected = stored[f"top_{size[0]}x{size[1]}"].astype(np.float32)
        np.testing.assert_array_equal(ours(list_path, len(images), size), expected,
                                      err_msg=f"resize to {size}")


@pytest.mark.skipif(not CAFFE_PYTHON, reason="SEC_CAFFE_PYTHON (a Python with pycaffe) not set")
def test_image_data_source_equals_live_caffe(tmp_path):
    rng = np.random.default_rng()
    images = [rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8)
              for h, w in rng.integers(2, 90, (6, 2))]
    stored = np.load(FIXTURE)
    images += [stored[f"image{i}"] for i in range(len(IMAGE_SHAPES))]
    list_path = write_list(tmp_path, images)
    for size in TARGETS + (tuple(int(v) for v in rng.integers(1, 60, 2)),):
        expected = caffe_tops(CAFFE_PYTHON, list_path, size)
        np.testing.assert_array_equal(ours(list_path, len(images), size), expected,
                                      err_msg=f"resize to {size}")


def write_fixture(caffe_python):
    images = fixture_images(np.random.default_rng(12))
    arrays = {f"image{i}": image for i, image in enumerate(images)}
    with tempfile.TemporaryDirectory() as folder:
        list_path = write_list(Path(folder), images)
        for size in TARGETS:
            top = caffe_tops(caffe_python, list_path, size)
            assert np.array_equal(top, np.rint(top)) and top.min() >= 0 and top.max() <= 255
            arrays[f"top_{size[0]}x{size[1]}"] = top.astype(np.uint8)
    FIXTURE.parent.mkdir(exist_ok=True)
    np.savez_compressed(FIXTURE, **arrays)
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    if not CAFFE_PYTHON:
        sys.exit("set SEC_CAFFE_PYTHON to a Python that imports pycaffe")
    write_fixture(CAFFE_PYTHON)
