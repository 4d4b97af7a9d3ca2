"""Caffe's DataTransformer (data_transformer.cpp): crop, mirror, mean subtraction, scale.

Images are C x H x W arrays (uint8 pixel values 0..255 or float32 Datum values; colour images in
OpenCV's BGR order). A transformed image is float32 C x h x w with, per pixel,
`(value - mean) * scale`, where the mean is the `mean_file` image at the same source position or
the channel's `mean_value` (none: 0); h x w is `crop_size` squared when set, else H x W.

Random choices follow Caffe in order and kind: first `mirror && Rand(2)`, then in TRAIN with
`crop_size` the offsets `Rand(H - crop + 1)`, `Rand(W - crop + 1)` (`Rand(n)` = raw mt19937 output
% n, see sec.caffe.caffe_rng); in TEST the crop is centred ((H - crop) / 2, rounded down).
"""
from typing import NamedTuple

import numpy as np

from sec.caffe import formats
from sec.caffe.caffe_rng import CaffeRNG
from sec.caffe.layers.base import TRAIN
from sec.proto import caffe_pb2

LEGACY_DIMS = 4  # Caffe's Blob::LegacyShape: num, channels, height, width


class Draw(NamedTuple):
    """The random choices for one image: horizontal flip and the crop's top-left corner."""
    mirror: bool
    h_off: int
    w_off: int


def read_mean_file(path, field="transform_param.mean_file"):
    """A .binaryproto mean (BlobProto, as compute_image_mean writes) -> float32 C x H x W.

    As Caffe's Blob::FromProto + LegacyShape: the legacy num/channels/height/width when set, else
    `shape`, read as 4-D (missing trailing axes are 1); the first C*H*W values are the mean image."""
    try:
        blob = formats._read_binary(path, caffe_pb2.BlobProto(), "mean file")
        values = formats.blob_to_array(blob)
    except (FileNotFoundError, formats.CaffeFormatError) as error:
        raise ValueError(f"{field}: {error}") from None
    if values.ndim > LEGACY_DIMS:
        raise ValueError(f"{field}: {path} holds a {values.ndim}-axis blob {values.shape}; a mean is 4-D at most")
    legacy = tuple(values.shape) + (1,) * (LEGACY_DIMS - values.ndim)
    channels, height, width = legacy[1:]
    return values.reshape(-1)[:channels * height * width].reshape(channels, height, width)


class DataTransformer:
    """One TransformationParameter in one phase. `init_rand` gives it its generator, as Caffe's
    InitRand. Check a source image size with `output_shape`, draw its random choices with `draw`,
    apply them with `apply` (separate, so that draws happen in data order in one thread while images
    may be decoded in others)."""

    def __init__(self, param, phase):
        if param.HasField("mean_file") and len(param.mean_value):
            raise ValueError("transform_param: mean_file and mean_value cannot both be set (Caffe refuses it)")
        if param.force_color and param.force_gray:
            raise ValueError("transform_param: force_color and force_gray cannot both be set")
        self.crop = int(param.crop_size)
        self.scale = np.float32(param.scale)
        self.mirror = bool(param.mirror)
        self.phase = phase
        self.force_color, self.force_gray = bool(param.force_color), bool(param.force_gray)
        self.mean_image = read_mean_file(param.mean_file) if param.HasField("mean_file") else None
        self.mean_values = np.asarray(param.mean_value, dtype=np.float32)
        self.rng = None

    def init_rand(self, seeds):
        """Caffe's InitRand: a new generator seeded with `seeds.draw()` (a DataLayerSeeds: Caffe's
        global generator) when needs_rand(), else none. Returns self."""
        self.rng = CaffeRNG(seeds.draw()) if self.needs_rand() else None
        return self

    def needs_rand(self):
        """Caffe's InitRand condition: mirroring, or random crops (TRAIN with crop_size)."""
        return self.mirror or (self.phase == TRAIN and self.crop > 0)

    def output_shape(self, channels, height, width):
        """(C, h, w) of the transformed image; ValueError when the image cannot be transformed."""
        if channels <= 0:
            raise ValueError(f"image has {channels} channels")
        if height < self.crop or width < self.crop:
            raise ValueError(f"image of {height} x {width} is smaller than crop_size {self.crop}")
        if self.mean_image is not None and self.mean_image.shape != (channels, height, width):
            raise ValueError(f"mean_file is {'x'.join(map(str, self.mean_image.shape))} (C x H x W), the image "
                             f"{channels}x{height}x{width}: they must be equal")
        if len(self.mean_values) not in (0, 1, channels):
            raise ValueError(f"transform_param has {len(self.mean_values)} mean_value(s); specify either 1 or "
                             f"as many as channels: {channels}")
        return (channels, self.crop, self.crop) if self.crop else (channels, height, width)

    def draw(self, height, width):
        """The random choices for an H x W image, from this transformer's generator."""
        if self.rng is None and self.needs_rand():
            raise RuntimeError("the DataTransformer draws random choices: call init_rand first")
        mirror = bool(self.mirror and self.rng.rand(2))
        h_off = w_off = 0
        if self.crop:
            if self.phase == TRAIN:
                h_off = self.rng.rand(height - self.crop + 1)
                w_off = self.rng.rand(width - self.crop + 1)
            else:
                h_off, w_off = (height - self.crop) // 2, (width - self.crop) // 2
        return Draw(mirror, h_off, w_off)

    def apply(self, image, draw):
        """float32 C x h x w: `image` (C x H x W) cropped at the draw's offsets, minus the mean,
        times scale, flipped left-right when the draw says so (float32 arithmetic, as Caffe's)."""
        channels, height, width = image.shape
        out_h, out_w = (self.crop, self.crop) if self.crop else (height, width)
        rows = slice(draw.h_off, draw.h_off + out_h)
        cols = slice(draw.w_off, draw.w_off + out_w)
        values = image[:, rows, cols].astype(np.float32)
        if self.mean_image is not None:
            values -= self.mean_image[:, rows, cols]
        elif len(self.mean_values):
            values -= np.broadcast_to(self.mean_values, (channels,))[:, None, None]
        if self.scale != 1:
            values *= self.scale
        if draw.mirror:
            values = values[:, :, ::-1]
        return np.ascontiguousarray(values)

    def transform(self, image):
        """Check, draw and apply for one C x H x W image (the calling thread draws)."""
        self.output_shape(*image.shape)
        return self.apply(image, self.draw(image.shape[1], image.shape[2]))

    def state_dict(self):
        return self.rng.state_dict() if self.rng is not None else None

    def load_state_dict(self, state):
        if (state is None) != (self.rng is None):
            raise ValueError("transformer state does not fit: one of them draws random choices, the other not")
        if state is not None:
            self.rng.load_state_dict(state)
