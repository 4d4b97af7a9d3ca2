"""Caffe's key-value data sets: LMDB and LevelDB (read and write), and the `Datum` record.

A data set is a database of serialized `Datum` messages (sec/proto's caffe_pb2), read in key order,
as Caffe's `db::LMDB` / `db::LevelDB` do (util/db_lmdb.cpp, db_leveldb.cpp). The readers are the
maintained PyPI bindings `lmdb` (py-lmdb) and `plyvel` (LevelDB), imported when a database is first
opened. Layout conventions:

* An LMDB data set is a folder holding data.mdb (+ lock.mdb), as Caffe writes it (no MDB_NOSUBDIR);
  a LevelDB data set is a folder of LevelDB files.
* A raw Datum holds C x H x W uint8 bytes in `data` (channel-major: all of channel 0, then 1, ...;
  images in OpenCV's BGR order), or float32 values in `float_data`; an encoded Datum (`encoded:
  true`) holds an image file's bytes (JPEG, PNG, ...) in `data`, decoded with OpenCV as Caffe does.

Errors are `DBError` naming the database (and the key for a bad record): a missing or corrupt
database, a record that does not parse or whose size does not fit its shape.
"""
import os
import shutil
import secrets
import threading
from pathlib import Path

import numpy as np

from sec.proto import caffe_pb2

LMDB, LEVELDB = "lmdb", "leveldb"
# DataParameter.DB enum values (caffe.proto): LEVELDB = 0 (the default), LMDB = 1.
BACKEND_OF_ENUM = {0: LEVELDB, 1: LMDB}
# Caffe's LevelDB options for both reading and writing (db_leveldb.cpp).
LEVELDB_OPTIONS = dict(block_size=65536, write_buffer_size=268435456, max_open_files=100)
# LMDB's default map size (mdb_env_create); Caffe doubles it whenever a commit finds it full.
LMDB_INITIAL_MAP_SIZE = 10485760
# OpenCV imread/imdecode flags used by Caffe: IMREAD_UNCHANGED ("native"), GRAYSCALE, COLOR.
DECODE_NATIVE, DECODE_GRAY, DECODE_COLOR = -1, 0, 1


class DBError(ValueError):
    """A database that is missing, unreadable or holds records that are not Caffe's Datum."""


def backend_name(backend):
    """'lmdb' or 'leveldb' from a DataParameter.DB enum value or a tool's --backend string."""
    if isinstance(backend, str):
        if backend not in (LMDB, LEVELDB):
            raise DBError(f"unknown database backend '{backend}' (known: {LMDB}, {LEVELDB})")
        return backend
    if int(backend) not in BACKEND_OF_ENUM:
        raise DBError(f"unknown database backend {backend} (known: 0 = LEVELDB, 1 = LMDB)")
    return BACKEND_OF_ENUM[int(backend)]


# ---------------------------------------------------------------- reading

