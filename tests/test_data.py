"""sec.data: preprocessing by hand, list parsing errors, shuffling, resume, EXIF, VOC layout."""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import shared_file
from sec.caffe.caffe_rng import CaffeRNG
from sec.caffe.image_data import ImageDataSource
from sec.data import (ImageListError, ImageLoadError, VOCLayout, load_image, preprocess, read_image_list,
                      write_image_list)

MEAN = (104.0, 117.0, 123.0)
EXIF_ORIENTATION_TAG = 0x0112
ROTATE_90_CW = 6  # EXIF orientation: the viewer turns the stored image 90 degrees clockwise


def two_column_image():
    """2x2 RGB image, left column and right column different in every channel."""
    left, right = (0, 100, 40), (200, 20, 240)
    return np.array([[left, right], [left, right]], dtype=np.uint8)


def expected_bgr(rows_rgb):
    """Hand layout: per-pixel RGB rows -> 3xHxW BGR minus mean."""
    rgb = np.asarray(rows_rgb, dtype=np.float32)
    bgr = rgb[:, :, ::-1] - np.array(MEAN, np.float32)
    return bgr.transpose(2, 0, 1)


def test_preprocess_caffe_upscale_matches_hand_bilinear():
    # Width 2 -> 4 with half-pixel centres: output x maps to input (x + 0.5) / 2 - 0.5
    # = -0.25, 0.25, 0.75, 1.25 -> weights (1, 0), (.75, .25), (.25, .75), (0, 1) after edge
    # clamping; values are rounded to uint8 as cv::resize does (1.25 -> 1, 63.75 -> 64).
    image = np.array([[(1, 0, 9), (2, 255, 10)]] * 2, dtype=np.uint8)
    row = [(1, 0, 9), (1, 64, 9), (2, 191, 10), (2, 255, 10)]
    out = preprocess(image, 2, 4, MEAN, method="caffe")
    assert out.dtype == np.float32 and out.shape == (3, 2, 4)
    np.testing.assert_array_equal(out, expected_bgr([row, row]))


def test_preprocess_caffe_downscale_does_not_antialias():
    # Width 8 -> 2: output x maps to input (x + 0.5) * 4 - 0.5 = 1.5 and 5.5, so each output is
    # the mean of two neighbours (cv::resize INTER_LINEAR, as Caffe); an antialiasing filter
    # (Pillow's bilinear) would average over the whole 4-pixel footprint instead.
    red = [0, 10, 20, 30, 40, 50, 60, 70]
    image = np.zeros((1, 8, 3), np.uint8)
    image[0, :, 0], image[0, :, 1], image[0, :, 2] = red, [1, 2] * 4, 255
    out = preprocess(image, 1, 2, MEAN, method="caffe")
    np.testing.assert_array_equal(out, expected_bgr([[(15, 2, 255), (55, 2, 255)]]))


def test_preprocess_zoom_matches_hand_linear():
    # scipy.ndimage.zoom (order 1, corners aligned): output x maps to input x * (2 - 1) / (4 - 1).
    left, right = np.array((0, 100, 40), float), np.array((200, 20, 240), float)
    row = [left + t * (right - left) for t in (0, 1 / 3, 2 / 3, 1)]
    out = preprocess(two_column_image(), 2, 4, MEAN, method="zoom")
    np.testing.assert_allclose(out, expected_bgr([row, row]), atol=1e-3)


def test_preprocess_rejects_bad_input():
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        preprocess(np.zeros((4, 4), np.uint8), 2, 2)
    with pytest.raises(ValueError, match="method"):
        preprocess(two_column_image(), 2, 2, method="cubic")


def make_dataset(tmp_path, count=10, ids=None):
    """count uniform PNGs of different sizes; image i has red = 10 * i. Returns list path."""
    root = tmp_path / "images"
    root.mkdir()
    ids = list(range(100, 100 + count)) if ids is None else ids
    entries = []
    for i in range(count):
        image = np.zeros((5 + i, 7 + 2 * i, 3), np.uint8)
        image[:, :, 0] = 10 * i
        Image.fromarray(image).save(root / f"img{i}.png")
        entries.append((f"img{i}.png", ids[i]))
    write_image_list(tmp_path / "list.txt", entries)
    return tmp_path / "list.txt", root


