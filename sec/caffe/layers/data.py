"""Data layers (Caffe's data_layers family): Input, DummyData and ImageData.

A data layer has ``kind = "input"`` (the net feeds its tops; forward is never called) or
``kind = "data"`` (forward() takes no bottoms and produces a batch; a caller may feed the tops
instead, see Net.run), and the net lists "data" layers' sources in `Net.data_layers()`.
"""
import torch

from sec.caffe.layers.base import fill, need_bottoms

IMAGE_CHANNELS = 3


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


class ImageData:
    """Caffe's ImageData layer: tops (images N x 3 x new_height x new_width, BGR mean-subtracted;
    ids (N,) float). Batches come from sec.data.ImageDataSource, created on first use, unless the
    caller feeds the tops. Only what that source does is accepted: new_height/new_width set,
    no crop, no mirror, no mean_file, scale 1, colour images."""

    kind = "data"

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 0)
        if len(lp.top) != 2:
            raise ValueError(f"needs 2 tops (data, label), got {len(lp.top)}")
        p, t = lp.image_data_param, lp.transform_param
        if not p.source:
            raise ValueError("image_data_param.source is required")
        if p.new_height <= 0 or p.new_width <= 0:
            raise ValueError("image_data_param.new_height and new_width must be set (images are batched)")
        unsupported = [name for name, bad in (
            ("image_data_param.crop_size", p.crop_size or t.crop_size),
            ("mirror", p.mirror or t.mirror),
            ("mean_file", p.HasField("mean_file") or t.HasField("mean_file")),
            ("scale", p.scale != 1 or t.scale != 1),
            ("image_data_param.is_color: false", not p.is_color),
            ("image_data_param.rand_skip", p.rand_skip),
        ) if bad]
        if unsupported:
            raise ValueError(f"unsupported ImageData options: {', '.join(unsupported)}")
        means = list(t.mean_value)
        if len(means) == 1:
            means = means * IMAGE_CHANNELS
        if means and len(means) != IMAGE_CHANNELS:
            raise ValueError(f"transform_param.mean_value needs 1 or 3 values, got {len(means)}")
        self.options = dict(source=p.source, root_folder=p.root_folder, batch_size=int(p.batch_size),
                            new_height=int(p.new_height), new_width=int(p.new_width),
                            mean_values=tuple(means) if means else (0.0, 0.0, 0.0), shuffle=p.shuffle)
        self.net_device = ctx.net_device
        self.source = None
        self.params = []

    def shapes(self, shapes):
        o = self.options
        return [(o["batch_size"], IMAGE_CHANNELS, o["new_height"], o["new_width"]), (o["batch_size"],)]

    def data_source(self):
        """The ImageDataSource, created on first call (imports sec.data then).

        Its shuffle is seeded from torch's seed, which the solver sets from `random_seed`
        (+ rank), as Caffe seeds its ImageData shuffling from the solver's seed."""
        if self.source is None:
            from sec.data import ImageDataSource
            self.source = ImageDataSource(**self.options, seed=torch.initial_seed() % 2 ** 32)
        return self.source

    def forward(self):
        images, labels = self.data_source().next_batch()
        device = self.net_device()
        return _to_device(images, device), _to_device(labels, device)


def _to_device(array, device):
    """A numpy batch as a tensor on `device`; to CUDA through pinned memory, asynchronously (torch's
    pinned-memory cache keeps a buffer until its copy is done), so the upload overlaps GPU work."""
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)
