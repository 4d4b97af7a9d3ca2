"""compute_image_mean: the mean image of an LMDB / LevelDB data set, as a .binaryproto.

    python -m sec.caffe.tools.compute_image_mean [--backend=lmdb|leveldb] INPUT_DB [OUTPUT_FILE]

Caffe's tools/compute_image_mean.cpp: every Datum (encoded ones decoded as stored, OpenCV's
IMREAD_UNCHANGED) is added in key order into a float32 sum, which is divided by the count, so the
result is Caffe's bitwise (same float32 operations in the same order). OUTPUT_FILE is a BlobProto with
num 1 and the first record's channels, height, width (what transform_param.mean_file reads); the log
ends with each channel's mean value, as Caffe's.

Differences from Caffe, on purpose (one line on stderr, exit status 1, nothing written): a missing or
empty database and a record of another size (Caffe aborts with status 134, or reads garbage from an
empty one). The output file is written atomically.
"""
import sys

import numpy as np

from sec.caffe import db, formats
from sec.caffe.tools.data_tool_flags import Flag, glog, parse_or_exit, usage_text
from sec.proto import caffe_pb2

PROGRAM = "compute_image_mean"
USAGE = ("Compute the mean_image of a set of images given by a leveldb/lmdb\nUsage:\n"
         "    compute_image_mean [FLAGS] INPUT_DB [OUTPUT_FILE]\n")
FLAGS = {"backend": Flag("string", "lmdb", "The backend {leveldb, lmdb} containing the images")}
LOG_EVERY = 10000


def record_values(cursor, where):
    """The record under the cursor as a flat float32 array (Datum bytes or float_data)."""
    datum = db.parse_datum(cursor.value, where)
    return datum, np.asarray(db.datum_to_array(datum, where), dtype=np.float32).reshape(-1)


def mean_image(path, backend):
    """(BlobProto of the mean, number of records), Caffe's float32 sum divided by the count."""
    with db.Reader(path, backend) as reader:
        glog(PROGRAM, "I", f"Opened {backend} {path}")
        cursor = reader.cursor()
        if not cursor.valid:
            raise db.DBError(f"{backend} database {path} is empty")
        key = cursor.key.decode("utf-8", "replace")
        datum, first = record_values(cursor, f"{path}, key {key!r}")
        if datum.encoded:
            glog(PROGRAM, "I", "Decoding Datum")
        shape = db.datum_to_array(datum).shape
        total = np.zeros(first.size, dtype=np.float32)
        glog(PROGRAM, "I", "Starting iteration")
        count = 0
        while cursor.valid:
            key = cursor.key.decode("utf-8", "replace")
            _, values = record_values(cursor, f"{path}, key {key!r}")
            if values.size != total.size:
                raise db.DBError(f"{path}, key {key!r}: incorrect data field size {values.size} "
                                 f"(the first record has {total.size})")
            total += values
            count += 1
            if count % LOG_EVERY == 0:
                glog(PROGRAM, "I", f"Processed {count} files.")
            cursor.next()
    if count % LOG_EVERY != 0:
        glog(PROGRAM, "I", f"Processed {count} files.")
    blob = caffe_pb2.BlobProto(num=1, channels=shape[0], height=shape[1], width=shape[2])
    blob.data.extend((total / np.float32(count)).tolist())
    return blob


def log_channel_means(blob):
    """Caffe's last lines: per channel, the float32 sum of its values (in order) over H * W."""
    dim = blob.height * blob.width
    values = np.asarray(blob.data, dtype=np.float32).reshape(blob.channels, dim)
    glog(PROGRAM, "I", f"Number of channels: {blob.channels}")
    for channel in range(blob.channels):
        total = np.cumsum(values[channel], dtype=np.float32)[-1]
        glog(PROGRAM, "I", f"mean_value channel [{channel}]: {float(total / np.float32(dim)):g}")


def main(argv=None):
    values, positional = parse_or_exit(PROGRAM, USAGE, FLAGS, argv)
    if not 1 <= len(positional) <= 2:
        sys.stdout.write(usage_text(PROGRAM, USAGE, FLAGS))
        return 1
    try:
        blob = mean_image(positional[0], db.backend_name(values["backend"]))
        if len(positional) == 2:
            glog(PROGRAM, "I", f"Write to {positional[1]}")
            formats.atomic_write_bytes(positional[1], blob.SerializeToString())
    except (db.DBError, OSError) as error:
        glog(PROGRAM, "E", f"{error}; nothing was written")
        return 1
    log_channel_means(blob)
    return 0


if __name__ == "__main__":
    sys.exit(main())