class _OpenDatabases:
    """The databases this process has open for reading, shared by every Reader of the same folder:
    py-lmdb refuses to open one environment twice in a process, LevelDB locks its folder, and a
    TRAIN and a TEST net (or two Data layers) may well read the same data set, as in Caffe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._open = {}           # (real path, backend) -> [handle, number of readers]

    def acquire(self, path, backend):
        key = (os.path.realpath(path), backend)
        with self._lock:
            if key not in self._open:
                self._open[key] = [self._open_handle(path, backend), 0]
            self._open[key][1] += 1
            return self._open[key][0]

    @staticmethod
    def _open_handle(path, backend):
        try:
            if backend == LMDB:
                import lmdb
                # lock=False: a read-only data set needs no reader table (and may sit on a read-only disk).
                return lmdb.open(path, readonly=True, lock=False, subdir=True)
            import plyvel
            return plyvel.DB(path, create_if_missing=False, **LEVELDB_OPTIONS)
        except Exception as error:  # lmdb.Error / plyvel.Error: the library's words, our file
            raise DBError(f"cannot open {backend} database {path}: {_message(error)}") from None

    def release(self, path, backend):
        key = (os.path.realpath(path), backend)
        with self._lock:
            entry = self._open[key]
            entry[1] -= 1
            if entry[1] == 0:
                entry[0].close()
                del self._open[key]


_DATABASES = _OpenDatabases()


class Reader:
    """A data set opened read-only (Caffe's db::READ). `cursor()` walks it in key order (LMDB: in a
    read transaction of its own); `close()` releases it."""

    def __init__(self, path, backend):
        self.path, self.backend = str(path), backend_name(backend)
        if not Path(self.path).is_dir():
            raise DBError(f"{self.backend} database not found: {self.path}")
        self._env = _DATABASES.acquire(self.path, self.backend)
        self._txn = None
        if self.backend == LMDB:
            try:
                self._txn = self._env.begin(buffers=False)
            except Exception as error:
                _DATABASES.release(self.path, self.backend)
                raise DBError(f"cannot read lmdb database {self.path}: {_message(error)}") from None

    def cursor(self):
        """A Cursor at the first record."""
        return Cursor(self)

    def close(self):
        if self._env is not None:
            if self._txn is not None:
                self._txn.abort()
            _DATABASES.release(self.path, self.backend)
            self._env = self._txn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class Cursor:
    """Caffe's db::Cursor: `valid`, `key`, `value` (bytes), `seek_first()`, `next()`, and
    `seek(key)` (the first record at or after `key`; resume)."""

    def __init__(self, reader):
        self.reader = reader
        if reader.backend == LMDB:
            self._cursor = reader._txn.cursor()
        else:
            self._cursor = reader._env.raw_iterator()
        self.seek_first()

    def _call(self, step, *args):
        try:
            return step(*args)
        except Exception as error:  # the binding's own error type, reported with the database
            raise DBError(f"{self.reader.backend} database {self.reader.path}: read failed: "
                          f"{_message(error)}") from None

    def _moved(self, found):
        # py-lmdb's moves return whether a record is there; plyvel's iterator says so afterwards.
        self.valid = bool(found) if self.reader.backend == LMDB else self._cursor.valid()

    def seek_first(self):
        lmdb = self.reader.backend == LMDB
        self._moved(self._call(self._cursor.first if lmdb else self._cursor.seek_to_first))

    def next(self):
        self._moved(self._call(self._cursor.next))

    def seek(self, key):
        lmdb = self.reader.backend == LMDB
        self._moved(self._call(self._cursor.set_range if lmdb else self._cursor.seek, key))

    @property
    def key(self):
        return bytes(self._cursor.key())

    @property
    def value(self):
        return bytes(self._cursor.value())


def count_records(path, backend):
    """How many records a data set holds (LMDB: from its statistics; LevelDB: counted)."""
    with Reader(path, backend) as reader:
        if reader.backend == LMDB:
            return int(reader._env.stat()["entries"])
        cursor, count = reader.cursor(), 0
        while cursor.valid:
            count += 1
            cursor.next()
        return count


def _message(error):
    """An lmdb / plyvel exception's text (plyvel's are bytes)."""
    text = error.args[0] if error.args else str(error)
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)


# ---------------------------------------------------------------- writing

class Writer:
    """A new data set (Caffe's db::NEW), written atomically: records go to a hidden folder beside
    `path`, committed every `put_many`, and `finish()` renames it to `path`; `abort()` (or an
    exception inside `with`) removes it, so a failed run leaves nothing behind. `path` must not
    exist (Caffe refuses to overwrite a data set)."""

    def __init__(self, path, backend):
        self.path, self.backend = Path(path), backend_name(backend)
        if os.path.lexists(self.path):
            raise DBError(f"{self.backend} database {self.path} already exists (remove it first)")
        if not self.path.parent.is_dir():
            raise DBError(f"cannot create {self.backend} database {self.path}: "
                          f"folder {self.path.parent} does not exist")
        self._tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        try:
            if self.backend == LMDB:
                import lmdb
                self._tmp.mkdir()
                self._map_size = LMDB_INITIAL_MAP_SIZE
                self._env = lmdb.open(str(self._tmp), map_size=self._map_size, subdir=True)
            else:
                import plyvel
                self._env = plyvel.DB(str(self._tmp), create_if_missing=True, error_if_exists=True,
                                      **LEVELDB_OPTIONS)
        except Exception as error:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise DBError(f"cannot create {self.backend} database {self.path}: {_message(error)}") from None

    def put_many(self, items):
        """Commit [(key bytes, value bytes)] in one transaction (LMDB: the map doubles when full)."""
        if self.backend == LEVELDB:
            with self._env.write_batch() as batch:
                for key, value in items:
                    batch.put(key, value)
            return
        import lmdb
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    for key, value in items:
                        txn.put(key, value)
                return
            except lmdb.MapFullError:
                self._map_size *= 2
                self._env.set_mapsize(self._map_size)

    def finish(self):
        """Close the database and move it into place."""
        self._env.close()
        self._env = None
        if os.path.lexists(self.path):
            self.abort()
            raise DBError(f"{self.backend} database {self.path} appeared while it was written; "
                          "nothing was changed")
        os.rename(self._tmp, self.path)

    def abort(self):
        if self._env is not None:
            self._env.close()
            self._env = None
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc_info):
        if exc_type is not None:
            self.abort()


# ---------------------------------------------------------------- Datum

def parse_datum(value, where):
    """A Datum from a record's bytes; `where` names the database and key for errors."""
    from google.protobuf.message import DecodeError
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(value)
    except DecodeError as error:
        raise DBError(f"{where}: not a Caffe Datum ({error})") from None
    return datum


def datum_to_array(datum, where="datum", decode=DECODE_NATIVE):
    """The image of a Datum as a C x H x W array: uint8 for `data`, float32 for `float_data`.

    An encoded Datum is decoded with OpenCV (`decode`: DECODE_NATIVE keeps the file's channels,
    DECODE_COLOR makes 3 BGR channels, DECODE_GRAY one), as Caffe's DecodeDatumToCVMat(Native).
    """
    if datum.encoded:
        return decode_image(datum.data, where, decode)
    shape = (datum.channels, datum.height, datum.width)
    count = int(np.prod(shape))
    if datum.channels <= 0 or count <= 0:
        raise DBError(f"{where}: datum has shape {shape} (channels, height, width must be > 0)")
    if len(datum.data):
        if len(datum.data) != count:
            raise DBError(f"{where}: datum holds {len(datum.data)} bytes, its shape {shape} needs {count}")
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    if len(datum.float_data) != count:
        raise DBError(f"{where}: datum holds {len(datum.float_data)} float values, its shape {shape} "
                      f"needs {count}")
    return np.asarray(datum.float_data, dtype=np.float32).reshape(shape)


def decode_image(data, where, flag=DECODE_NATIVE):
    """Image file bytes -> C x H x W uint8 (OpenCV's cv::imdecode with `flag`, BGR order)."""
    import cv2  # here: importing OpenCV takes about a second, most callers never decode
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    if image is None:
        raise DBError(f"{where}: could not decode the encoded image ({len(data)} bytes)")
    if image.dtype != np.uint8:
        raise DBError(f"{where}: decoded image has type {image.dtype}; Caffe needs 8-bit images")
    return hwc_to_chw(image)


def hwc_to_chw(image):
    """An OpenCV image (H x W or H x W x C) as a C x H x W view."""
    return image[None] if image.ndim == 2 else image.transpose(2, 0, 1)


def array_to_datum(array, label=None):
    """A raw Datum from a C x H x W array: uint8 into `data`, anything else into `float_data`;
    `label` set when given (pycaffe's caffe.io.array_to_datum)."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"need a C x H x W array, got shape {array.shape}")
    datum = caffe_pb2.Datum(channels=array.shape[0], height=array.shape[1], width=array.shape[2])
    if array.dtype == np.uint8:
        datum.data = np.ascontiguousarray(array).tobytes()
    else:
        datum.float_data.extend(np.asarray(array, dtype=np.float32).ravel().tolist())
    if label is not None:
        datum.label = int(label)
    return datum


def image_to_datum(image, label):
    """Caffe's CVMatToDatum + label: an OpenCV uint8 image (H x W or H x W x C) as a raw Datum,
    with `encoded: false` stored explicitly (so the bytes equal Caffe's records)."""
    datum = array_to_datum(hwc_to_chw(np.asarray(image, dtype=np.uint8)), label)
    datum.encoded = False
    return datum
