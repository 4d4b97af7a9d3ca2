"""Image lists, image decoding and preprocessing (the SEC pipeline's and Caffe's ImageData's).

Conventions:
- An image list is the original SEC `input_list.txt` format: one `<image path> <integer id>` per
  line, the path relative to a root folder (for VOC: `JPEGImages/`).
- `load_image` returns HxWx3 uint8 RGB, rotated as an image viewer shows it (EXIF orientation).
- `preprocess` returns float32 3xHxW in BGR channel order with the per-channel mean (104, 117, 123
  in B, G, R order) subtracted: values are roughly -123..151, not 0..255.

The engine's ImageData layer reads through sec.caffe.image_data.ImageDataSource, which uses this
module's list reader, `load_image` and Caffe's resize (`_RESIZERS["caffe"]`: OpenCV's cv::resize
INTER_LINEAR on the uint8 image); its batches equal Caffe's ImageData top blob bitwise
(tests/test_data_caffe.py). Decoding is Pillow's; on 8-bit JPEG and PNG (RGB, grey, RGBA, palette,
EXIF-rotated) it gave the same pixels as Caffe's cv::imread, which also applies the EXIF orientation.
Differences from Caffe's list reading: the path is joined with os.path.join (Caffe concatenated
strings); blank lines are skipped; a line must hold exactly a path without spaces and an integer
(Caffe splits at the last space and reads the label with atoi, 0 for anything else).
"""
from pathlib import Path

import numpy as np
import scipy.ndimage
from PIL import Image, ImageOps

MEAN_BGR = (104.0, 117.0, 123.0)

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)


class ImageListError(ValueError):
    """A bad image list line, or an image named in a list that cannot be read."""


class ImageLoadError(ValueError):
    """An image file that is missing or cannot be decoded (the message names the file)."""


def read_image_list(path):
    """Parse an image list: returns a list of (image path, integer id, line number).

    Lines must hold exactly two whitespace-separated fields `<image path> <integer id>`;
    blank lines are skipped. Errors raise ImageListError naming the list file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageListError(f"image list not found: {path}")
    entries = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise ImageListError(
                    f"{path}:{line_no}: need '<image path> <integer id>', got {len(fields)} "
                    f"field(s): {line.rstrip()!r}")
            try:
                image_id = int(fields[1])
            except ValueError:
                raise ImageListError(
                    f"{path}:{line_no}: id must be an integer, got {fields[1]!r}") from None
            entries.append((fields[0], image_id, line_no))
    if not entries:
        raise ImageListError(f"image list is empty: {path}")
    return entries


def write_image_list(path, entries):
    """Write `<image path> <id>` lines; entries are (image path, integer id) pairs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for image, image_id in entries:
        if any(ch.isspace() for ch in str(image)):
            raise ImageListError(f"image path with whitespace cannot go in a list: {image!r}")
        lines.append(f"{image} {int(image_id)}\n")
    path.write_text("".join(lines), encoding="utf-8")


# Pillow modes whose samples are wider than 8 bits; Image.convert("RGB") clips them at 255.
WIDE_INTEGER_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
WIDE_INTEGER_MAX = 65535  # wide integer images are read as 16-bit: 0..65535 -> 0..255
WIDE_INTEGER_SHIFT = 8    # 16 -> 8 bits keeps the high byte, as Caffe's cv::imread (and Pillow for RGB)
FLOAT_MODE = "F"          # float images are read as 0..1 -> 0..255


