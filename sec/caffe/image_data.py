"""What Caffe's ImageData layer reads (image_data_layer.cpp): an image list, in Caffe's order.

* The list (`<image path> <integer label>` per line, sec.data.read_image_list) is read once. With
  `shuffle`, its order is shuffled at the start and again at every wrap-around with `caffe::shuffle`
  on a mt19937 seeded with `seed` (sec.caffe.caffe_rng: the same order as BVLC Caffe for that seed);
  reading starts at entry `skip` (Caffe's rand_skip draw) and runs on across the end of the list.
* An image is read as 3 BGR channels (colour: Pillow, EXIF-rotated, see sec.data.load_image) or one
  grey channel (`is_color` false: OpenCV's imread, as Caffe), resized to new_height x new_width when
  both are set (OpenCV's cv::resize INTER_LINEAR on the 8-bit image, bitwise Caffe's), then given to
  the DataTransformer (crop, mirror, mean, scale) in list order in the calling thread, so its random
  draws never depend on which decoding thread finishes first.
* A batch takes its shape from its first image (Caffe reshapes per batch); an image that does not fit
  that shape is an error naming the list line, as are missing and undecodable images.

Batches are float32 N x C x h x w (C = 3 in BGR order, or 1) and labels float32 (N,). Images are
decoded by `workers` threads (0: in the calling thread), `prefetch` batches ahead.
"""
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from sec import data
from sec.caffe.caffe_rng import CaffeRNG
from sec.caffe.db import hwc_to_chw
from sec.caffe.transformer import DataTransformer
from sec.proto import caffe_pb2

PREFETCH_BATCHES = 4      # Caffe 1.0's data_param.prefetch default
STATE_SCHEME = "caffe::shuffle(mt19937(seed)) per epoch"


