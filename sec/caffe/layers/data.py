"""Data layers (Caffe's data_layers family): Input, DummyData, Data, ImageData, WindowData (and, in
data_arrays.py, HDF5Data, HDF5Output, MemoryData), with what they share.

A data layer has ``kind = "input"`` (the net feeds its tops; forward is never called) or
``kind = "data"`` (forward() takes no bottoms and produces a batch; a caller may feed the tops
instead, see Net.run), and the net lists "data" layers' sources in `Net.data_layers()` (each with
`state_dict()` / `load_state_dict()` for exact resume). Tops: images float32 N x C x H x W (what
sec.caffe.transformer.DataTransformer gives: crop, mirror, mean, scale), labels float32 (N,).

Random choices are drawn as BVLC Caffe draws them: while the net is built, each data layer takes
its seeds from Caffe's global generator mt19937(torch.initial_seed()), which the solver's
`random_seed` sets (sec.caffe.caffe_rng); a data layer built before any random filler (first in
the net, as usual) makes Caffe's crops, mirrors, shuffles and windows. Readers run in background
threads (sec.caffe.prefetch, `data_param.prefetch` batches ahead); batches never depend on thread
timing.
"""
import logging
import os
import weakref

import torch

from sec.caffe.caffe_rng import CaffeRNG, DataLayerSeeds
from sec.caffe.layers.base import fill, need_bottoms
from sec.caffe.transformer import DataTransformer

log = logging.getLogger("sec.caffe.data")

IMAGE_CHANNELS = 3
# Fields of the data parameters that Caffe 1.0 ignores in current-format nets (deprecated: its
# upgrader moves them into transform_param only for V1 `layers`).
DEPRECATED = {"data_param": ("scale", "mean_file", "crop_size", "mirror", "rand_skip", "force_encoded_color"),
              "image_data_param": ("scale", "mean_file", "crop_size", "mirror"),
              "window_data_param": ("mean_file", "crop_size", "mirror")}
DECODE_WORKERS = 2    # ImageData's image-decoding threads, unless DECODE_WORKERS_ENV says otherwise
DECODE_WORKERS_ENV = "SEC_DATA_WORKERS"
STAGING_DEPTH = 2     # ImageData batches made ahead (and pinned) in a background thread on CUDA


class Input:
    """Net inputs: tops of the shapes in input_param (one shape for all tops, or one per top).
    The net feeds them; forward is never called."""

    kind = "input"

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 0)
        dims = [tuple(int(d) for d in s.dim) for s in lp.input_param.shape]
        if len(dims) not in (1, len(lp.top)):
            raise ValueError(f"input_param has {len(dims)} shapes for {len(lp.top)} tops (need 1 or one per top)")
        self.top_shapes = dims * len(lp.top) if len(dims) == 1 else dims
        self.params = []

    def shapes(self, shapes):
        return list(self.top_shapes)

    forward = None


class DummyData:
    """Caffe's DummyData: tops of the shapes in dummy_data_param (`shape`, once or once per top, or
    the legacy num/channels/height/width, each once or once per top), filled by data_filler (none:
    constant 0; one: for every top; else one per top). As Caffe's DummyDataLayer, a top whose
    filler is "constant" is filled once when the net is built and then kept: `held_tops` names
    them, and the net hands on the blob's content there, including what the user wrote into it.
    Other tops are refilled at every forward (torch's generator); they hold zeros until the first.
    transform_param is ignored, as Caffe ignores it here."""

    LEGACY_FIELDS = ("num", "channels", "height", "width")

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 0)
        p = lp.dummy_data_param
        count = len(lp.top)
        fillers = list(p.data_filler)
        if len(fillers) not in (0, 1, count):
            raise ValueError(f"dummy_data_param: {len(fillers)} data_filler given; need 0, 1 or one per top ({count})")
        self.fillers = [fillers[0] if len(fillers) == 1 else fillers[i] if fillers else None for i in range(count)]
        self.top_shapes = self._shapes(p, count)
        for shape in self.top_shapes:
            if any(d < 0 for d in shape):
                raise ValueError(f"dummy_data_param: negative dimension in shape {shape}")
        self.constant = [f is None or f.type == "constant" for f in self.fillers]
        self.held_tops = frozenset(i for i, constant in enumerate(self.constant) if constant)
        self.net_device = ctx.net_device
        self.params = []

    def _shapes(self, p, count):
        def pick(values, i, field):
            if len(values) not in (1, count):
                raise ValueError(f"dummy_data_param.{field} must be given once or once per top ({count}), "
                                 f"got {len(values)}")
            return int(values[0] if len(values) == 1 else values[i])

        if any(len(getattr(p, f)) for f in self.LEGACY_FIELDS):
            if len(p.shape):
                raise ValueError("dummy_data_param: both shape and legacy num/channels/height/width are set")
            return [tuple(pick(getattr(p, f), i, f) for f in self.LEGACY_FIELDS) for i in range(count)]
        if len(p.shape) not in (1, count):
            raise ValueError(f"dummy_data_param.shape must be given once or once per top ({count}), got {len(p.shape)}")
        return [tuple(int(d) for d in p.shape[0 if len(p.shape) == 1 else i].dim) for i in range(count)]

    def shapes(self, shapes):
        return list(self.top_shapes)

    def initial_tops(self):
        """{top index: tensor} of the constant tops, filled once at setup (Caffe's LayerSetUp)."""
        return {i: fill(f, s) for i, (f, s, c) in enumerate(zip(self.fillers, self.top_shapes, self.constant)) if c}

    def forward(self):
        device = self.net_device()
        return tuple(fill(f, s).to(device) for f, s in zip(self.fillers, self.top_shapes))


