"""ImageData, HDF5Data, HDF5Output, MemoryData and WindowData without Caffe: shapes, resume and bad
input (one error naming the file, line or layer; never a hang). Agreement with the real Caffe is in
tests/test_caffe_data_reference.py."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from sec import caffe
from sec.caffe.layers.base import NetError
from sec.caffe.prefetch import DataError
from sec.data import ImageListError


def build(tmp_path, text, phase=caffe.TEST, seed=0, name="net"):
    path = tmp_path / f"{name}.prototxt"
    path.write_text(text)
    torch.manual_seed(seed)
    return caffe.Net(str(path), phase)


def write_images(folder, sizes, seed=0):
    """PNG images of the given (H, W) sizes, and list.txt naming them with labels 10, 11, ..."""
    rng = np.random.default_rng(seed)
    lines = []
    for index, (height, width) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"i{index}.png")
        lines.append(f"i{index}.png {10 + index}\n")
    (folder / "list.txt").write_text("".join(lines))
    return folder / "list.txt"


def image_data(folder, batch, transform="", extra=""):
    return (f'layer {{ name: "d" type: "ImageData" top: "data" top: "label" transform_param {{ {transform} }} '
            f'image_data_param {{ source: "{folder}/list.txt" root_folder: "{folder}/" batch_size: {batch} '
            f'{extra} }} }}\n')


# ---------------------------------------------------------------- ImageData

def test_image_data_without_resize_takes_the_first_images_shape(tmp_path):
    write_images(tmp_path, [(5, 7), (5, 7), (6, 4)])
    net = build(tmp_path, image_data(tmp_path, 2))
    assert net.blobs["data"].shape == (2, 3, 5, 7)
    assert net.run()["label"].tolist() == [10, 11]
    with pytest.raises(ImageListError, match=r"list\.txt:1: image is 5x7 .* the batch's first is 6x4"):
        net.run()        # the next batch: i2 (6 x 4) sets the shape, then i0 wraps around


def test_image_data_crop_admits_images_of_any_size_and_grey_has_one_channel(tmp_path):
    write_images(tmp_path, [(5, 7), (9, 6)])
    net = build(tmp_path, image_data(tmp_path, 2, "crop_size: 4", "is_color: false"))
    out = net.run()["data"]
    assert tuple(out.shape) == (2, 1, 4, 4)


def test_image_data_resumes_with_its_shuffle_and_transform_state(tmp_path):
    write_images(tmp_path, [(6, 6)] * 5)
    text = image_data(tmp_path, 2, "crop_size: 3 mirror: true", "shuffle: true")
    first = build(tmp_path, text, caffe.TRAIN, seed=3, name="a")
    expected = [first.run()["data"].clone() for _ in range(6)]
    stopped = build(tmp_path, text, caffe.TRAIN, seed=3, name="b")
    for _ in range(2):
        stopped.run()
    state = json.loads(json.dumps(stopped.data_layers()[0].state_dict()))
    resumed = build(tmp_path, text, caffe.TRAIN, seed=8, name="c")
    resumed.data_layers()[0].load_state_dict(state)
    for batch in expected[2:]:
        np.testing.assert_array_equal(resumed.run()["data"].numpy(), batch.numpy())


@pytest.mark.parametrize("extra, message", [
    ("new_height: 4", "new_height and new_width must be set at the same time"),
    ("rand_skip: 1", None),
])
def test_image_data_parameters(tmp_path, extra, message):
    write_images(tmp_path, [(5, 7)])
    if message is None:      # rand_skip draws skip % 1 = 0: fine with one image
        assert build(tmp_path, image_data(tmp_path, 1, "", extra)).run()["label"].tolist() == [10]
        return
    with pytest.raises(NetError, match=message):
        build(tmp_path, image_data(tmp_path, 1, "", extra))


def test_image_data_missing_list_fails_at_build_when_the_shape_needs_it(tmp_path):
    with pytest.raises(NetError, match="image list not found: .*list.txt"):
        build(tmp_path, image_data(tmp_path, 1))


# ---------------------------------------------------------------- HDF5Data and HDF5Output

def write_h5(path, rows, trailing=(2,), dtype=np.float64, seed=0, names=("data", "label")):
    import h5py
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as handle:
        if "data" in names:
            handle.create_dataset("data", data=rng.standard_normal((rows,) + trailing).astype(dtype))
        if "label" in names:
            handle.create_dataset("label", data=np.arange(rows, dtype=np.int64) + 100 * seed)


def hdf5_net(tmp_path, files, batch=2, extra="", name="net", seed=0):
    (tmp_path / "h5.txt").write_text("\n".join(str(tmp_path / f) for f in files) + "\n")
    return build(tmp_path, f'layer {{ name: "h" type: "HDF5Data" top: "data" top: "label" '
                           f'hdf5_data_param {{ source: "{tmp_path}/h5.txt" batch_size: {batch} {extra} }} }}\n',
                 seed=seed, name=name)


def test_hdf5_data_reads_rows_across_files_and_wraps(tmp_path):
    write_h5(tmp_path / "a.h5", 3, seed=1)
    write_h5(tmp_path / "b.h5", 2, seed=2)
    net = hdf5_net(tmp_path, ["a.h5", "b.h5"])
    assert net.blobs["data"].shape == (2, 2)
    labels = [v for _ in range(4) for v in net.run()["label"].tolist()]
    assert labels == [100, 101, 102, 200, 201, 100, 101, 102]


def test_hdf5_data_shuffle_permutes_and_resumes(tmp_path):
    write_h5(tmp_path / "a.h5", 5, seed=1)
    net = hdf5_net(tmp_path, ["a.h5"], batch=5, extra="shuffle: true", seed=4)
    assert sorted(net.run()["label"].tolist()) == [100, 101, 102, 103, 104]
    state = json.loads(json.dumps(net.data_layers()[0].state_dict()))
    expected = [net.run()["label"].tolist() for _ in range(3)]
    other = hdf5_net(tmp_path, ["a.h5"], batch=5, extra="shuffle: true", seed=4, name="other")
    other.data_layers()[0].load_state_dict(state)
    assert [other.run()["label"].tolist() for _ in range(3)] == expected


def test_hdf5_data_bad_files_name_the_file(tmp_path):
    write_h5(tmp_path / "a.h5", 2, seed=1)
    write_h5(tmp_path / "wide.h5", 2, trailing=(3,))
    write_h5(tmp_path / "nolabel.h5", 2, names=("data",))
    with pytest.raises(NetError, match="HDF5 file not found: .*missing.h5"):
        hdf5_net(tmp_path, ["missing.h5", "a.h5"])
    with pytest.raises(NetError, match="nolabel.h5: no dataset 'label'"):
        hdf5_net(tmp_path, ["nolabel.h5"])
    net = hdf5_net(tmp_path, ["a.h5", "wide.h5", "missing.h5"], name="later")
    with pytest.raises(DataError, match=r"layer 'h' \(HDF5Data\): .*wide.h5: dataset 'data' has rows of shape "
                                        r"\(3,\), the first file's are \(2,\)"):
        for _ in range(3):
            net.run()
    (tmp_path / "h5.txt").write_text("")
    with pytest.raises(NetError, match="must have at least 1 HDF5 filename"):
        build(tmp_path, 'layer { name: "h" type: "HDF5Data" top: "data" '
                        f'hdf5_data_param {{ source: "{tmp_path}/h5.txt" batch_size: 1 }} }}\n')


def test_hdf5_data_refuses_transform_param(tmp_path):
    write_h5(tmp_path / "a.h5", 2)
    with pytest.raises(NetError, match="transform_param: HDF5Data does not transform data"):
        build(tmp_path, 'layer { name: "h" type: "HDF5Data" top: "data" transform_param { scale: 2 } '
                        f'hdf5_data_param {{ source: "{tmp_path}/h5.txt" batch_size: 1 }} }}\n')


def test_hdf5_output_refuses_blobs_caffe_cannot_write(tmp_path):
    text = ('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 1 dim: 1 dim: 1 dim: 2 } } }\n'
            'layer { name: "y" type: "Input" top: "y" input_param { shape { dim: 3 } } }\n'
            f'layer {{ name: "o" type: "HDF5Output" bottom: "x" bottom: "y" hdf5_output_param {{ '
            f'file_name: "{tmp_path}/o.h5" }} }}\n')
    with pytest.raises(NetError, match="HDF5Output writes blobs of at most 4 axes"):
        build(tmp_path, text)
    with pytest.raises(NetError, match="same num, got 2 and 3"):
        build(tmp_path, text.replace("dim: 1 dim: 1 dim: 1 dim: 2", "dim: 1"))


# ---------------------------------------------------------------- MemoryData

MEMORY = ('layer {{ name: "m" type: "MemoryData" top: "data" top: "label" {transform} '
          'memory_data_param {{ batch_size: 2 channels: 3 height: 4 width: 5 }} }}\n')


def test_memory_data_checks_arrays_and_transforms_added_images(tmp_path):
    net = build(tmp_path, MEMORY.format(transform="transform_param { crop_size: 4 mean_value: 10 }"))
    layer = net._layers[0].impl
    with pytest.raises(ValueError, match="data must be N x 3 x 4 x 5"):
        layer.reset(np.zeros((2, 3, 5, 5), np.float32), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="must be float32"):
        layer.reset(np.zeros((2, 3, 4, 5)), np.zeros(2))
    with pytest.raises(ValueError, match="positive multiple of the batch size 2"):
        layer.reset(np.zeros((3, 3, 4, 5), np.float32), np.zeros(3, np.float32))
    images = [np.full((6, 5, 3), 40 + k, np.uint8) for k in range(2)]     # H x W x C
    with pytest.raises(ValueError, match="does not transform to"):      # cropped to 4 x 4, the top is 4 x 5
        layer.add_mat_vector(images, [1, 2])
    net = build(tmp_path, MEMORY.format(transform="transform_param { mean_value: 10 scale: 2 }"), name="m2")
    net._layers[0].impl.add_mat_vector([np.full((4, 5, 3), 40 + k, np.uint8) for k in range(2)], [1, 2])
    out = net.run()
    np.testing.assert_array_equal(out["data"].numpy(), np.stack([np.full((3, 4, 5), (40 + k - 10) * 2, np.float32)
                                                                 for k in range(2)]))
    assert out["label"].reshape(-1).tolist() == [1, 2] and tuple(out["label"].shape) == (2, 1, 1, 1)


# ---------------------------------------------------------------- WindowData

def window_net(tmp_path, windows_text, extra="", transform="crop_size: 4", name="net"):
    (tmp_path / "w.txt").write_text(windows_text)
    return build(tmp_path, f'layer {{ name: "w" type: "WindowData" top: "data" top: "label" transform_param {{ '
                           f'{transform} }} window_data_param {{ source: "{tmp_path}/w.txt" root_folder: "{tmp_path}/" '
                           f'batch_size: 4 {extra} }} }}\n', caffe.TRAIN, name=name)


GOOD_WINDOWS = "# 0\ni0.png\n3 8 9\n2\n1 0.9 0 0 5 5\n0 0.1 2 2 8 7\n"


@pytest.mark.parametrize("text, message", [
    ("# 1\ni0.png\n3 8 9\n0\n", r"w\.txt:1: image index 1, expected 0"),
    ("# 0\ni0.png\n3 8\n", "ends inside the entry of image 0"),
    ("# 0\ni0.png\n1 8 9\n0\n", "image 0 has 1 channels"),
    ("# 0\ni0.png\n3 8 9\n1\n0 0.9 0 0 5 5\n", r"w\.txt:5: foreground window .* with label 0"),
    ("# 0\ni0.png\n3 8 9\n1\n1 0.9 0 0 5 5\n", "1 foreground and 0 background windows"),
    ("x 0\n", r"w\.txt:1: expected '#'"),
])
def test_window_file_errors_name_the_line(tmp_path, text, message):
    write_images(tmp_path, [(8, 9)])
    with pytest.raises(NetError, match=message):
        window_net(tmp_path, text)


@pytest.mark.parametrize("extra, transform, message", [
    ('crop_mode: "sqaure"', "crop_size: 4", "crop_mode 'sqaure' unknown"),
    ("context_pad: 2", "crop_size: 4", "context_pad 2 leaves nothing of crop_size 4"),
    ("", "", "transform_param.crop_size must be > 0"),
])
def test_window_parameters_out_of_range_fail_at_build(tmp_path, extra, transform, message):
    write_images(tmp_path, [(8, 9)])
    with pytest.raises(NetError, match=message):
        window_net(tmp_path, GOOD_WINDOWS, extra, transform)


def test_window_data_missing_image_is_an_error_at_forward_and_state_resumes(tmp_path):
    write_images(tmp_path, [(8, 9)])
    net = window_net(tmp_path, GOOD_WINDOWS, transform="crop_size: 4 mirror: true")
    state = json.loads(json.dumps(net.data_layers()[0].state_dict()))
    expected = [net.run()["data"].clone() for _ in range(2)]
    other = window_net(tmp_path, GOOD_WINDOWS, transform="crop_size: 4 mirror: true", name="other")
    other.data_layers()[0].load_state_dict(state)
    for batch in expected:
        np.testing.assert_array_equal(other.run()["data"].numpy(), batch.numpy())
    (tmp_path / "i0.png").unlink()
    gone = window_net(tmp_path, GOOD_WINDOWS, name="gone")
    with pytest.raises(DataError, match=r"layer 'w' \(WindowData\): could not open or decode image .*i0.png"):
        gone.run()
