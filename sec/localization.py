"""Weak localization cues for SEC: foreground seeds from class activation maps (CAM), background
seeds from a gradient saliency map, written in the original cue pickle format.

Two classification nets trained from image-level labels (models/localization/):
- the foreground net ends conv5 -> fc6_CAM -> fc7_CAM (convolutions) -> global average pooling ->
  `scores` (InnerProduct, one output per foreground class). The heat map of foreground class c is
  sum_k W[c-1, k] * fc7_CAM[k] (the `scores` weights, no bias), at the cue grid (41 x 41 for VOC);
  the seeds of a present class are the cells where its heat exceeds FG_THRESHOLD x its maximum.
- the background net is a plain classifier; its saliency is max over channels of
  |d(sum of class scores) / d conv4_1| (conv4_1's blob diff as Caffe leaves it after backward:
  the gradient at the convolution's output), median-filtered (3 x 3); the background seeds are
  the BG_PERCENTILE % least salient cells (ties ranked by blurred saliency, see background_mask).

Overlap rule (no cell gets two classes): see `combine_seeds`.

Layout conventions: heat maps (C-1, S, S) are indexed by foreground class - 1; a seed map is an
S x S int64 array holding the class (0 = background) or UNSEEDED; cues are the pickle's int64
(3, K) arrays (class, row, column), row-major order. Images fed to the nets are float32
N x 3 x H x W, BGR, mean-subtracted (sec.data.preprocess).

Also here: the Python data layer of the classification nets (`ImageLabelsLayer`; their loss is
the engine's SigmoidCrossEntropyLoss) and the labels file (JSON {"<id>": [foreground classes]}).
"""
import json
from pathlib import Path

import numpy as np
import scipy.ndimage
from pylayers.base import Layer, float_param, layer_label, parse_param_str

FG_THRESHOLD = 0.2          # seeds of a class: heat > FG_THRESHOLD x max heat of that class
BG_PERCENTILE = 10.0        # background seeds: the 10 % least salient cells
SALIENCY_MEDIAN_SIZE = 3    # median filter of the saliency map (cells)
TIE_BREAK_SIGMA = 2.0       # cells: blur ranking background cells whose saliency ties
UNSEEDED = -1               # seed map value of a cell without a seed
FG_BG_RULES = ("drop", "foreground", "background")
DEFAULT_FG_BG_RULE = "drop"
# Per dataset: prototxt folder, classes (background included), cue grid side and default paths,
# relative to the repository root (the scripts in training/ resolve them).
PRESETS = {
    "synthetic": {"models": "models/localization/synthetic", "num_classes": 7, "cue_size": 21,
                  "dataset": "generated/synthetic", "runs": "runs/localization/synthetic"},
    "voc": {"models": "models/localization/voc", "num_classes": 21, "cue_size": 41,
            "dataset": None, "runs": "runs/localization/voc"},
}


def preset_paths(name, root):
    """PRESETS[name] with its paths joined to the repository root `root` (Path, or None)."""
    if name not in PRESETS:
        raise ValueError(f"need a preset in {sorted(PRESETS)}, got {name!r}")
    preset = dict(PRESETS[name])
    for key in ("models", "dataset", "runs"):
        preset[key] = Path(root) / preset[key] if preset[key] is not None else None
    return preset


# Blob and layer names the prototxts of models/localization/ use.
CAM_FEATURES = "fc7_CAM"
SCORES = "scores"
SALIENCY_BLOB = "conv4_1"
IMAGES = "images"