# ---------------------------------------------------------------- helpers

def layer_seeds(ctx):
    """The net's DataLayerSeeds: Caffe's global generator, seeded with torch's initial seed."""
    if ctx.data_seeds is None:
        ctx.data_seeds = DataLayerSeeds(torch.initial_seed())
    return ctx.data_seeds


def need_tops(lp, low, high):
    if not low <= len(lp.top) <= high:
        want = str(low) if low == high else f"{low}..{high}"
        raise ValueError(f"needs {want} top blob(s), got {len(lp.top)}")


def source_param(lp, shapes, field, min_tops, max_tops):
    """`lp.<field>` after the checks every reading layer shares: no bottoms, the number of tops, a
    source and batch_size > 0."""
    need_bottoms(lp, shapes, 0)
    need_tops(lp, min_tops, max_tops)
    param = getattr(lp, field)
    if not param.source:
        raise ValueError(f"{field}.source is required")
    need_positive(param.batch_size, f"{field}.batch_size")
    return param


def need_positive(value, field):
    if value <= 0:
        raise ValueError(f"{field} must be > 0, got {value}")


def warn_deprecated(lp, param_name):
    """Log the deprecated fields that Caffe 1.0 silently ignores in this layer."""
    param = getattr(lp, param_name)
    for field in DEPRECATED[param_name]:
        if param.HasField(field):
            log.warning("layer '%s' (%s): %s.%s is ignored (as Caffe 1.0 ignores it in current-format nets); "
                        "use transform_param", lp.name, lp.type, param_name, field)


def decode_workers():
    """ImageData's decoding threads: the environment variable SEC_DATA_WORKERS (an integer >= 0; 0
    decodes in the calling thread), else DECODE_WORKERS."""
    value = os.environ.get(DECODE_WORKERS_ENV, "").strip()
    if not value:
        return DECODE_WORKERS
    if not value.isdigit():
        raise ValueError(f"environment variable {DECODE_WORKERS_ENV}={value!r}: need an integer >= 0")
    return int(value)


def prefetch_depth(lp):
    """data_param.prefetch, which Caffe's prefetching layers all read (default 4)."""
    depth = int(lp.data_param.prefetch)
    if depth < 1:
        raise ValueError("data_param.prefetch must be >= 1 (Caffe waits forever for a batch with 0)")
    return depth


