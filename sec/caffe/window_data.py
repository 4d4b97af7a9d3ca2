"""Caffe's WindowData layer (window_data_layer.cpp): windows of images, warped to crop_size squared.

The window file (`source`) repeats, whitespace-separated:

    # <image index 0, 1, ...>
    <image path (root_folder + path)>
    <channels> <height> <width>
    <number of windows>
    <class label> <overlap> <x1> <y1> <x2> <y2>      (one line per window; corners inclusive)

A window with overlap >= fg_threshold is foreground (its label must be > 0); one with overlap <
bg_threshold is background (label 0); others are dropped. Each batch samples, from Caffe's sampling
generator (sec.caffe.caffe_rng: raw mt19937 outputs), batch_size - int(batch_size * fg_fraction)
background windows then the foreground ones: the window is `raw % count`, then, with mirror, the
flip is `raw % 2`. The window, grown by context_pad (crop_mode "warp") or also made square
("square"), clipped to the image, is resized (cv::resize INTER_LINEAR) into its place in a zeroed
crop_size x crop_size image, flipped when mirrored; pixels become (value - mean) * scale, with
window_data_param.scale (Caffe ignores transform_param.scale here) and transform_param's mean_file
(its centre crop, shifted by the padding) or mean_value. All of that arithmetic is Caffe's, in
float32 with C's round(). Images are read with OpenCV's imread in colour (BGR), as Caffe reads them.

Output: data float32 N x 3 x crop_size x crop_size, labels float32 (N,).
"""
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

FLOAT = np.float32
COLOUR_CHANNELS = 3
CROP_MODES = ("warp", "square")


class WindowFileError(ValueError):
    """A window file that does not follow Caffe's format (names the file and line)."""


class Window(NamedTuple):
    image: int
    label: int
    overlap: float
    x1: int
    y1: int
    x2: int
    y2: int


def _tokens(path):
    """(token, line number) of every whitespace-separated token of the file."""
    for line_no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        for token in line.split():
            yield token, line_no


def read_window_file(path, root_folder, fg_threshold, bg_threshold):
    """([(image path, (channels, height, width))], foreground windows, background windows)."""
    if not Path(path).is_file():
        raise WindowFileError(f"window file not found: {path}")
    tokens = _tokens(path)
    last_line = [0]

    def take(kind, what):
        try:
            token, last_line[0] = next(tokens)
        except StopIteration:
            raise WindowFileError(f"{path}: ends inside the entry of image {len(images)} (expected {what})") from None
        try:
            return kind(token)
        except ValueError:
            raise WindowFileError(f"{path}:{last_line[0]}: expected {what}, got {token!r}") from None

    images, foreground, background = [], [], []
    for hashtag, line_no in tokens:
        if hashtag != "#":
            raise WindowFileError(f"{path}:{line_no}: expected '#' starting an image entry, got {hashtag!r}")
        index = take(int, "the image index")
        if index != len(images):
            raise WindowFileError(f"{path}:{last_line[0]}: image index {index}, expected {len(images)} (Caffe "
                                  "looks windows up by this index, so images must be numbered 0, 1, ... in order)")
        image_path = root_folder + take(str, "the image path")
        size = tuple(take(int, f"the image's {d}") for d in ("channels", "height", "width"))
        if size[0] != COLOUR_CHANNELS:
            raise WindowFileError(f"{path}:{last_line[0]}: image {index} has {size[0]} channels; WindowData "
                                  "reads colour images (3 channels)")
        images.append((image_path, size))
        for _ in range(take(int, "the number of windows")):
            label = take(int, "a window's class label")
            overlap = take(float, "a window's overlap")
            x1, y1, x2, y2 = (take(int, f"a window's {c}") for c in ("x1", "y1", "x2", "y2"))
            window = Window(index, label, overlap, x1, y1, x2, y2)
            if FLOAT(overlap) >= FLOAT(fg_threshold):
                if label <= 0:
                    raise WindowFileError(f"{path}:{last_line[0]}: foreground window (overlap {overlap}) "
                                          f"with label {label}; labels of objects must be > 0")
                foreground.append(window)
            elif FLOAT(overlap) < FLOAT(bg_threshold):
                background.append(window._replace(label=0, overlap=0.0))
    if not images:
        raise WindowFileError(f"{path}: window file is empty")
    return images, foreground, background


def c_round(value):
    """C's round(): halves away from zero."""
    value = float(value)
    return math.floor(value + 0.5) if value >= 0 else -math.floor(-value + 0.5)