# ----- labels file --------------------------------------------------------------------------------
def read_labels(path, num_classes):
    """{image id (int): int64 array of foreground classes 1..num_classes-1} from a JSON labels
    file {"<id>": [classes]} (the synthetic set's train_labels.json format)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read labels file {path}: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"labels file {path}: need a JSON object {{\"<id>\": [classes]}}")
    labels = {}
    for key, classes in raw.items():
        try:
            image = int(key)
            values = np.array(sorted(set(int(c) for c in classes)), dtype=np.int64)
        except (TypeError, ValueError):
            raise ValueError(f"labels file {path}: entry {key!r}: need an integer id and a list of "
                             f"integer classes, got {classes!r}") from None
        if values.size and (values.min() < 1 or values.max() >= num_classes):
            raise ValueError(f"labels file {path}: image {key}: classes {values.tolist()} outside "
                             f"1..{num_classes - 1}")
        labels[image] = values
    return labels


def load_image_labels(path, num_classes):
    """{id: classes} from a JSON labels file, or from the '<id>_labels' keys of a cue pickle
    (original format, plain or .gz: e.g. SEC's localization_cues.pickle for VOC train_aug)."""
    path = Path(path)
    if path.suffix == ".json":
        return read_labels(path, num_classes)
    from pylayers import load_cues
    cues = load_cues(str(path))
    labels = {}
    for key, value in cues.items():
        if isinstance(key, str) and key.endswith("_labels"):
            classes = np.asarray(value, np.int64).reshape(-1)
            if classes.size and (classes.min() < 1 or classes.max() >= num_classes):
                raise ValueError(f"{path}: {key} holds classes {classes.tolist()} outside 1..{num_classes - 1}")
            labels[int(key[:-len("_labels")])] = np.unique(classes)
    if not labels:
        raise ValueError(f"{path}: no '<id>_labels' keys (need a JSON labels file or a cue pickle)")
    return labels


def write_labels(path, labels):
    """Write {id: classes} as the JSON labels file read by `read_labels`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({str(k): [int(c) for c in v] for k, v in sorted(labels.items())})
    path.write_text(text + "\n", encoding="utf-8")


def mask_classes(mask, num_classes, ignore=255):
    """Foreground classes present in a ground-truth mask (0 and `ignore` excluded)."""
    values = np.unique(np.asarray(mask))
    values = values[(values != 0) & (values != ignore)]
    if values.size and values.max() >= num_classes:
        raise ValueError(f"mask holds class {int(values.max())}, need < {num_classes} (or {ignore})")
    return values.astype(np.int64)


def mask_finder(masks=None, voc=None):
    """image file -> its ground-truth mask path, or None where there is none: `masks`/<stem>.png
    (a folder of masks, e.g. the synthetic set's), else the VOC folder's SegmentationClass(Aug)/."""
    if masks is not None:
        return lambda image_file: _existing(Path(masks) / f"{Path(image_file).stem}.png")
    if voc is not None:
        from sec.data import VOCLayout
        layout = VOCLayout(voc)

        def voc_mask(image_file):
            try:
                return layout.gt_path(Path(image_file).stem)
            except FileNotFoundError:
                return None
        return voc_mask
    return lambda image_file: None


def _existing(path):
    return path if path.is_file() else None


def labels_from_masks(entries, mask_path_of, num_classes):
    """{id: classes} from ground-truth masks: entries are (image file, id) pairs and
    mask_path_of(image file) gives the mask's path (for VOC: VOCLayout.gt_path of the stem)."""
    from PIL import Image
    labels = {}
    for image_file, image in entries:
        path = mask_path_of(image_file)
        try:
            labels[int(image)] = mask_classes(np.asarray(Image.open(path)), num_classes)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
    return labels


# ----- Python layers of the classification nets --------------------------------------------------
class ImageLabelsLayer(Layer):
    """bottom: image ids (N,) float; top: labels N x (num_classes - 1), 1 where the foreground class
    (column c - 1 for class c) is present. param_str: labels (JSON labels file), num_classes
    (background included, as in the cue pickle)."""

    defaults = {"labels": "train_labels.json", "num_classes": 21}

    def setup(self, bottom, top):
        label = layer_label(self)
        if len(bottom) != 1 or len(top) != 1:
            raise ValueError(f"{label}: need 1 bottom (ids) and 1 top (labels), got {len(bottom)} and {len(top)}")
        params = parse_param_str(self.param_str, self.defaults, label)
        self.num_classes = int(float_param(params, "num_classes", label, lambda v: v >= 2 and v == int(v),
                                           "an integer >= 2"))
        self.source = str(params["labels"])
        self.labels = read_labels(self.source, self.num_classes)

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].data.shape[0], self.num_classes - 1)

    def forward(self, bottom, top):
        top[0].data[...] = 0.0
        for row, value in enumerate(bottom[0].data.reshape(-1)):
            image = int(round(float(value)))
            if image not in self.labels:
                raise KeyError(f"{layer_label(self)}: image id {image} not in labels file {self.source}")
            top[0].data[row, self.labels[image] - 1] = 1.0

    def backward(self, top, propagate_down, bottom):
        """Data layer: nothing to propagate."""


# ----- heat maps, saliency, seeds -----------------------------------------------------------------
def cam_heatmaps(features, weights):
    """Class activation maps: features N x K x H x W (fc7_CAM), weights (C', K) (the `scores`
    InnerProduct) -> N x C' x H x W, heat[n, c] = sum_k weights[c, k] * features[n, k]."""
    features, weights = np.asarray(features, np.float32), np.asarray(weights, np.float32)
    if features.ndim != 4 or weights.ndim != 2 or weights.shape[1] != features.shape[1]:
        raise ValueError(f"need features N x K x H x W and weights C x K, got {features.shape} and {weights.shape}")
    return np.einsum("ck,nkhw->nchw", weights, features, optimize=True)