def rank_and_world():
    """(rank, world size) under torch.distributed, else (0, 1): Caffe's solver_rank / solver_count."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


HOST_COPY_MAX_ELEMENTS = 1 << 16
"""Tops up to this size (labels, image ids) keep their host values beside the device tensor."""
_host_copies = {}   # id(device tensor) -> (weak reference to it, host array); dropped with the tensor


def to_device(array, device):
    """A numpy batch as a tensor on `device`; to CUDA through pinned memory, asynchronously (torch's
    pinned-memory cache keeps a buffer until its copy is done), so the upload overlaps GPU work.

    A small top (labels, ids: at most HOST_COPY_MAX_ELEMENTS) keeps a copy of its host values for
    `host_values`: a layer that needs them on the host (the Annotation layer's cue lookup) reads
    them there instead of back from the device, which would make the host wait for the GPU (as a
    Caffe blob has a CPU and a GPU copy)."""
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    out = tensor.to(device, non_blocking=True)
    keep_host_values(array, out)
    return out


def keep_host_values(array, tensor):
    """Remember ``array`` (copied) as the host values of ``tensor`` when it is small (see to_device)."""
    if array.size <= HOST_COPY_MAX_ELEMENTS:
        key = id(tensor)
        _host_copies[key] = (weakref.ref(tensor), array.copy())
        weakref.finalize(tensor, _host_copies.pop, key, None)


def host_values(tensor):
    """The host array a data layer uploaded ``tensor`` from (small tops only), or None."""
    entry = _host_copies.get(id(tensor))
    return entry[1] if entry is not None and entry[0]() is tensor else None


class PrefetchingLayer:
    """A data layer whose batches come from a producer run by sec.caffe.prefetch.Prefetcher, made on
    first use (`data_source()`); forward gives its first len(tops) arrays as tensors."""

    kind = "data"

    def _init(self, lp, ctx, top_shapes, make_producer, depth):
        self.top_shapes, self.make_producer, self.depth = top_shapes, make_producer, depth
        self.name = f"layer '{lp.name}' ({lp.type})"
        self.num_tops, self.net_device = len(lp.top), ctx.net_device
        self.source, self.params = None, []

    def shapes(self, shapes):
        return list(self.top_shapes)

    def data_source(self):
        if self.source is None:
            from sec.caffe.prefetch import Prefetcher
            self.source = Prefetcher(self.make_producer(), self.depth, self.name)
        return self.source

    def forward(self):
        arrays = self.data_source().next_batch()
        device = self.net_device()
        return tuple(to_device(array, device) for array in arrays[:self.num_tops])


# ---------------------------------------------------------------- Data

class Data(PrefetchingLayer):
    """Caffe's Data layer: Datum records of an LMDB / LevelDB (data_param source, backend,
    batch_size, prefetch), transformed by transform_param; tops data (and label)."""

    def __init__(self, lp, shapes, ctx):
        from sec.caffe.data_sources import DatumSource
        p = source_param(lp, shapes, "data_param", 1, 2)
        depth = prefetch_depth(lp)
        warn_deprecated(lp, "data_param")
        transformer = DataTransformer(lp.transform_param, ctx.phase)
        seeds = layer_seeds(ctx)
        transformer.init_rand(seeds)        # BaseDataLayer::LayerSetUp
        transformer.init_rand(seeds)        # BasePrefetchingDataLayer::LayerSetUp (the one that stays)
        seeds.draw()                        # the prefetch thread's seed
        rank, world = rank_and_world()

        def producer():
            return DatumSource(p.source, p.backend, p.batch_size, transformer, ctx.phase, rank, world)

        image = producer().first_shape()
        top_shapes = [(int(p.batch_size),) + image, (int(p.batch_size),)][:len(lp.top)]
        log.info("output data size: %s", ",".join(map(str, top_shapes[0])))
        self._init(lp, ctx, top_shapes, producer, depth)


# ---------------------------------------------------------------- ImageData

class ImageData:
    """Caffe's ImageData layer: an image list (image_data_param source, root_folder, batch_size,
    shuffle, rand_skip, new_height/new_width (both or neither: no resize), is_color), transformed
    by transform_param; tops data, label. Batches from sec.caffe.image_data.ImageDataSource.

    The source is made at build time when the top shape needs the first image (no resize, no
    crop: Caffe reads it then), else on first use, so that a net whose ImageData tops are fed
    builds without the list."""

    kind = "data"

    def __init__(self, lp, shapes, ctx):
        p = source_param(lp, shapes, "image_data_param", 2, 2)
        if (p.new_height == 0) != (p.new_width == 0):
            raise ValueError("image_data_param.new_height and new_width must be set at the same time "
                             f"(got {p.new_height} and {p.new_width})")
        warn_deprecated(lp, "image_data_param")
        transformer = DataTransformer(lp.transform_param, ctx.phase)
        seeds = layer_seeds(ctx)
        transformer.init_rand(seeds)
        shuffle_seed = seeds.draw() if p.shuffle else 0
        skip = seeds.draw() % p.rand_skip if p.rand_skip else 0
        transformer.init_rand(seeds)
        seeds.draw()
        self.options = dict(source=p.source, root_folder=p.root_folder, batch_size=int(p.batch_size),
                            new_height=int(p.new_height), new_width=int(p.new_width), shuffle=p.shuffle,
                            seed=shuffle_seed, workers=decode_workers(), transformer=transformer,
                            is_color=p.is_color, skip=skip, prefetch=prefetch_depth(lp))
        self.net_device = ctx.net_device
        self.name = f"layer '{lp.name}' ({lp.type})"
        self.images = self.source = self._uploader = None
        self.params = []
        channels = IMAGE_CHANNELS if p.is_color else 1
        if p.new_height:
            image = transformer.output_shape(channels, p.new_height, p.new_width)
        elif transformer.crop:
            image = (channels, transformer.crop, transformer.crop)
        else:
            image = self.image_source().first_shape()
        self.top_shapes = [(int(p.batch_size),) + tuple(image), (int(p.batch_size),)]

    def shapes(self, shapes):
        return list(self.top_shapes)

    def image_source(self):
        """The ImageDataSource, made on first call."""
        if self.images is None:
            from sec.caffe.image_data import ImageDataSource
            self.images = ImageDataSource(**self.options)
        return self.images

    def data_source(self):
        """What the net lists in data_layers() (state_dict, load_state_dict, close), made on first
        call: the ImageDataSource; for a net on CUDA, that source run one batch ahead in a background
        thread that also copies the batch into pinned buffers (sec.caffe.staging), so the main thread
        only starts its upload, on a side stream. Batches, errors and resume are the source's."""
        if self.source is None:
            if self.net_device().type == "cuda":
                from sec.caffe.prefetch import Prefetcher
                from sec.caffe.staging import PinnedProducer, slots_for
                producer = PinnedProducer(self.image_source(), 2, slots_for(STAGING_DEPTH))
                self.source = Prefetcher(producer, STAGING_DEPTH, self.name, wrap_errors=False)
            else:
                self.source = self.image_source()
        return self.source

    def forward(self):
        batch = self.data_source().next_batch()
        device = self.net_device()
        if not isinstance(batch, tuple):          # staged in pinned buffers (the source is for CUDA)
            if device.type == "cuda":
                from sec.caffe.staging import Uploader
                if self._uploader is None or self._uploader.device != device:
                    self._uploader = Uploader(device)
                return self._uploader.upload(batch, keep_host_values)
            batch = tuple(array.copy() for array in batch.arrays)   # the net moved off the GPU
        images, labels = batch
        return to_device(images, device), to_device(labels, device)


