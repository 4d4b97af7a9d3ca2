"""Data layers of arrays (Caffe's data_layers family, continued from data.py): HDF5Data and
HDF5Output (HDF5 files through h5py), MemoryData (numpy arrays handed over by the caller).

Tops float32; HDF5Data's are N x (the dataset's trailing dims), MemoryData's data N x C x H x W and
label N x 1 x 1 x 1 (after a forward pass, as Caffe reshapes it).
"""
import logging

import numpy as np

from sec.caffe.caffe_rng import CaffeRNG
from sec.caffe.layers.base import need_bottoms
from sec.caffe.layers.data import (PrefetchingLayer, layer_seeds, need_positive, need_tops, prefetch_depth,
                                   rank_and_world, source_param, to_device)
from sec.caffe.transformer import DataTransformer

log = logging.getLogger("sec.caffe.data")


# ---------------------------------------------------------------- HDF5

class HDF5Data(PrefetchingLayer):
    """Caffe's HDF5Data layer: hdf5_data_param source (a text list of .h5 files), batch_size,
    shuffle; one top per dataset, named as the dataset; rows read in order across the files.
    Caffe refuses transform_param here; so does this."""

    def __init__(self, lp, shapes, ctx):
        from sec.caffe.data_sources import HDF5Source
        if lp.HasField("transform_param"):
            raise ValueError("transform_param: HDF5Data does not transform data (Caffe refuses it)")
        p = source_param(lp, shapes, "hdf5_data_param", 1, max(1, len(lp.top)))
        rng = CaffeRNG(layer_seeds(ctx).seed) if p.shuffle else None
        rank, world = rank_and_world()
        producer = HDF5Source(p.source, lp.top, p.batch_size, p.shuffle, rng, ctx.phase, rank, world)
        self._init(lp, ctx, producer.top_shapes(), lambda: producer, prefetch_depth(lp))


class HDF5Output:
    """Caffe's HDF5Output layer: writes its two bottoms as datasets "data" and "label" (float32,
    Caffe's 4-D legacy shapes) into hdf5_output_param.file_name. As Caffe, the file is created
    (truncated) when the net is built and written at the forward pass; Caffe can write it once
    only (a second forward fails, the datasets exist), and so does this, with an error."""

    DATASETS = ("data", "label")
    LEGACY_AXES = 4

    def __init__(self, lp, shapes, ctx):
        import h5py
        need_bottoms(lp, shapes, 2)
        need_tops(lp, 0, 0)
        self.file_name = lp.hdf5_output_param.file_name
        if not self.file_name:
            raise ValueError("hdf5_output_param.file_name is required")
        self.shapes(shapes)
        try:
            h5py.File(self.file_name, "w").close()
        except OSError as err:
            raise ValueError(f"hdf5_output_param.file_name: cannot create {self.file_name}: {err}") from None
        self.written, self.params = False, []

    def shapes(self, shapes):
        for shape in shapes:
            if len(shape) > self.LEGACY_AXES:
                raise ValueError(f"bottom of shape {tuple(shape)}: HDF5Output writes blobs of at most 4 axes")
        if shapes[0][0] != shapes[1][0]:
            raise ValueError(f"data and label bottoms must have the same num, got {shapes[0][0]} and {shapes[1][0]}")
        return []

    def forward(self, data, label):
        import h5py
        if self.written:
            raise RuntimeError(f"HDF5Output: {self.file_name} already holds this net's datasets; Caffe writes "
                               "it at one forward pass only (a second one fails there too)")
        with h5py.File(self.file_name, "a") as handle:
            for name, blob in zip(self.DATASETS, (data, label)):
                values = blob.detach().cpu().numpy().astype(np.float32)
                legacy = tuple(values.shape) + (1,) * (self.LEGACY_AXES - values.ndim)
                handle.create_dataset(name, data=values.reshape(legacy))
        self.written = True
        return ()


# ---------------------------------------------------------------- MemoryData