def index_of(batch):
    """Recover each image's index from its uniform red channel (BGR channel 2 + mean)."""
    return [int(round((img[2].mean() + MEAN[2]) / 10)) for img in batch]


def read_batches(source, count):
    return [source.next_batch() for _ in range(count)]


def test_image_data_source_batches_without_shuffle(tmp_path):
    list_path, root = make_dataset(tmp_path)
    with ImageDataSource(list_path, root, 3, 4, 6, shuffle=False, workers=2) as source:
        batches = read_batches(source, 4)
    images, labels = batches[0]
    assert images.shape == (3, 3, 4, 6) and images.dtype == np.float32
    assert labels.dtype == np.float32
    # Uniform image: every pixel is (B, G, R) = (0, 0, 10 i) minus the mean.
    np.testing.assert_allclose(images[1], np.broadcast_to(
        (np.array([0, 0, 10], np.float32) - MEAN)[:, None, None], (3, 4, 6)))
    order = [i for images, _ in batches for i in index_of(images)]
    assert order == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]  # batches run on across the epoch end
    assert [lab for _, labels in batches for lab in labels] == [100 + i for i in order]


def test_shuffle_is_per_epoch_and_deterministic(tmp_path):
    list_path, root = make_dataset(tmp_path)

    def sequence(seed, workers):
        with ImageDataSource(list_path, root, 5, 4, 4, seed=seed, workers=workers) as source:
            return [i for images, _ in read_batches(source, 6) for i in index_of(images)]

    first = sequence(seed=3, workers=2)
    assert first == sequence(seed=3, workers=0)
    assert first != sequence(seed=4, workers=2)
    epochs = [first[k:k + 10] for k in range(0, 30, 10)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(10))
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    # Caffe's ImageData: caffe::shuffle of the list at the start, of the previous order at each wrap.
    rng, order = CaffeRNG(3), list(range(10))
    for epoch in epochs:
        rng.shuffle(order)
        assert epoch == order


@pytest.mark.parametrize("workers", [0, 2])
def test_state_dict_resume_reads_the_same_batches(tmp_path, workers):
    list_path, root = make_dataset(tmp_path)
    with ImageDataSource(list_path, root, 3, 4, 4, seed=7, workers=workers) as source:
        uninterrupted = read_batches(source, 9)
    with ImageDataSource(list_path, root, 3, 4, 4, seed=7, workers=workers) as source:
        read_batches(source, 4)
        state = json.loads(json.dumps(source.state_dict()))
    with ImageDataSource(list_path, root, 3, 4, 4, seed=999, workers=workers) as resumed:
        read_batches(resumed, 2)  # reading ahead before loading must not matter
        resumed.load_state_dict(state)
        tail = read_batches(resumed, 5)
    for (images_a, labels_a), (images_b, labels_b) in zip(uninterrupted[4:], tail):
        np.testing.assert_array_equal(labels_a, labels_b)
        np.testing.assert_array_equal(images_a, images_b)


def test_bad_list_lines_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("a.jpg 0\n\nb.jpg 1 extra\n")
    with pytest.raises(ImageListError, match=r"bad\.txt:3: need '<image path> <integer id>'"):
        read_image_list(bad)
    bad.write_text("a.jpg 0\nb.jpg one\n")
    with pytest.raises(ImageListError, match=r"bad\.txt:2: id must be an integer, got 'one'"):
        ImageDataSource(bad, tmp_path, 1, 2, 2)
    bad.write_text("\n")
    with pytest.raises(ImageListError, match="empty"):
        read_image_list(bad)


