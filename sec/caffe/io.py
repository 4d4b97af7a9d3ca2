"""pycaffe's `caffe.io`: BlobProto / Datum <-> numpy, image loading and resizing, `Transformer`.

Conventions (as pycaffe's):
* `load_image` gives H x W x 3 RGB (or H x W x 1 grey) float32 in [0, 1].
* `resize_image` takes and gives H x W x K arrays (float32 out); 1- and 3-channel images are
  resized as scikit-image's `resize(order, mode='constant')` does (what pycaffe calls): Gaussian
  anti-aliasing when shrinking, then `scipy.ndimage.zoom(grid_mode=True)`, values outside the image
  counted as the image minimum, clipped to the input range. Other channel counts: plain
  `scipy.ndimage.zoom`, as pycaffe.
* `Transformer.preprocess(name, H x W x K image)` gives the K x H x W float32 the net's input wants.
* The converters: BlobProto data as float64 arrays; Datum `data` as uint8 bytes, else `float_data`.
"""
import numpy as np
from scipy import ndimage

from sec.proto import caffe_pb2

GREY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])
"""scikit-image's rgb2gray luminance weights (R, G, B), which pycaffe's load_image(color=False) uses."""
GAUSSIAN_TRUNCATE = 4.0     # scipy.ndimage.gaussian_filter's default, as scikit-image's resize uses it
RESIZE_MODE = "grid-constant"   # scikit-image's mode='constant' in scipy.ndimage terms
SKIMAGE_CHANNELS = (1, 3)   # pycaffe resizes these through scikit-image, others through ndimage.zoom
OVERSAMPLE_CROPS = 10       # four corners and the centre, each also mirrored


# ---- BlobProto / Datum <-> numpy ------------------------------------------------------------

def blobproto_to_array(blob, return_diff=False):
    """The data (or diff) of a BlobProto as a float64 array of its shape: the legacy 4-D
    num/channels/height/width when any of them is set, else `shape.dim` (no shape: a 0-d array,
    or ValueError when there is more than one value)."""
    data = np.array(blob.diff if return_diff else blob.data, dtype=np.float64)   # Python floats, as pycaffe's
    if any(blob.HasField(axis) for axis in ("num", "channels", "height", "width")):
        return data.reshape(blob.num, blob.channels, blob.height, blob.width)
    return data.reshape(tuple(blob.shape.dim))


def array_to_blobproto(arr, diff=None):
    """A BlobProto of `arr` (N-D shape, values as float); `diff` (same shape, not checked) too."""
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(arr.shape)
    blob.data.extend(arr.astype(float).flat)
    if diff is not None:
        blob.diff.extend(diff.astype(float).flat)
    return blob


def arraylist_to_blobprotovector_str(arraylist):
    """A serialized BlobProtoVector of the arrays."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend(array_to_blobproto(arr) for arr in arraylist)
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(serialized):
    """The arrays of a serialized BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(serialized)
    return [blobproto_to_array(blob) for blob in vec.blobs]


def array_to_datum(arr, label=None):
    """A Datum of a C x H x W array: uint8 arrays as bytes in `data`, others as `float_data`; the
    label only when given (an unset label is not serialized)."""
    if arr.ndim != 3:
        raise ValueError("Incorrect array shape.")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = arr.shape
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(float).flat)
    if label is not None:
        datum.label = label
    return datum


def datum_to_array(datum):
    """The C x H x W array of a Datum: uint8 from `data` when it is set, else float64 from
    `float_data` (the label is `datum.label`)."""
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape).copy()
    return np.array(datum.float_data).astype(float).reshape(shape)


# ---- images ------------------------------------------------------------------------------------

def _as_float(array):
    """scikit-image's img_as_float: unsigned integers / their maximum, signed integers / their
    maximum (negative values reach -1), booleans 0/1, floats unchanged."""
    if array.dtype == bool:
        return array.astype(np.float64)
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float64) / np.iinfo(array.dtype).max
    return array