def resize_maps(maps, size):
    """Bilinear resize of ... x H x W maps to size x size (the cue grid); unchanged when equal."""
    maps = np.asarray(maps, np.float32)
    if maps.shape[-2:] == (size, size):
        return maps
    factors = (1.0,) * (maps.ndim - 2) + (size / maps.shape[-2], size / maps.shape[-1])
    return scipy.ndimage.zoom(maps, factors, order=1, grid_mode=True, mode="nearest")


def foreground_masks(heat, classes, threshold=FG_THRESHOLD):
    """{class: S x S bool} for the present foreground classes: heat > threshold x max of that
    class's heat map (heat indexed by class - 1). A class whose maximum is not positive keeps only
    its arg-max cell, so that every labelled class has a seed."""
    masks = {}
    for c in classes:
        plane = heat[int(c) - 1]
        peak = float(plane.max())
        if peak > 0:
            masks[int(c)] = plane > threshold * peak
        else:
            mask = np.zeros(plane.shape, bool)
            mask[np.unravel_index(int(plane.argmax()), plane.shape)] = True
            masks[int(c)] = mask
    return masks


def saliency_map(gradient, median_size=SALIENCY_MEDIAN_SIZE):
    """K x H x W gradient -> H x W saliency: max over channels of |gradient|, median-filtered."""
    saliency = np.abs(np.asarray(gradient, np.float32)).max(axis=0)
    return scipy.ndimage.median_filter(saliency, size=median_size)


def background_mask(saliency, percentile=BG_PERCENTILE, tie_sigma=TIE_BREAK_SIGMA):
    """The percentile % least salient cells (rounded to a whole number of cells).

    Ties are common: behind a max pooling only the window maxima get a gradient, so many cells of
    a saliency map are exactly 0, and a plain "below the percentile" would select no cell (or, with
    "at or below", every tied cell). Tied cells are ranked by their Gaussian-blurred saliency
    (sigma tie_sigma cells): the cells farthest from anything salient come first."""
    saliency = np.asarray(saliency, np.float64)
    count = int(round(percentile / 100.0 * saliency.size))
    blurred = scipy.ndimage.gaussian_filter(saliency, tie_sigma, mode="nearest")
    order = np.lexsort((blurred.ravel(), saliency.ravel()))
    mask = np.zeros(saliency.size, bool)
    mask[order[:count]] = True
    return mask.reshape(saliency.shape)


def combine_seeds(fg_masks, bg_mask, heat=None, fg_bg_rule=DEFAULT_FG_BG_RULE):
    """One S x S seed map (class, or UNSEEDED) from foreground masks and the background mask.

    Foreground against foreground: the cell goes to the class whose heat relative to its own
    maximum (heat / max, heat indexed by class - 1) is highest there, so each class keeps its peak
    and a large object's faint tail does not swallow a small neighbour; without `heat`, to the
    class with the smallest mask. Foreground against background (fg_bg_rule): "drop" leaves the
    cell unseeded (the two cues disagree, and a wrong seed costs more than a missing one),
    "foreground" or "background" gives it to that side. Finally a labelled class left without
    any seed gets back its best cell, so every labelled class keeps a seed where possible.
    """
    if fg_bg_rule not in FG_BG_RULES:
        raise ValueError(f"need fg_bg_rule in {FG_BG_RULES}, got {fg_bg_rule!r}")
    bg_mask = np.asarray(bg_mask, bool)
    seeds = np.full(bg_mask.shape, UNSEEDED, np.int64)
    fg_any = np.zeros(bg_mask.shape, bool)
    if fg_masks:
        classes = sorted(fg_masks)
        stack = np.stack([np.asarray(fg_masks[c], bool) for c in classes])
        if heat is not None:
            rank = np.stack([_relative_heat(heat[c - 1]) for c in classes])
        else:
            rank = -np.broadcast_to(stack.sum(axis=(1, 2), keepdims=True), stack.shape).astype(np.float64)
        rank = np.where(stack, rank, -np.inf)
        fg_any = stack.any(axis=0)
        seeds[fg_any] = np.asarray(classes)[rank.argmax(axis=0)][fg_any]
    only_bg = bg_mask & ~fg_any
    seeds[only_bg] = 0
    both = bg_mask & fg_any
    if fg_bg_rule == "drop":
        seeds[both] = UNSEEDED
    elif fg_bg_rule == "background":
        seeds[both] = 0
    if fg_masks:
        _keep_one_seed_per_class(seeds, classes, stack, rank)
    return seeds


def _relative_heat(plane):
    """heat / max heat; for a map whose maximum is not positive, 1 at the arg-max, 0 elsewhere."""
    peak = float(plane.max())
    if peak > 0:
        return plane / peak
    return (plane == peak).astype(np.float64)


