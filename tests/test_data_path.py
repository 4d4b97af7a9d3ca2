"""The data path to the GPU (issue 21): ImageData's batches made ahead in a background thread and
pinned there, uploaded on a side stream (sec.caffe.staging; CUDA tests skipped without a device),
the number of decoding threads configurable, the ids' host copy that spares the Annotation layer a
device read, NHWC data tops with --channels-last, cuDNN's benchmark mode for the fixed-shape nets."""
import numpy as np
import pytest
import torch
from PIL import Image

from sec import caffe
from sec.caffe.layers import data as data_layers
from sec.caffe.prefetch import Prefetcher
from sec.data import ImageListError
from sec.nn import speed

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
BATCH, SIDE = 2, 9


def image_data_net(folder, count=5, missing=None):
    """A net of one ImageData layer (shuffled list of `count` PNGs, resized to SIDE x SIDE)."""
    rng = np.random.default_rng(0)
    lines = []
    for k in range(count):
        name = f"im{k}.png"
        if k != missing:
            Image.fromarray(rng.integers(0, 256, (7 + k, 6, 3), dtype=np.uint8)).save(folder / name)
        lines.append(f"{name} {10 + k}")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    path = folder / "net.prototxt"
    path.write_text(f'layer {{ name: "data" type: "ImageData" top: "images" top: "ids" '
                    f'transform_param {{ mean_value: 104 mean_value: 117 mean_value: 123 }} '
                    f'image_data_param {{ source: "{folder / "list.txt"}" root_folder: "{folder}/" '
                    f'batch_size: {BATCH} shuffle: true new_height: {SIDE} new_width: {SIDE} }} }}\n')
    return path


def batches(net, count):
    out = []
    for _ in range(count):
        tops = net.run()
        out.append((tops["images"].cpu().numpy(), tops["ids"].cpu().numpy()))
    return out


def test_decoding_threads_come_from_the_environment(tmp_path, monkeypatch):
    path = image_data_net(tmp_path)
    monkeypatch.setenv(data_layers.DECODE_WORKERS_ENV, "7")
    net = caffe.Net(str(path), caffe.TRAIN)
    assert net.data_layers()[0].workers == 7
    monkeypatch.setenv(data_layers.DECODE_WORKERS_ENV, "0")
    want = batches(caffe.Net(str(path), caffe.TRAIN), 3)        # decoded in the calling thread: same batches
    monkeypatch.delenv(data_layers.DECODE_WORKERS_ENV)
    got = batches(caffe.Net(str(path), caffe.TRAIN), 3)
    for (a, b), (c, d) in zip(want, got):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    monkeypatch.setenv(data_layers.DECODE_WORKERS_ENV, "many")
    with pytest.raises(ValueError, match="SEC_DATA_WORKERS='many': need an integer >= 0"):
        caffe.Net(str(path), caffe.TRAIN)


def test_ids_keep_their_host_values_and_images_do_not():
    ids, images = np.arange(4, dtype=np.float32), np.zeros((2, 3, 200, 200), np.float32)
    ids_tensor = data_layers.to_device(ids, torch.device("cpu"))
    np.testing.assert_array_equal(data_layers.host_values(ids_tensor), ids)
    assert data_layers.host_values(data_layers.to_device(images, torch.device("cpu"))) is None
    assert data_layers.host_values(torch.arange(4.0)) is None               # not from a data layer
    key = id(ids_tensor)
    del ids_tensor
    assert key not in data_layers._host_copies                              # dropped with its tensor


def test_a_prefetcher_can_hand_on_the_producers_own_error():
    class Broken:
        def next_batch(self):
            raise ImageListError("list.txt:3: image file not found: x.png")

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass
    with pytest.raises(ImageListError, match="list.txt:3"):
        Prefetcher(Broken(), 1, "layer 'data' (ImageData)", wrap_errors=False).next_batch()


def test_channels_last_makes_the_image_top_nhwc(tmp_path):
    path = image_data_net(tmp_path)
    plain = caffe.Net(str(path), caffe.TRAIN).run()["images"]
    fast = speed.net_factory(channels_last=True)(str(path), caffe.TRAIN).run()["images"]
    assert not plain.is_contiguous(memory_format=torch.channels_last)
    assert fast.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(fast.numpy(), plain.numpy())


def test_net_factory_turns_on_cudnn_benchmark_for_the_fixed_shapes():
    saved = torch.backends.cudnn.benchmark
    try:
        speed.net_factory()
        assert torch.backends.cudnn.benchmark is True
        speed.net_factory(cudnn_benchmark=False)
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = saved


@pytest.mark.cuda
@CUDA
def test_cuda_staged_batches_equal_the_cpu_ones_and_resume_exactly(tmp_path):
    path = image_data_net(tmp_path, count=7)
    want = batches(caffe.Net(str(path), caffe.TRAIN), 9)
    caffe.set_mode_gpu()
    try:
        net = caffe.Net(str(path), caffe.TRAIN)
    finally:
        caffe.set_mode_cpu()
    assert net.device.type == "cuda"
    got = batches(net, 4)
    state = net.data_layers()[0].state_dict()
    got += batches(net, 5)
    source = net.data_layers()[0]
    assert type(source).__name__ == "Prefetcher"
    for (a, b), (c, d) in zip(want, got):
        np.testing.assert_array_equal(c, a)
        np.testing.assert_array_equal(d, b)
    source.load_state_dict(state)
    for (a, b), (c, d) in zip(want[4:], batches(net, 5)):
        np.testing.assert_array_equal(c, a)
        np.testing.assert_array_equal(d, b)
    ids = net.run()["ids"]
    assert data_layers.host_values(ids) is not None
    source.close()


@pytest.mark.cuda
@CUDA
def test_cuda_staged_source_hands_on_a_bad_image_as_the_list_error(tmp_path):
    path = image_data_net(tmp_path, count=3, missing=2)
    caffe.set_mode_gpu()
    try:
        net = caffe.Net(str(path), caffe.TRAIN)
    finally:
        caffe.set_mode_cpu()
    with pytest.raises(ImageListError, match=r"list\.txt:3: image file not found"):
        batches(net, 3)