def load_image(filename, color=True):
    """An image file as float32 in [0, 1]: H x W x 3 RGB when `color` (grey images repeated, an alpha
    channel dropped), else H x W x 1 luminance (0.2125 R + 0.7154 G + 0.0721 B for colour files,
    an alpha channel first blended over white).

    pycaffe reads through scikit-image's imread(as_grey=...), an argument scikit-image >= 0.16
    removed (BVLC's load_image raises TypeError there); this reads the file with Pillow and applies
    the conversions that call made."""
    from PIL import Image
    with Image.open(filename) as image:
        image.load()
        if image.mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        elif image.mode == "1":
            image = image.convert("L")
        elif image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            image = image.convert("RGB")
        array = np.asarray(image)
    img = _as_float(array)
    if not color and img.ndim == 3 and img.shape[2] in (3, 4):
        if img.shape[2] == 4:   # scikit-image's rgba2rgb: blended over a white background
            alpha = img[:, :, 3:]
            img = np.clip((1 - alpha) + alpha * img[:, :, :3], 0, 1)
        img = img @ GREY_WEIGHTS
    img = img.astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
        if color:
            img = np.tile(img, (1, 1, 3))
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return img


def _skimage_resize(image, new_dims, order):
    """scikit-image 0.19's resize(image, new_dims, order, mode='constant') of an H x W x K image in
    [0, 1]: anti-aliasing Gaussian (sigma (factor - 1) / 2 per shrunk axis) when any axis shrinks,
    then zoom with pixel areas aligned (grid_mode), zeros outside, clipped to the input range."""
    output_shape = (int(new_dims[0]), int(new_dims[1]), image.shape[2])
    factors = np.divide(image.shape, output_shape)
    low, high = image.min(), image.max()
    if any(out < size for out, size in zip(output_shape, image.shape)):
        sigma = np.maximum(0, (factors - 1) / 2)
        image = ndimage.gaussian_filter(image, sigma, cval=0, mode=RESIZE_MODE, truncate=GAUSSIAN_TRUNCATE)
    out = ndimage.zoom(image, [1 / f for f in factors], order=order, mode=RESIZE_MODE, cval=0, grid_mode=True)
    return np.clip(out, low, high, out=out)


def resize_image(im, new_dims, interp_order=1):
    """`im` (H x W x K) resized to new_dims (height, width) with spline order `interp_order`
    (1: linear), as float32 (see the module docstring for how)."""
    if im.shape[-1] in SKIMAGE_CHANNELS:
        im_min, im_max = im.min(), im.max()
        if im_max <= im_min:   # a constant image: nothing to interpolate (and no range to scale by)
            return np.full((new_dims[0], new_dims[1], im.shape[-1]), im_min, dtype=np.float32)
        im_std = (im - im_min) / (im_max - im_min)
        resized = _skimage_resize(im_std, new_dims, interp_order) * (im_max - im_min) + im_min
    else:
        scale = tuple(np.array(new_dims, dtype=float) / np.array(im.shape[:2]))
        resized = ndimage.zoom(im, scale + (1,), order=interp_order)
    return resized.astype(np.float32)


def oversample(images, crop_dims):
    """The four corner crops and the centre crop of each H x W x K image, then the same five
    mirrored left-right: 10 N x crop_h x crop_w x K float32, image by image."""
    im_shape = np.array(images[0].shape)
    crop_dims = np.array(crop_dims)
    corners = [(i, j) for i in (0, im_shape[0] - crop_dims[0]) for j in (0, im_shape[1] - crop_dims[1])]
    boxes = np.empty((5, 4), dtype=int)
    for index, (i, j) in enumerate(corners):
        boxes[index] = (i, j, i + crop_dims[0], j + crop_dims[1])
    center = im_shape[:2] / 2.0
    boxes[4] = np.concatenate([center - crop_dims / 2.0, center + crop_dims / 2.0])  # truncated, as pycaffe
    crops = np.empty((OVERSAMPLE_CROPS * len(images), crop_dims[0], crop_dims[1], im_shape[-1]), dtype=np.float32)
    index = 0
    for im in images:
        for y0, x0, y1, x1 in boxes:
            crops[index] = im[y0:y1, x0:x1, :]
            crops[index + 5] = crops[index, :, ::-1, :]
            index += 1
        index += 5
    return crops