class MemoryData:
    """Caffe's MemoryData layer: batches of arrays handed over by `reset(data, labels)` (pycaffe's
    Net.set_input_arrays; no transformation, as Caffe), or of images added with `add_datum_vector` /
    `add_mat_vector` (transformed by transform_param, as Caffe's AddDatumVector / AddMatVector).
    memory_data_param batch_size, channels, height, width; tops data (batch_size x C x H x W) and
    label, which Caffe reshapes to batch_size x 1 x 1 x 1 at every forward pass (so does this)."""

    kind = "data"

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 0)
        need_tops(lp, 2, 2)
        p = lp.memory_data_param
        self.batch_size, self.dims = int(p.batch_size), (int(p.channels), int(p.height), int(p.width))
        if self.batch_size * int(np.prod(self.dims)) <= 0:
            raise ValueError("memory_data_param batch_size, channels, height and width must be specified and positive")
        self.transformer = DataTransformer(lp.transform_param, ctx.phase).init_rand(layer_seeds(ctx))
        self.has_transform = lp.HasField("transform_param")
        self.name, self.net_device, self.params = lp.name, ctx.net_device, []
        self._data = self._labels = None
        self._pos = 0

    def shapes(self, shapes):
        return [(self.batch_size,) + self.dims, (self.batch_size,)]

    def reset(self, data, labels):
        """Serve `data` (float32 N x C x H x W, C-contiguous) and `labels` (N or N x 1 x 1 x 1) from the
        start, batch_size at a time (N a multiple of it). The arrays are used as given (not copied):
        changing them later changes later batches, as in Caffe."""
        if self.has_transform:
            log.warning("MemoryData layer '%s' does not transform array data on reset() (as Caffe)", self.name)
        data, labels = np.asarray(data), np.asarray(labels)
        if data.dtype != np.float32 or labels.dtype != np.float32:
            raise ValueError(f"MemoryData '{self.name}': data and labels must be float32, got {data.dtype} and "
                             f"{labels.dtype}")
        if data.ndim != 4 or tuple(data.shape[1:]) != self.dims:
            raise ValueError(f"MemoryData '{self.name}': data must be N x {' x '.join(map(str, self.dims))}, "
                             f"got shape {data.shape}")
        if labels.shape not in ((data.shape[0],), (data.shape[0], 1, 1, 1)):
            raise ValueError(f"MemoryData '{self.name}': labels must be ({data.shape[0]},) or "
                             f"({data.shape[0]}, 1, 1, 1), got {labels.shape}")
        if data.shape[0] == 0 or data.shape[0] % self.batch_size:
            raise ValueError(f"MemoryData '{self.name}': {data.shape[0]} items; the number must be a positive "
                             f"multiple of the batch size {self.batch_size}")
        self._data, self._labels, self._pos = data, labels.reshape(-1), 0

    def add_datum_vector(self, datums):
        """Transform Datum images (C x H x W each) and serve them with their labels."""
        from sec.caffe.db import datum_to_array
        self.add_mat_vector([datum_to_array(d).transpose(1, 2, 0) for d in datums], [d.label for d in datums])

    def add_mat_vector(self, images, labels):
        """Transform H x W x C uint8 images (OpenCV layout, BGR) and serve them with `labels`."""
        if not len(images) or len(images) % self.batch_size or len(images) != len(labels):
            raise ValueError(f"MemoryData '{self.name}': {len(images)} images and {len(labels)} labels; need as many "
                             f"of each, a positive multiple of the batch size {self.batch_size}")
        out = np.empty((len(images),) + self.dims, np.float32)
        for k, image in enumerate(images):
            chw = np.asarray(image).transpose(2, 0, 1)
            if self.transformer.output_shape(*chw.shape) != self.dims:
                raise ValueError(f"MemoryData '{self.name}': image {k} of shape {np.shape(image)} does not "
                                 f"transform to {self.dims}")
            out[k] = self.transformer.transform(chw)
        self._data, self._labels, self._pos = out, np.asarray(labels, np.float32), 0

    def set_batch_size(self, batch_size):
        """Caffe's set_batch_size (the tops change shape at the next forward)."""
        need_positive(batch_size, "batch_size")
        self.batch_size = int(batch_size)

    def data_source(self):
        return self

    def forward(self):
        if self._data is None:
            raise RuntimeError(f"MemoryData '{self.name}' needs data: call reset (pycaffe: net.set_input_arrays) "
                               "before the forward pass")
        rows = slice(self._pos, self._pos + self.batch_size)
        data = np.array(self._data[rows], dtype=np.float32)
        labels = np.array(self._labels[rows], dtype=np.float32).reshape(self.batch_size, 1, 1, 1)
        self._pos = (self._pos + self.batch_size) % len(self._data)
        device = self.net_device()
        return to_device(data, device), to_device(labels, device)

    def state_dict(self):
        return {"pos": self._pos, "transform_rng": self.transformer.state_dict()}

    def load_state_dict(self, state):
        self.transformer.load_state_dict(state["transform_rng"])
        self._pos = int(state["pos"])
