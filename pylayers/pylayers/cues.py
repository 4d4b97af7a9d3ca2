"""Reading SEC localization cues in the original pickle format.

The pickle is a dict with, for every image id ``i`` of the training list:

* ``"<i>_labels"``: int array of the foreground classes present in the image (1..C-1);
* ``"<i>_cues"``: int array of shape (3, K): class (0 = background), row, column of each
  seeded pixel on the cue grid (41 x 41 for SEC).

Files may be plain or gzip-compressed (recognised by content, not by name); pickles written
by Python 2 are read with ``encoding="latin1"``. Arrays pickled by numpy 2 name the module
``numpy._core``, which numpy 1.x (the numpy of a Caffe build) lacks: there it is read as
``numpy.core``, the same module under its numpy 1 name.
"""
import gzip
import pickle

import numpy as np

GZIP_MAGIC = b"\x1f\x8b"
NUM_CLASSES = 21
"""PASCAL VOC: background + 20 foreground classes."""
CUE_SIZE = 41
"""Side of the SEC score map (321 x 321 input, stride 8)."""


NUMPY2_CORE, NUMPY1_CORE = "numpy._core", "numpy.core"


class _CueUnpickler(pickle.Unpickler):
    """pickle.Unpickler that reads numpy 2's ``numpy._core`` references under numpy 1."""

    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except ModuleNotFoundError:
            if module != NUMPY2_CORE and not module.startswith(NUMPY2_CORE + "."):
                raise
            return super().find_class(NUMPY1_CORE + module[len(NUMPY2_CORE):], name)


def load_cues(path):
    """Load a cue pickle (plain or .gz) and return the dict."""
    with open(path, "rb") as handle:
        compressed = handle.read(len(GZIP_MAGIC)) == GZIP_MAGIC
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as handle:
            cues = _CueUnpickler(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, OSError) as err:
        raise ValueError(f"cannot read cue pickle {path}: {err}") from err
    if not isinstance(cues, dict):
        raise ValueError(f"cue pickle {path}: need a dict, got {type(cues).__name__}")
    return cues


def image_id(value, source="image ids"):
    """The integer image id held by a float blob entry; an error if it is not an integer."""
    number = float(value)
    if not np.isfinite(number) or number != round(number):
        raise ValueError(f"{source}: image id must be an integer, got {number!r}")
    return int(round(number))


def _lookup(cues, key, image, source):
    """cues[key] as an integer array (integral floats are accepted); KeyError or ValueError
    naming the image id and the file otherwise."""
    try:
        value = cues[key]
    except KeyError:
        raise KeyError(f"image id {image}: key {key!r} not found in cue file {source}") from None
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as err:
        raise ValueError(f"image id {image} in {source}: {key!r} is not an array ({err})") from None
    if array.dtype.kind in "iu":
        return array
    if array.dtype.kind == "f" and np.isfinite(array).all() and (array == np.round(array)).all():
        return array.astype(np.int64)
    if array.size == 0 and array.dtype.kind in "fO":  # [] and [[], [], []] read as float64
        return array.astype(np.int64)
    raise ValueError(f"image id {image} in {source}: {key!r} needs integer values, got "
                     f"dtype {array.dtype}")


def image_labels_and_cues(cues, image, num_classes=NUM_CLASSES, cue_size=CUE_SIZE, source="<cues>"):
    """Labels (num_classes,) and cues (num_classes, cue_size, cue_size) float32 of one image id.

    Only the listed foreground classes are 1 in the labels; the background column 0 stays 0, as
    in the original layer (SEC's losses never read it). Invalid classes or coordinates raise
    ValueError naming the image and the file.
    """
    fg = _lookup(cues, f"{image}_labels", image, source).reshape(-1)
    points = _lookup(cues, f"{image}_cues", image, source)
    if fg.size and (fg.min() < 1 or fg.max() >= num_classes):
        raise ValueError(f"image id {image} in {source}: labels {fg.tolist()} outside 1..{num_classes - 1}")
    if points.ndim != 2 or points.shape[0] != 3:
        raise ValueError(f"image id {image} in {source}: cues need shape (3, K), got {points.shape}")
    if points.size and (points[0].min() < 0 or points[0].max() >= num_classes):
        raise ValueError(f"image id {image} in {source}: cue classes outside 0..{num_classes - 1}")
    if points.size and (points[1:].min() < 0 or points[1:].max() >= cue_size):
        raise ValueError(f"image id {image} in {source}: cue coordinates outside 0..{cue_size - 1}")
    labels = np.zeros(num_classes, dtype=np.float32)
    labels[fg] = 1.0
    seeds = np.zeros((num_classes, cue_size, cue_size), dtype=np.float32)
    seeds[points[0], points[1], points[2]] = 1.0
    return labels, seeds


def batch_labels_and_cues(cues, images, num_classes=NUM_CLASSES, cue_size=CUE_SIZE, source="<cues>",
                          labels_out=None, cues_out=None):
    """Labels N x 1 x 1 x num_classes and cues N x num_classes x cue_size x cue_size for a batch of ids.

    Same result as `image_labels_and_cues` per image, in one scatter per batch. Writes into
    ``labels_out`` / ``cues_out`` (float arrays of those shapes) when given.
    """
    num = len(images)
    fg = [_lookup(cues, f"{image}_labels", image, source).reshape(-1) for image in images]
    points = [_lookup(cues, f"{image}_cues", image, source) for image in images]
    if any(p.ndim != 2 or p.shape[0] != 3 for p in points):
        _raise_first_invalid(cues, images, num_classes, cue_size, source)
    fg_all, points_all = np.concatenate(fg), np.concatenate(points, axis=1)
    if ((fg_all.size and (fg_all.min() < 1 or fg_all.max() >= num_classes))
            or (points_all.size and (points_all[0].min() < 0 or points_all[0].max() >= num_classes
                                     or points_all[1:].min() < 0 or points_all[1:].max() >= cue_size))):
        _raise_first_invalid(cues, images, num_classes, cue_size, source)
    labels = np.zeros((num, 1, 1, num_classes), dtype=np.float32) if labels_out is None else labels_out
    seeds = np.zeros((num, num_classes, cue_size, cue_size), dtype=np.float32) if cues_out is None else cues_out
    labels[...] = 0.0
    labels[np.repeat(np.arange(num), [len(f) for f in fg]), 0, 0, fg_all] = 1.0
    seeds[...] = 0.0
    owner = np.repeat(np.arange(num), [p.shape[1] for p in points])
    seeds[owner, points_all[0], points_all[1], points_all[2]] = 1.0
    return labels, seeds


def _raise_first_invalid(cues, images, num_classes, cue_size, source):
    """Slow path after a batch check failed: find the image at fault and raise its error."""
    for image in images:
        image_labels_and_cues(cues, image, num_classes, cue_size, source)
    raise AssertionError("batch check failed but no single image is invalid")