# ---- Transformer -------------------------------------------------------------------------------

class Transformer:
    """Prepare images for a net's inputs: `Transformer({name: input blob shape (N, K, H, W)})`, then
    set_transpose / set_channel_swap / set_raw_scale / set_mean / set_input_scale per input.

    preprocess: to float32, resize to the input's H x W, transpose, swap channels, x raw_scale,
    - mean, x input_scale. deprocess undoes it (without the resize)."""

    def __init__(self, inputs):
        self.inputs = inputs
        self.transpose = {}
        self.channel_swap = {}
        self.raw_scale = {}
        self.mean = {}
        self.input_scale = {}

    def _check_input(self, in_):
        if in_ not in self.inputs:
            raise Exception(f"{in_} is not one of the net inputs: {self.inputs}")

    def preprocess(self, in_, data):
        """H' x W' x K image -> K x H x W float32 input (a new array; `data` is not changed)."""
        self._check_input(in_)
        caffe_in = np.array(data, dtype=np.float32)
        in_dims = tuple(self.inputs[in_][2:])
        if caffe_in.shape[:2] != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        if in_ in self.transpose:
            caffe_in = caffe_in.transpose(self.transpose[in_])
        if in_ in self.channel_swap:
            caffe_in = caffe_in[self.channel_swap[in_], :, :]
        if in_ in self.raw_scale:
            caffe_in *= self.raw_scale[in_]
        if in_ in self.mean:
            caffe_in -= self.mean[in_]
        if in_ in self.input_scale:
            caffe_in *= self.input_scale[in_]
        return caffe_in

    def deprocess(self, in_, data):
        """A preprocessed input (squeezed) back to image layout and scale."""
        self._check_input(in_)
        decaf_in = data.copy().squeeze()
        if in_ in self.input_scale:
            decaf_in /= self.input_scale[in_]
        if in_ in self.mean:
            decaf_in += self.mean[in_]
        if in_ in self.raw_scale:
            decaf_in /= self.raw_scale[in_]
        if in_ in self.channel_swap:
            decaf_in = decaf_in[np.argsort(self.channel_swap[in_]), :, :]
        if in_ in self.transpose:
            decaf_in = decaf_in.transpose(np.argsort(self.transpose[in_]))
        return decaf_in

    def set_transpose(self, in_, order):
        """Axis order from the image to the input, e.g. (2, 0, 1): H x W x K -> K x H x W."""
        self._check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise Exception("Transpose order needs to have the same number of dimensions as the input.")
        self.transpose[in_] = order

    def set_channel_swap(self, in_, order):
        """Channel order after the transpose, e.g. (2, 1, 0): RGB -> BGR."""
        self._check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise Exception("Channel swap needs to have the same number of dimensions as the input channels.")
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_, scale):
        """Multiplier applied before the mean (255 for nets trained on 0..255 pixels)."""
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """The mean subtracted: K values (one per channel), or a K x H x W (or H x W) array, resized to
        the input's H x W when its size differs."""
        self._check_input(in_)
        shape = mean.shape
        if mean.ndim == 1:
            if shape[0] != self.inputs[in_][1]:
                raise ValueError("Mean channels incompatible with input.")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if len(shape) == 2:
                shape = (1,) + shape
            if len(shape) != 3:
                raise ValueError("Mean shape invalid")
            in_shape = tuple(self.inputs[in_][1:])
            if shape != in_shape:
                low, high = mean.min(), mean.max()
                normal = (mean - low) / (high - low)
                mean = resize_image(normal.transpose((1, 2, 0)), in_shape[1:]).transpose((2, 0, 1)) * (high - low) + low
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """Multiplier applied after the mean."""
        self._check_input(in_)
        self.input_scale[in_] = scale
