"""The data layers and tools against a live BVLC Caffe (skipped without SEC_CAFFE_PYTHON, the Python
that imports pycaffe; its tools convert_imageset / compute_image_mean are found beside pycaffe).

Fresh random images each run (PNG and JPEG): a tiny LMDB written by Caffe's own convert_imageset
feeds the same batches in both engines (TRAIN: random crops and mirrors from the same seed); the
LMDB our convert_imageset writes holds Caffe's records and Caffe reads the same batches from it; our
compute_image_mean writes Caffe's .binaryproto byte for byte. Both tools print Caffe's usage text and
log Caffe's messages.
"""
import io
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sec import caffe
from sec.caffe import db
from sec.caffe.tools import compute_image_mean, convert_imageset

CAFFE_PYTHON = os.environ.get("SEC_CAFFE_PYTHON")
pytestmark = pytest.mark.skipif(not CAFFE_PYTHON, reason="SEC_CAFFE_PYTHON (a Python with pycaffe) not set")
SEED, PASSES = 21, 4
# glog's line with or without the year (Debian's glog 0.6 writes it; Caffe 1.0's time and ours do not).
GLOG_ANY = re.compile(r"^[IWEF]\d{4,8} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+:\d+\] (.*)$")
FLAGS_FROM = re.compile(r"^  Flags from .*:$", re.M)
# Run by Caffe's Python: argv = prototxt, seed, passes, output .npz.
CAFFE_BATCHES = """
import sys
import numpy as np
import caffe
prototxt, seed, passes, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
caffe.set_mode_cpu()
caffe.set_random_seed(seed)
net = caffe.Net(prototxt, caffe.TRAIN)
arrays = {}
for k in range(passes):
    net.forward()
    arrays["data%d" % k], arrays["label%d" % k] = net.blobs["data"].data.copy(), net.blobs["label"].data.copy()
np.savez(out, **arrays)
"""


def caffe_bin():
    run = subprocess.run([CAFFE_PYTHON, "-c", "import caffe; print(caffe.__file__)"], capture_output=True, text=True,
                         check=True, env={**os.environ, "GLOG_minloglevel": "2"})
    return Path(run.stdout.strip()).resolve().parents[2] / "bin"


def random_images(folder, count=5):
    rng = np.random.default_rng()
    lines = []
    for k in range(count):
        name = f"r{k}.{'jpg' if k % 2 else 'png'}"
        image = Image.fromarray(rng.integers(0, 256, (int(rng.integers(9, 20)), int(rng.integers(9, 20)), 3),
                                             dtype=np.uint8))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG" if name.endswith("jpg") else "PNG")
        (folder / name).write_bytes(buffer.getvalue())
        lines.append(f"{name} {int(rng.integers(0, 10))}\n")
    (folder / "list.txt").write_text("".join(lines))


def prototxt(folder, source):
    path = folder / f"{Path(source).name}.prototxt"
    path.write_text(f'layer {{ name: "d" type: "Data" top: "data" top: "label" transform_param {{ crop_size: 7 '
                    f'mirror: true mean_value: 120 scale: 0.5 }} data_param {{ source: "{source}" backend: LMDB '
                    'batch_size: 3 } }\n')
    return path


def caffe_batches(folder, source):
    out = folder / f"{Path(source).name}.npz"
    subprocess.run([CAFFE_PYTHON, "-c", CAFFE_BATCHES, str(prototxt(folder, source)), str(SEED), str(PASSES),
                    str(out)], check=True, capture_output=True, env={**os.environ, "GLOG_minloglevel": "2"})
    with np.load(out) as stored:
        return [(stored[f"data{k}"], stored[f"label{k}"]) for k in range(PASSES)]


def our_batches(folder, source):
    torch.manual_seed(SEED)
    net = caffe.Net(str(prototxt(folder, source)), caffe.TRAIN)
    return [(out["data"].numpy(), out["label"].numpy()) for out in (net.run() for _ in range(PASSES))]