def test_missing_and_corrupt_images_name_file_and_line(tmp_path):
    list_path, root = make_dataset(tmp_path, count=2)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with open(list_path, "a") as handle:
        handle.write("missing.png 7\nbroken.jpg 8\n")
    source = ImageDataSource(list_path, root, 1, 2, 2, shuffle=False, workers=2)
    read_batches(source, 2)
    with pytest.raises(ImageListError, match=r"list\.txt:3: image file not found: .*missing\.png"):
        source.next_batch()
    with pytest.raises(ImageListError, match=r"list\.txt:4: cannot decode image .*broken\.jpg"):
        source.next_batch()
    source.close()


def test_load_image_applies_exif_rotation(tmp_path):
    stored = np.zeros((16, 32, 3), np.uint8)
    stored[:, :16] = (255, 0, 0)   # left half red
    stored[:, 16:] = (0, 0, 255)   # right half blue
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = ROTATE_90_CW
    Image.fromarray(stored).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    shown = load_image(tmp_path / "rotated.jpg")
    # Turning 90 degrees clockwise puts the left half on top.
    assert shown.shape == (32, 16, 3)
    assert np.abs(shown[2:14].astype(int) - (255, 0, 0)).max() < 40
    assert np.abs(shown[18:30].astype(int) - (0, 0, 255)).max() < 40


def test_load_image_converts_modes_to_rgb(tmp_path):
    Image.new("L", (3, 2), 77).save(tmp_path / "grey.png")
    Image.new("RGBA", (3, 2), (10, 20, 30, 0)).save(tmp_path / "alpha.png")
    palette = Image.new("P", (3, 2), 1)
    palette.putpalette([0, 0, 0, 5, 6, 7] + [0] * 762)
    palette.save(tmp_path / "palette.png")
    for name, rgb in (("grey", (77, 77, 77)), ("alpha", (10, 20, 30)), ("palette", (5, 6, 7))):
        image = load_image(tmp_path / f"{name}.png")
        assert image.dtype == np.uint8 and image.shape == (2, 3, 3)
        assert (image == rgb).all(), name
    with pytest.raises(ImageLoadError, match="nothing.png"):
        load_image(tmp_path / "nothing.png")


def make_voc(root):
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    (root / "ImageSets/Segmentation/val.txt").write_text("2007_000001\n2007_000002\n")
    (root / "ImageSets/Segmentation/train_aug.txt").write_text("2008_000003\n")
    Image.new("P", (4, 4)).save(root / "SegmentationClass/2007_000001.png")
    Image.new("L", (4, 4)).save(root / "SegmentationClassAug/2008_000003.png")


def test_voc_layout(tmp_path):
    make_voc(tmp_path)
    voc = VOCLayout(tmp_path)
    assert voc.ids("val") == ["2007_000001", "2007_000002"]
    assert voc.ids("trainaug") == ["2008_000003"]
    assert sorted(voc.splits()) == ["trainaug", "val"]
    assert voc.image_path("2007_000001") == tmp_path / "JPEGImages/2007_000001.jpg"
    assert voc.gt_path("2007_000001") == tmp_path / "SegmentationClass/2007_000001.png"
    assert voc.gt_path("2008_000003") == tmp_path / "SegmentationClassAug/2008_000003.png"
    with pytest.raises(FileNotFoundError, match="2007_000002"):
        voc.gt_path("2007_000002")
    with pytest.raises(FileNotFoundError, match="train.*available"):
        voc.ids("train")
    ids = voc.write_image_list("val", tmp_path / "val_list.txt")
    entries = read_image_list(tmp_path / "val_list.txt")
    assert [(path, i) for path, i, _ in entries] == [(f"{x}.jpg", k) for k, x in enumerate(ids)]
    with pytest.raises(FileNotFoundError, match="JPEGImages"):
        VOCLayout(tmp_path / "ImageSets")


def test_reads_the_original_training_list():
    entries = read_image_list(shared_file("input_list.txt"))
    assert len(entries) == 10582
    assert [i for _, i, _ in entries] == list(range(len(entries)))
    assert all(path.endswith(".jpg") for path, _, _ in entries)

