"""Producers of the Data and HDF5Data layers, run by sec.caffe.prefetch.Prefetcher.

Each producer makes batches one after another (`next_batch() -> tuple of numpy arrays`) and
reports its position between batches as plain data (`state_dict()` / `load_state_dict()`), so a
solver snapshot resumes the data exactly. Files are opened lazily in the thread that reads them;
`first_*` methods read what a layer needs at build time (Caffe's DataLayerSetUp) and close again.

Layouts: images float32 N x C x h x w (what the DataTransformer gives), labels float32 (N,);
HDF5 tops float32 N x (the dataset's trailing dims).
"""
import logging
from pathlib import Path

import numpy as np

from sec.caffe import db
from sec.caffe.layers.base import TEST

log = logging.getLogger("sec.caffe.data")


def shard(rank, world, phase, offset):
    """Caffe's Skip(): in TRAIN under several solvers, record `offset` belongs to rank offset % world."""
    return phase == TEST or offset % world == rank


class DatumSource:
    """Caffe's DataLayer: the Datum records of an LMDB / LevelDB in key order, from the first again
    after the last ("Restarting data prefetching from start."), `batch_size` per batch, each through
    `transformer` (sec.caffe.transformer.DataTransformer). A batch takes its shape from its first
    record; every record of the batch must give the same shape."""

    def __init__(self, path, backend, batch_size, transformer, phase, rank=0, world=1):
        self.path, self.backend = str(path), db.backend_name(backend)
        self.batch_size, self.transformer, self.phase = int(batch_size), transformer, phase
        self.rank, self.world = int(rank), int(world)
        if transformer.force_color:
            self.decode = db.DECODE_COLOR
        elif transformer.force_gray:
            self.decode = db.DECODE_GRAY
        else:
            self.decode = db.DECODE_NATIVE
        self._reader = self._cursor = None
        self._key, self._offset = None, 0
        self._warned_force = False

    def _where(self):
        return f"{self.backend} database {self.path}, key {self._cursor.key.decode('utf-8', 'replace')!r}"

    def _image(self):
        """(Datum, C x H x W image) of the record under the cursor."""
        where = self._where()
        datum = db.parse_datum(self._cursor.value, where)
        if not datum.encoded and self.decode != db.DECODE_NATIVE and not self._warned_force:
            log.error("%s: force_color and force_gray only for encoded datum (as Caffe, ignored)", where)
            self._warned_force = True
        return datum, db.datum_to_array(datum, where, self.decode)

    def first_shape(self):
        """(C, h, w) of the transformed first record (the top's shape at build time)."""
        with db.Reader(self.path, self.backend) as reader:
            self._cursor = reader.cursor()
            try:
                if not self._cursor.valid:
                    raise db.DBError(f"{self.backend} database {self.path} is empty")
                return self._checked_shape(self._image()[1])
            finally:
                self._cursor = None

    def _checked_shape(self, image):
        try:
            return self.transformer.output_shape(*image.shape)
        except ValueError as err:
            raise db.DBError(f"{self._where()}: {err}") from None

    def _open(self):
        self._reader = db.Reader(self.path, self.backend)
        self._cursor = self._reader.cursor()
        if not self._cursor.valid:
            raise db.DBError(f"{self.backend} database {self.path} is empty")
        if self._key is not None:
            self._cursor.seek(bytes.fromhex(self._key))
            if not self._cursor.valid:
                self._cursor.seek_first()

    def _next(self):
        self._cursor.next()
        if not self._cursor.valid:
            log.info("Restarting data prefetching from start.")
            self._cursor.seek_first()
        self._offset += 1

    def next_batch(self):
        if self._reader is None:
            self._open()
        images, labels, shape = None, np.empty(self.batch_size, np.float32), None
        for item in range(self.batch_size):
            while not shard(self.rank, self.world, self.phase, self._offset):
                self._next()
            datum, image = self._image()
            if shape is None:
                shape = self._checked_shape(image)
                images = np.empty((self.batch_size,) + shape, np.float32)
            elif self._checked_shape(image) != shape:
                raise db.DBError(f"{self._where()}: record is {'x'.join(map(str, image.shape))} (C x H x W); "
                                 f"the batch's first gives {'x'.join(map(str, shape))} (one size per batch, as Caffe)")
            images[item] = self.transformer.apply(image, self.transformer.draw(image.shape[1], image.shape[2]))
            labels[item] = datum.label
            self._next()
        self._key = self._cursor.key.hex()
        return images, labels

    def state_dict(self):
        return {"key": self._key, "offset": self._offset, "transform_rng": self.transformer.state_dict()}

    def load_state_dict(self, state):
        self.transformer.load_state_dict(state["transform_rng"])
        self._key, self._offset = state["key"], int(state["offset"])
        self.close()

    def close(self):
        if self._reader is not None:
            self._reader.close()
            self._reader = self._cursor = None


# ---------------------------------------------------------------- HDF5

class HDF5Error(ValueError):
    """An HDF5Data list or file that cannot be read as Caffe reads it (names the file)."""


def read_hdf5_list(source):
    """The .h5 paths of an HDF5Data source list (whitespace-separated, as Caffe's `>>` reads them;
    relative paths are relative to the current folder, as in Caffe)."""
    path = Path(source)
    if not path.is_file():
        raise HDF5Error(f"HDF5Data source list not found: {source}")
    names = path.read_text(encoding="utf-8").split()
    if not names:
        raise HDF5Error(f"{source}: must have at least 1 HDF5 filename listed")
    return names