def _keep_one_seed_per_class(seeds, classes, stack, rank):
    """A class that lost all its cells gets back its best cell (highest rank in its mask), unless
    that cell is the last seed of another foreground class."""
    for k, c in enumerate(classes):
        if not stack[k].any() or (seeds == c).any():
            continue
        cell = np.unravel_index(int(rank[k].argmax()), seeds.shape)
        owner = seeds[cell]
        if owner > 0 and (seeds == owner).sum() == 1:
            continue
        seeds[cell] = c


def seeds_to_cues(seeds):
    """S x S seed map -> the pickle's int64 (3, K) array (class, row, column), row-major."""
    rows, cols = np.nonzero(seeds != UNSEEDED)
    return np.stack([seeds[rows, cols], rows, cols]).astype(np.int64).reshape(3, -1)


def cues_to_seeds(cues, size):
    """The pickle's (3, K) cues -> S x S seed map (UNSEEDED elsewhere); two classes on a cell is an error."""
    cues = np.asarray(cues, np.int64).reshape(3, -1)
    seeds = np.full((size, size), UNSEEDED, np.int64)
    flat = cues[1] * size + cues[2]
    if np.unique(flat).size != flat.size:
        raise ValueError("cues hold a cell twice")
    seeds[cues[1], cues[2]] = cues[0]
    return seeds


def image_cues(heat, saliency, classes, threshold=FG_THRESHOLD, percentile=BG_PERCENTILE,
               fg_bg_rule=DEFAULT_FG_BG_RULE):
    """Cues (3, K) of one image from its heat maps (C', S, S), saliency (S, S) and present classes."""
    fg = foreground_masks(heat, classes, threshold)
    return seeds_to_cues(combine_seeds(fg, background_mask(saliency, percentile), heat, fg_bg_rule))


# ----- running the nets ---------------------------------------------------------------------------
class CueNets:
    """The two localization nets (sec.caffe.Net, TEST phase) and what is read from them.

    heatmaps(images) and saliency(images) take float32 N x 3 x H x W batches (BGR,
    mean-subtracted; H x W may differ from the net's input shape, which is then reshaped) and
    return maps at cue_size x cue_size: N x C' x S x S and N x S x S.
    """

    def __init__(self, fg_net, bg_net, cue_size, features=CAM_FEATURES, scores=SCORES,
                 saliency_blob=SALIENCY_BLOB, images=IMAGES):
        for net, blobs, what in ((fg_net, (images, features, scores), "foreground"),
                                 (bg_net, (images, saliency_blob, scores), "background")):
            missing = [b for b in blobs if b not in net.blobs]
            if missing:
                raise ValueError(f"{what} net {net.source}: no blob(s) {missing}")
        if scores not in fg_net.params:
            raise ValueError(f"foreground net {fg_net.source}: no parameter layer '{scores}'")
        self.fg_net, self.bg_net, self.cue_size = fg_net, bg_net, int(cue_size)
        self.features, self.scores, self.saliency_blob, self.images = features, scores, saliency_blob, images

    def input_size(self, which):
        """(height, width) of the images the "fg" or "bg" net takes (its input blob's shape)."""
        net = {"fg": self.fg_net, "bg": self.bg_net}[which]
        return tuple(net.blobs[self.images].shape[2:])

    def _feed(self, net, images):
        if tuple(net.blobs[self.images].shape) != tuple(images.shape):
            net.blobs[self.images].reshape(*images.shape)
            net.reshape()
        net.blobs[self.images].data[...] = images

    def heatmaps(self, images):
        import torch
        self._feed(self.fg_net, images)
        with torch.no_grad():
            self.fg_net.forward()
        features = self.fg_net.blobs[self.features].data
        weights = self.fg_net.params[self.scores][0].data
        return resize_maps(cam_heatmaps(features, weights), self.cue_size)

    def saliency(self, images, median_size=SALIENCY_MEDIAN_SIZE):
        import torch
        net = self.bg_net
        self._feed(net, images)
        with torch.enable_grad():
            net.forward()
            net.blobs[self.scores].diff[...] = 1.0
            net.backward(start=self._layer_of(net, self.scores), end=self._layer_of(net, self.saliency_blob))
        peak = np.abs(net.blobs[self.saliency_blob].diff).max(axis=1, keepdims=True)
        peak = resize_maps(peak, self.cue_size)
        return np.stack([saliency_map(p, median_size) for p in peak])

    @staticmethod
    def _layer_of(net, blob):
        """The first layer producing `blob` (for an in-place blob, the layer that creates it)."""
        for name, tops in net.top_names.items():
            if blob in tops:
                return name
        raise ValueError(f"{net.source}: no layer produces blob '{blob}'")