def _wide_to_uint8(image, path):
    """A greyscale 16-bit (mode I;16*, I) or float (mode F) image -> HxW uint8, by its range.

    16-bit: v >> 8, the high byte (what Caffe's cv::imread in colour mode gives, measured against
    the real Caffe, and what Pillow does for 16-bit RGB); float: v * 255 rounded, for values in
    0..1. Values outside
    that range (32-bit integers above 65535, floats outside 0..1 or NaN) raise ImageLoadError
    naming the file and the mode: there is no single right way to show them."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == FLOAT_MODE:
        top, expected = 1.0, "float values in 0..1"
    else:
        top, expected = float(WIDE_INTEGER_MAX), "integer values in 0..65535 (16-bit)"
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if not (np.isfinite(low) and np.isfinite(high) and low >= 0 and high <= top):
        raise ImageLoadError(f"cannot read image {path}: mode {image.mode} with values in "
                             f"[{low:g}, {high:g}]; need {expected}, or save it as 8-bit")
    if image.mode == FLOAT_MODE:
        return np.rint(values * 255.0).astype(np.uint8)
    return (values.astype(np.uint32) >> WIDE_INTEGER_SHIFT).astype(np.uint8)


def load_image(path):
    """Read an image as HxWx3 uint8 RGB, EXIF-rotated; greyscale, RGBA, palette -> RGB.

    Alpha is dropped (as OpenCV's imread in colour mode does). Greyscale images with more than
    8 bits are scaled by their type's range: 16-bit (Pillow modes I;16*, I) 0..65535 and float
    (mode F, e.g. float TIFF) 0..1 map to 0..255; other values are refused (_wide_to_uint8).
    16-bit RGB PNGs are reduced to 8 bits by Pillow itself. Raises ImageLoadError naming the
    file when it is missing, cannot be decoded or is refused.
    """
    path = Path(path)
    if not path.is_file():
        reason = "broken symbolic link" if path.is_symlink() else "image file not found"
        raise ImageLoadError(f"{reason}: {path}")
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in WIDE_INTEGER_MODES or image.mode == FLOAT_MODE:
                grey = _wide_to_uint8(image, path)
                return np.repeat(grey[:, :, None], 3, axis=2)
            rgb = image.convert("RGB")
            return np.asarray(rgb, dtype=np.uint8).copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        if isinstance(err, ImageLoadError):
            raise
        raise ImageLoadError(f"cannot decode image {path}: {err}") from err


def _check_image(image):
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"need HxWx3 uint8 RGB image, got {image.dtype} {image.shape}")
    return image


def _resize_caffe(image, height, width):
    # Caffe's ReadImageToCVMat: cv::resize(img, out, cv::Size(width, height)), INTER_LINEAR on
    # uint8 (half-pixel centres, no antialiasing, OpenCV's fixed-point rounding), per channel.
    import cv2  # here, not at the top: importing OpenCV takes about a second, deploy never needs it
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return resized.reshape(height, width, image.shape[2]).astype(np.float32)


def _resize_zoom(image, height, width):
    factors = (height / image.shape[0], width / image.shape[1], 1.0)
    return scipy.ndimage.zoom(image.astype(np.float32), factors, order=1)


_RESIZERS = {"zoom": _resize_zoom, "caffe": _resize_caffe}


def preprocess(image, height, width, mean=MEAN_BGR, method="zoom"):
    """HxWx3 uint8 RGB -> float32 3 x height x width, BGR, mean (B, G, R order) subtracted.

    method="zoom" is the original SEC deploy.py formula: scipy.ndimage.zoom(order=1) on the
    float image. method="caffe" is Caffe's ImageData layer, used by the training data layer:
    OpenCV's cv::resize INTER_LINEAR on the uint8 image (integer values before the mean).
    """
    image = _check_image(image)
    if height <= 0 or width <= 0:
        raise ValueError(f"need positive height and width, got {height}x{width}")
    if method not in _RESIZERS:
        raise ValueError(f"need method in {sorted(_RESIZERS)}, got {method!r}")
    resized = _RESIZERS[method](image, height, width)
    bgr = resized[:, :, ::-1] - np.asarray(mean, dtype=np.float32)
    return np.ascontiguousarray(bgr.transpose(2, 0, 1), dtype=np.float32)


class VOCLayout:
    """A PASCAL VOC 2012 folder (the one holding JPEGImages/), optionally with SBD's
    SegmentationClassAug/ and ImageSets/Segmentation/trainaug.txt (or train_aug.txt).

    Ground truth PNGs: SegmentationClass/ holds palette PNGs, SegmentationClassAug/ greyscale
    PNGs; both store class indices 0..20 and 255 for the ignored boundary band.
    """

    SPLIT_FILES = {"train": ("train.txt",), "val": ("val.txt",),
                   "trainval": ("trainval.txt",), "trainaug": ("trainaug.txt", "train_aug.txt")}

    def __init__(self, root):
        self.root = Path(root)
        self.images = self.root / "JPEGImages"
        self.segmentation_class = self.root / "SegmentationClass"
        self.segmentation_class_aug = self.root / "SegmentationClassAug"
        self.image_sets = self.root / "ImageSets" / "Segmentation"
        if not self.images.is_dir():
            raise FileNotFoundError(f"not a VOC folder: {self.images} is missing")

    def image_path(self, image_id):
        return self.images / f"{image_id}.jpg"

    def gt_path(self, image_id):
        """SegmentationClass/<id>.png when present, else SegmentationClassAug/<id>.png."""
        for folder in (self.segmentation_class, self.segmentation_class_aug):
            path = folder / f"{image_id}.png"
            if path.is_file():
                return path
        raise FileNotFoundError(f"no ground truth for {image_id!r} in {self.segmentation_class} "
                                f"or {self.segmentation_class_aug}")

    def split_path(self, split):
        if split not in self.SPLIT_FILES:
            raise ValueError(f"need split in {sorted(self.SPLIT_FILES)}, got {split!r}")
        for name in self.SPLIT_FILES[split]:
            path = self.image_sets / name
            if path.is_file():
                return path
        raise FileNotFoundError(f"split {split!r} not found in {self.image_sets} "
                                f"(available: {self.splits()})")

    def splits(self):
        """The splits whose list file exists."""
        return [split for split, names in self.SPLIT_FILES.items()
                if any((self.image_sets / name).is_file() for name in names)]

    def ids(self, split):
        """Image ids (e.g. '2007_000032') of a split, in file order."""
        path = self.split_path(split)
        ids = []
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 1:
                raise ImageListError(f"{path}:{line_no}: need one image id per line, got {line!r}")
            ids.append(fields[0])
        return ids

    def write_image_list(self, split, path, first_id=0):
        """Write the split as an original-format list (`<id>.jpg <n>`, root folder JPEGImages/).

        Returns the image ids in list order; line k has integer id first_id + k.
        """
        ids = self.ids(split)
        write_image_list(path, [(f"{image_id}.jpg", first_id + k) for k, image_id in enumerate(ids)])
        return ids