class WindowSource:
    """The batches of one WindowData layer (producer for sec.caffe.prefetch.Prefetcher)."""

    def __init__(self, param, crop_size, mirror, mean_image, mean_values, rng):
        p = param
        self.images, self.foreground, self.background = read_window_file(
            p.source, p.root_folder, p.fg_threshold, p.bg_threshold)
        if not self.foreground or not self.background:
            raise WindowFileError(f"{p.source}: {len(self.foreground)} foreground and {len(self.background)} "
                                  "background windows; WindowData needs both (Caffe checks it per batch)")
        self.batch_size, self.crop, self.mirror = int(p.batch_size), int(crop_size), bool(mirror)
        self.context_pad, self.square = int(p.context_pad), p.crop_mode == "square"
        self.scale = FLOAT(p.scale)
        self.num_fg = int(FLOAT(self.batch_size) * FLOAT(p.fg_fraction))
        self.mean_image, self.mean_values, self.rng = mean_image, mean_values, rng
        self.cache = None
        if p.cache_images:
            self.cache = [Path(path).read_bytes() if Path(path).is_file() else None for path, _ in self.images]

    def _read(self, window):
        import cv2  # here: importing OpenCV takes about a second
        path = self.images[window.image][0]
        if self.cache is not None and self.cache[window.image] is not None:
            image = cv2.imdecode(np.frombuffer(self.cache[window.image], np.uint8), cv2.IMREAD_COLOR)
        else:
            image = cv2.imread(path, cv2.IMREAD_COLOR) if Path(path).is_file() else None
        if image is None:
            raise WindowFileError(f"could not open or decode image {path} (window file entry {window.image})")
        return image

    def _geometry(self, window, mirror, rows, cols):
        """Caffe's window arithmetic: (x1, y1, x2, y2) clipped, the warped size (h, w), and where it goes (pad_h, pad_w)."""
        x1, y1, x2, y2 = window.x1, window.y1, window.x2, window.y2
        out_h = out_w = self.crop
        pad_h = pad_w = 0
        if self.context_pad > 0 or self.square:
            context_scale = FLOAT(self.crop) / FLOAT(self.crop - 2 * self.context_pad)
            half_h, half_w = FLOAT((y2 - y1 + 1) / 2.0), FLOAT((x2 - x1 + 1) / 2.0)
            centre_x, centre_y = FLOAT(x1) + half_w, FLOAT(y1) + half_h
            if self.square:
                half_h = half_w = max(half_h, half_w)
            x1, x2 = c_round(centre_x - half_w * context_scale), c_round(centre_x + half_w * context_scale)
            y1, y2 = c_round(centre_y - half_h * context_scale), c_round(centre_y + half_h * context_scale)
            unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
            pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
            pad_x2, pad_y2 = max(0, x2 - cols + 1), max(0, y2 - rows + 1)
            x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
            scale_x, scale_y = FLOAT(self.crop) / FLOAT(unclipped_w), FLOAT(self.crop) / FLOAT(unclipped_h)
            out_w, out_h = c_round(FLOAT(x2 - x1 + 1) * scale_x), c_round(FLOAT(y2 - y1 + 1) * scale_y)
            pad_x1, pad_x2 = c_round(FLOAT(pad_x1) * scale_x), c_round(FLOAT(pad_x2) * scale_x)
            pad_h = c_round(FLOAT(pad_y1) * scale_y)
            pad_w = pad_x2 if mirror else pad_x1
            out_h, out_w = min(out_h, self.crop - pad_h), min(out_w, self.crop - pad_w)
        if not (0 <= x1 <= x2 < cols and 0 <= y1 <= y2 < rows) or out_h <= 0 or out_w <= 0:
            raise WindowFileError(f"window {tuple(window[3:])} of image {self.images[window.image][0]} "
                                  f"({rows}x{cols}) leaves no pixels to warp")
        return (x1, y1, x2, y2), (out_h, out_w), (pad_h, pad_w)

    def _warp(self, window, mirror, out):
        """Write the window, warped and normalised, into `out` (3 x crop x crop, zeros)."""
        import cv2
        image = self._read(window)
        (x1, y1, x2, y2), (out_h, out_w), (pad_h, pad_w) = self._geometry(window, mirror, *image.shape[:2])
        warped = cv2.resize(image[y1:y2 + 1, x1:x2 + 1], (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        if mirror:
            warped = warped[:, ::-1]
        pixels = warped.transpose(2, 0, 1).astype(FLOAT)
        if self.mean_image is not None:
            off = (self.mean_image.shape[2] - self.crop) // 2
            rows, cols = slice(off + pad_h, off + pad_h + out_h), slice(off + pad_w, off + pad_w + out_w)
            pixels -= self.mean_image[:, rows, cols]
        elif len(self.mean_values):
            pixels -= np.broadcast_to(self.mean_values, (COLOUR_CHANNELS,))[:, None, None]
        out[:, pad_h:pad_h + out_h, pad_w:pad_w + out_w] = pixels * self.scale

    def next_batch(self):
        data = np.zeros((self.batch_size, COLOUR_CHANNELS, self.crop, self.crop), FLOAT)
        labels = np.empty(self.batch_size, FLOAT)
        item = 0
        for windows, count in ((self.background, self.batch_size - self.num_fg), (self.foreground, self.num_fg)):
            for _ in range(count):
                window = windows[self.rng.raw() % len(windows)]
                mirror = bool(self.mirror and self.rng.raw() % 2)
                self._warp(window, mirror, data[item])
                labels[item] = window.label
                item += 1
        return data, labels

    def state_dict(self):
        return {"rng": self.rng.state_dict()}

    def load_state_dict(self, state):
        self.rng.load_state_dict(state["rng"])