def assert_same_batches(ours, theirs):
    for k, ((data, label), (caffe_data, caffe_label)) in enumerate(zip(ours, theirs)):
        np.testing.assert_array_equal(data, caffe_data, err_msg=f"pass {k}")
        np.testing.assert_array_equal(label, caffe_label, err_msg=f"pass {k}")


def records(path):
    with db.Reader(path, "lmdb") as reader:
        cursor, out = reader.cursor(), []
        while cursor.valid:
            out.append((cursor.key, cursor.value))
            cursor.next()
        return out


def test_data_sets_and_means_cross_engines(tmp_path):
    random_images(tmp_path)
    flags = ["--resize_height=12", "--resize_width=11"]
    tools = caffe_bin()
    subprocess.run([str(tools / "convert_imageset"), *flags, f"{tmp_path}/", str(tmp_path / "list.txt"),
                    str(tmp_path / "theirs")], check=True, capture_output=True)
    assert convert_imageset.main([*flags, f"{tmp_path}/", str(tmp_path / "list.txt"), str(tmp_path / "ours")]) == 0
    assert records(tmp_path / "ours") == records(tmp_path / "theirs")
    theirs = caffe_batches(tmp_path, tmp_path / "theirs")
    assert_same_batches(our_batches(tmp_path, tmp_path / "theirs"), theirs)
    assert_same_batches(caffe_batches(tmp_path, tmp_path / "ours"), theirs)
    subprocess.run([str(tools / "compute_image_mean"), str(tmp_path / "theirs"), str(tmp_path / "theirs.binaryproto")],
                   check=True, capture_output=True)
    assert compute_image_mean.main([str(tmp_path / "theirs"), str(tmp_path / "ours.binaryproto")]) == 0
    assert (tmp_path / "ours.binaryproto").read_bytes() == (tmp_path / "theirs.binaryproto").read_bytes()


def test_encoded_data_sets_decode_alike(tmp_path):
    random_images(tmp_path)
    subprocess.run([str(caffe_bin() / "convert_imageset"), "--encoded", "--resize_height=10", "--resize_width=10",
                    f"{tmp_path}/", str(tmp_path / "list.txt"), str(tmp_path / "enc")], check=True, capture_output=True)
    assert_same_batches(our_batches(tmp_path, tmp_path / "enc"), caffe_batches(tmp_path, tmp_path / "enc"))


def logged(stderr):
    return [m.group(1) for m in map(GLOG_ANY.match, stderr.splitlines()) if m]


def test_usage_texts_and_log_messages_are_caffes(tmp_path, capsys, monkeypatch):
    tools = caffe_bin()
    for tool, argv in ((convert_imageset, ["a", "b"]), (compute_image_mean, [])):
        name = tool.__name__.rsplit(".", 1)[1]
        real = subprocess.run([str(tools / name), *argv], capture_output=True, text=True)
        assert tool.main(argv) == real.returncode == 1
        assert FLAGS_FROM.sub("  Flags from", capsys.readouterr().out) == FLAGS_FROM.sub("  Flags from", real.stdout)
    random_images(tmp_path)
    runs = {"theirs": [], "ours": []}
    for engine, lines in runs.items():
        (tmp_path / engine).mkdir()
        monkeypatch.chdir(tmp_path / engine)
        steps = ((convert_imageset, ["--shuffle", "--gray", "--resize_height=8", "-resize_width", "9", "../",
                                     "../list.txt", "db"]),
                 (compute_image_mean, ["db", "mean.binaryproto"]))
        for tool, argv in steps:
            if engine == "theirs":
                name = tool.__name__.rsplit(".", 1)[1]
                lines += logged(subprocess.run([str(tools / name), *argv], check=True, capture_output=True,
                                               text=True).stderr)
            else:
                assert tool.main(argv) == 0
                lines += logged(capsys.readouterr().err)
    assert runs["ours"] == runs["theirs"] and "Shuffling data" in runs["ours"]