def load_hdf5(filename, datasets, trailing=None):
    """{dataset: float32 array} of an .h5 file (Caffe's hdf5_load_nd_dataset: float or integer
    classes, read as float32); every dataset needs the same number of rows and, when `trailing`
    ({dataset: dims after the first}) is given, those dims."""
    import h5py
    if not Path(filename).is_file():
        raise HDF5Error(f"HDF5 file not found: {filename}")
    arrays = {}
    try:
        with h5py.File(filename, "r") as handle:
            for name in datasets:
                if name not in handle or not isinstance(handle[name], h5py.Dataset):
                    raise HDF5Error(f"{filename}: no dataset '{name}' (HDF5Data's tops name its datasets)")
                dataset = handle[name]
                if dataset.dtype.kind not in "fiu" or dataset.ndim < 1:
                    raise HDF5Error(f"{filename}: dataset '{name}' is {dataset.dtype} with {dataset.ndim} axes; "
                                    "Caffe reads float or integer datasets of at least 1 axis")
                arrays[name] = np.asarray(dataset[()], dtype=np.float32)
    except OSError as err:
        raise HDF5Error(f"cannot read HDF5 file {filename}: {err}") from None
    rows = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(rows.values())) > 1:
        raise HDF5Error(f"{filename}: datasets have different numbers of rows {rows} (Caffe needs them equal)")
    for name, array in arrays.items():
        if trailing is not None and tuple(array.shape[1:]) != tuple(trailing[name]):
            raise HDF5Error(f"{filename}: dataset '{name}' has rows of shape {tuple(array.shape[1:])}, the first "
                            f"file's are {tuple(trailing[name])}")
    return arrays


class HDF5Source:
    """Caffe's HDF5DataLayer: rows of the listed files in order (file by file, wrapping around),
    `batch_size` rows per batch, one array per top. `shuffle` permutes the files at every pass and the
    rows of each file (Caffe uses std::random_shuffle; here `rng`, a sec.caffe.caffe_rng.CaffeRNG)."""

    def __init__(self, source, tops, batch_size, shuffle, rng, phase, rank=0, world=1):
        self.source, self.tops, self.batch_size = str(source), list(tops), int(batch_size)
        self.shuffle, self.rng, self.phase = bool(shuffle), rng, phase
        self.rank, self.world = int(rank), int(world)
        self.files = read_hdf5_list(source)
        self._file_order = list(range(len(self.files)))
        if self.shuffle:
            self.rng.shuffle(self._file_order)
        self._file, self._row, self._offset = 0, 0, 0
        self._arrays = self._load(self._file_order[0], None)
        self.trailing = {name: a.shape[1:] for name, a in self._arrays.items()}
        self._row_order = self._new_row_order()

    def _load(self, file_index, trailing):
        return load_hdf5(self.files[file_index], self.tops, trailing)

    def _rows(self):
        return self._arrays[self.tops[0]].shape[0]

    def _new_row_order(self):
        order = list(range(self._rows()))
        if self.shuffle:
            self.rng.shuffle(order)
        return order

    def top_shapes(self):
        return [(self.batch_size,) + tuple(self.trailing[name]) for name in self.tops]

    def _next(self):
        """Caffe's HDF5DataLayer::Next: past a file's last row, the next file (a new pass: reshuffled)."""
        self._row += 1
        if self._row == self._rows():
            if len(self.files) > 1:
                self._file += 1
                if self._file == len(self.files):
                    self._file = 0
                    if self.shuffle:
                        self.rng.shuffle(self._file_order)
                self._arrays = self._load(self._file_order[self._file], self.trailing)
            self._row = 0
            self._row_order = self._new_row_order()
        self._offset += 1

    def next_batch(self):
        out = [np.empty(shape, np.float32) for shape in self.top_shapes()]
        for item in range(self.batch_size):
            while not shard(self.rank, self.world, self.phase, self._offset):
                self._next()
            row = self._row_order[self._row]
            for array, name in zip(out, self.tops):
                array[item] = self._arrays[name][row]
            self._next()
        return tuple(out)

    def state_dict(self):
        return {"file_order": list(self._file_order), "file": self._file, "row": self._row,
                "row_order": list(self._row_order), "offset": self._offset,
                "rng": self.rng.state_dict() if self.rng is not None else None}

    def load_state_dict(self, state):
        file_order = [int(i) for i in state["file_order"]]
        if sorted(file_order) != list(range(len(self.files))):
            raise ValueError(f"{self.source}: saved file order does not fit a list of {len(self.files)} files")
        arrays = self._load(file_order[int(state["file"])], self.trailing)
        rows = arrays[self.tops[0]].shape[0]
        if sorted(state["row_order"]) != list(range(rows)) or not 0 <= state["row"] < rows:
            raise ValueError(f"{self.source}: saved row position does not fit {self.files[file_order[state['file']]]}")
        if self.rng is not None:
            self.rng.load_state_dict(state["rng"])
        self._file_order, self._file, self._row = file_order, int(state["file"]), int(state["row"])
        self._arrays, self._row_order, self._offset = arrays, list(state["row_order"]), int(state["offset"])