def read_grey_image(path):
    """An image as H x W uint8 grey, by OpenCV's imread(IMREAD_GRAYSCALE) as Caffe reads it."""
    import cv2  # here: importing OpenCV takes about a second
    if not Path(path).is_file():
        raise data.ImageLoadError(f"image file not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise data.ImageLoadError(f"cannot decode image {path}")
    return image


def mean_transformer(mean_values, phase=caffe_pb2.TEST):
    """A DataTransformer that only subtracts per-channel `mean_values`."""
    return DataTransformer(caffe_pb2.TransformationParameter(mean_value=list(mean_values)), phase)


class ImageDataSource:
    """Batches of Caffe's ImageData layer; see the module docstring. `next_batch()` -> (images,
    labels); `state_dict()` / `load_state_dict()` resume exactly (plain data, JSON-safe)."""

    def __init__(self, source, root_folder, batch_size, new_height=0, new_width=0, mean_values=data.MEAN_BGR,
                 shuffle=True, seed=0, workers=2, transformer=None, is_color=True, skip=0,
                 prefetch=PREFETCH_BATCHES):
        if batch_size <= 0:
            raise ValueError(f"{source}: need batch_size > 0, got {batch_size}")
        if (new_height > 0) != (new_width > 0) or new_height < 0 or new_width < 0:
            raise ValueError(f"{source}: new_height and new_width must both be set (> 0) or both be 0, "
                             f"got {new_height}x{new_width}")
        if workers < 0 or prefetch < 1:
            raise ValueError(f"need workers >= 0 and prefetch >= 1, got {workers} and {prefetch}")
        self.source, self.root_folder = str(source), str(root_folder)
        self.batch_size = int(batch_size)
        self.height, self.width = int(new_height), int(new_width)
        self.is_color, self.shuffle = bool(is_color), bool(shuffle)
        self.workers, self.prefetch = int(workers), int(prefetch)
        self.transformer = transformer if transformer is not None else mean_transformer(mean_values)
        self.entries = data.read_image_list(source)
        if not 0 <= skip < len(self.entries):
            raise ValueError(f"{source}: cannot skip {skip} of {len(self.entries)} images (rand_skip too large)")
        self._shuffle_rng = CaffeRNG(seed) if self.shuffle else None
        first = list(range(len(self.entries)))
        if self.shuffle:
            self._shuffle_rng.shuffle(first)
        self._orders = {0: (first, self._rng_state())}
        self._pool = None
        self._lock = threading.Lock()
        self._pending = deque()
        self._set_position(0, int(skip))

    def __len__(self):
        return len(self.entries)

    def _rng_state(self):
        return self._shuffle_rng.state_dict() if self.shuffle else None

    def _order(self, epoch):
        """The list order of `epoch`: the previous epoch's, shuffled again (Caffe's ShuffleImages)."""
        if epoch not in self._orders:
            order = list(self._order(epoch - 1)[0])
            if self.shuffle:
                self._shuffle_rng.shuffle(order)
            self._orders[epoch] = (order, self._rng_state())
            for old in [e for e in self._orders if e < self._epoch]:
                del self._orders[old]
        return self._orders[epoch]

    def _set_position(self, epoch, position):
        self._cancel_pending()
        self._epoch, self._position = epoch, position
        self._next_epoch, self._next_position = epoch, position

    def _cancel_pending(self):
        while self._pending:
            _, futures, _ = self._pending.popleft()
            for future in futures or ():
                future.cancel()

    def _take_indices(self):
        """Entries of the next batch to schedule, advancing the scheduling cursor."""
        indices = []
        epoch, position = self._next_epoch, self._next_position
        while len(indices) < self.batch_size:
            indices.append(self._order(epoch)[0][position])
            position += 1
            if position == len(self.entries):
                epoch, position = epoch + 1, 0
        self._next_epoch, self._next_position = epoch, position
        return indices, (epoch, position)

    def load(self, index):
        """Entry `index` read and resized: C x H x W, uint8 (float32 with integer values when resized)."""
        image_path, _, line_no = self.entries[index]
        full_path = os.path.join(self.root_folder, image_path)
        try:
            image = data.load_image(full_path) if self.is_color else read_grey_image(full_path)[:, :, None]
        except data.ImageLoadError as err:
            raise data.ImageListError(f"{self.source}:{line_no}: {err}") from err
        if self.height:
            image = data._RESIZERS["caffe"](image, self.height, self.width)
        return hwc_to_chw(image[:, :, ::-1] if self.is_color else image)

    def first_shape(self):
        """(C, h, w) of the first batch's images, as Caffe's DataLayerSetUp infers the top from it."""
        epoch, position = self._epoch, self._position
        index = self._order(epoch)[0][position]
        return self._shape_of(index, self.load(index))

    def _shape_of(self, index, image):
        try:
            return self.transformer.output_shape(*image.shape)
        except ValueError as err:
            raise data.ImageListError(f"{self.source}:{self.entries[index][2]}: {err}") from None

    def _schedule(self):
        indices, after = self._take_indices()
        futures = None
        if self.workers > 0:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="sec-data")
            futures = [self._pool.submit(self.load, i) for i in indices]
        self._pending.append((indices, futures, after))

    def next_batch(self):
        """The next batch: (images float32 N x C x h x w, transformed; labels float32 (N,))."""
        with self._lock:
            depth = self.prefetch if self.workers > 0 else 1
            while len(self._pending) < depth:
                self._schedule()
            indices, futures, after = self._pending.popleft()
            if futures is None:
                images = [self.load(i) for i in indices]
            else:
                self._schedule()
                images = [future.result() for future in futures]
            batch = self._transform(indices, images)
            self._epoch, self._position = after
            labels = np.array([self.entries[i][1] for i in indices], dtype=np.float32)
            return batch, labels

    def _transform(self, indices, images):
        """Caffe's load_batch: the first image sets the batch shape, every image must fit it."""
        shape = self._shape_of(indices[0], images[0])
        batch = np.empty((len(images),) + shape, dtype=np.float32)
        for k, (index, image) in enumerate(zip(indices, images)):
            if self._shape_of(index, image) != shape:
                raise data.ImageListError(
                    f"{self.source}:{self.entries[index][2]}: image is {image.shape[1]}x{image.shape[2]} with "
                    f"{image.shape[0]} channel(s), the batch's first is {images[0].shape[1]}x{images[0].shape[2]} "
                    f"with {images[0].shape[0]}; set new_height/new_width or crop_size (Caffe needs one size "
                    "per batch)")
            batch[k] = self.transformer.apply(image, self.transformer.draw(image.shape[1], image.shape[2]))
        return batch

    def state_dict(self):
        """Plain-data reading position: the next batch's start, the order and generator states."""
        order, shuffle_state = self._orders[self._epoch]
        return {"scheme": STATE_SCHEME, "epoch": self._epoch, "position": self._position,
                "order": list(order) if self.shuffle else None, "shuffle_rng": shuffle_state,
                "transform_rng": self.transformer.state_dict(), "shuffle": self.shuffle,
                "num_images": len(self.entries)}

    def load_state_dict(self, state):
        """Resume from state_dict(): the following batches equal an uninterrupted run's."""
        with self._lock:
            if state.get("scheme") != STATE_SCHEME:
                raise ValueError(f"{self.source}: data state of another scheme ({state.get('scheme')!r}); "
                                 f"this source resumes {STATE_SCHEME!r}")
            if state["num_images"] != len(self.entries):
                raise ValueError(f"{self.source}: state was saved for a list of "
                                 f"{state['num_images']} images, this list has {len(self.entries)}")
            if bool(state["shuffle"]) != self.shuffle:
                raise ValueError(f"{self.source}: state was saved with shuffle {state['shuffle']}, "
                                 f"this layer has shuffle {self.shuffle}")
            if not 0 <= state["position"] < len(self.entries):
                raise ValueError(f"{self.source}: position {state['position']} out of range")
            order = list(state["order"]) if self.shuffle else list(range(len(self.entries)))
            if sorted(order) != list(range(len(self.entries))):
                raise ValueError(f"{self.source}: the saved order is not a permutation of the list")
            self.transformer.load_state_dict(state["transform_rng"])
            if self.shuffle:
                self._shuffle_rng.load_state_dict(state["shuffle_rng"])
            self._orders = {int(state["epoch"]): (order, state["shuffle_rng"])}
            self._set_position(int(state["epoch"]), int(state["position"]))

    def close(self):
        """Stop the decoding threads (pending batches are dropped)."""
        with self._lock:
            self._cancel_pending()
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