# ---------------------------------------------------------------- WindowData

class WindowData(PrefetchingLayer):
    """Caffe's WindowData layer (see sec.caffe.window_data): window_data_param source (window file),
    root_folder, batch_size, fg_threshold, bg_threshold, fg_fraction, context_pad, crop_mode (warp,
    square), cache_images, scale; transform_param crop_size (required), mirror, mean_file /
    mean_value. Tops data (batch x 3 x crop x crop) and label."""

    def __init__(self, lp, shapes, ctx):
        from sec.caffe.window_data import CROP_MODES, WindowSource
        p, t = source_param(lp, shapes, "window_data_param", 2, 2), lp.transform_param
        need_positive(t.crop_size, "transform_param.crop_size")
        if p.crop_mode not in CROP_MODES:
            raise ValueError(f"window_data_param.crop_mode '{p.crop_mode}' unknown (known: {', '.join(CROP_MODES)}; "
                             "Caffe warps for any other word)")
        if 2 * p.context_pad >= t.crop_size:
            raise ValueError(f"window_data_param.context_pad {p.context_pad} leaves nothing of crop_size {t.crop_size}")
        warn_deprecated(lp, "window_data_param")
        if t.HasField("scale"):
            log.warning("layer '%s' (WindowData): transform_param.scale is ignored (as in Caffe 1.0, which "
                        "scales by window_data_param.scale)", lp.name)
        transformer = DataTransformer(t, ctx.phase)
        self._check_mean(transformer, t.crop_size)
        seeds = layer_seeds(ctx)
        transformer.init_rand(seeds)
        sampling_seed = seeds.draw()        # prefetch_rng_ (crop_size is always set)
        transformer.init_rand(seeds)
        seeds.draw()
        producer = WindowSource(p, t.crop_size, t.mirror, transformer.mean_image, transformer.mean_values,
                                CaffeRNG(sampling_seed))
        top_shapes = [(int(p.batch_size), IMAGE_CHANNELS, int(t.crop_size), int(t.crop_size)), (int(p.batch_size),)]
        self._init(lp, ctx, top_shapes, lambda: producer, prefetch_depth(lp))

    @staticmethod
    def _check_mean(transformer, crop):
        if len(transformer.mean_values) not in (0, 1, IMAGE_CHANNELS):
            raise ValueError(f"transform_param has {len(transformer.mean_values)} mean_value(s); specify either 1 "
                             f"or as many as channels: {IMAGE_CHANNELS}")
        mean = transformer.mean_image
        if mean is not None:
            off = (mean.shape[2] - crop) // 2
            if mean.shape[0] != IMAGE_CHANNELS or mean.shape[2] < crop or off + crop > mean.shape[1]:
                raise ValueError(f"transform_param.mean_file is {'x'.join(map(str, mean.shape))} (C x H x W); "
                                 f"WindowData needs 3 channels and its centre crop_size {crop} square")
