"""compute_image_mean: the mean image of an LMDB / LevelDB data set, as a .binaryproto.

    python -m sec.caffe.tools.compute_image_mean [--backend=lmdb|leveldb] INPUT_DB [OUTPUT_FILE]

Caffe's tools/compute_image_mean.cpp: every Datum (encoded ones decoded as stored, OpenCV's
IMREAD_UNCHANGED) is added in key order into a float32 sum, which is divided by the count, so the
result is Caffe's bitwise (same float32 operations in the same order). OUTPUT_FILE is a BlobProto with
num 1 and the first record's channels, height, width (what transform_param.mean_file reads); the log
ends with each channel's mean value, as Caffe's. Flags, usage text and statuses are gflags'
(sec.caffe.tools.flags), log lines glog's (sec.caffe.tools.glog).

Differences from Caffe, on purpose (one line on stderr, exit status 1, nothing written): a missing or
empty database and a record of another size (Caffe aborts with status 134, or reads garbage from an
empty one). The output file is written atomically.
"""
import sys

import numpy as np

from sec.caffe import db, formats
from sec.caffe.tools import glog
from sec.caffe.tools.flags import Flag, FlagSet
from sec.proto import caffe_pb2

log = glog.log
USAGE = ("Compute the mean_image of a set of images given by a leveldb/lmdb\nUsage:\n"
         "    compute_image_mean [FLAGS] INPUT_DB [OUTPUT_FILE]\n")
FLAGS = (Flag("backend", "string", "lmdb", "The backend {leveldb, lmdb} containing the images"),)
FLAG_SET = FlagSet("compute_image_mean", USAGE, FLAGS, "sec/caffe/tools/compute_image_mean.py")
NUM_ARGS = (1, 2)        # INPUT_DB [OUTPUT_FILE]
USAGE_STATUS = 1         # Caffe's status after the usage message
BAD_INPUT_STATUS = 1     # this project's, for input refused before anything is written
LOG_EVERY = 10000


def record_values(cursor, where):
    """The record under the cursor as a flat float32 array (Datum bytes or float_data)."""
    datum = db.parse_datum(cursor.value, where)
    return datum, np.asarray(db.datum_to_array(datum, where), dtype=np.float32).reshape(-1)


def mean_image(path, backend):
    """(BlobProto of the mean, number of records), Caffe's float32 sum divided by the count."""
    with db.Reader(path, backend) as reader:
        log.info("Opened %s %s", backend, path)
        cursor = reader.cursor()
        if not cursor.valid:
            raise db.DBError(f"{backend} database {path} is empty")
        key = cursor.key.decode("utf-8", "replace")
        datum, first = record_values(cursor, f"{path}, key {key!r}")
        if datum.encoded:
            log.info("Decoding Datum")
        shape = db.datum_to_array(datum).shape
        total = np.zeros(first.size, dtype=np.float32)
        log.info("Starting iteration")
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
                log.info("Processed %d files.", count)
            cursor.next()
    if count % LOG_EVERY != 0:
        log.info("Processed %d files.", count)
    blob = caffe_pb2.BlobProto(num=1, channels=shape[0], height=shape[1], width=shape[2])
    blob.data.extend((total / np.float32(count)).tolist())
    return blob


def log_channel_means(blob):
    """Caffe's last lines: per channel, the float32 sum of its values (in order) over H * W."""
    dim = blob.height * blob.width
    values = np.asarray(blob.data, dtype=np.float32).reshape(blob.channels, dim)
    log.info("Number of channels: %d", blob.channels)
    for channel in range(blob.channels):
        total = np.cumsum(values[channel], dtype=np.float32)[-1]
        log.info("mean_value channel [%d]: %g", channel, float(total / np.float32(dim)))


def run(backend, input_db, output_file=None):
    """The mean of `input_db`, written to `output_file` when given, with its refusals as one E
    line and BAD_INPUT_STATUS; the exit status."""
    try:
        blob = mean_image(input_db, db.backend_name(backend))
        if output_file is not None:
            log.info("Write to %s", output_file)
            formats.atomic_write_bytes(output_file, blob.SerializeToString())
    except (db.DBError, OSError) as error:
        log.error("%s; nothing was written", error)
        return BAD_INPUT_STATUS
    log_channel_means(blob)
    return 0


def main(argv=None):
    """`compute_image_mean [FLAGS] INPUT_DB [OUTPUT_FILE]`; the exit status."""
    command_line = FLAG_SET.parse_command_line(sys.argv[1:] if argv is None else list(argv))
    if command_line.exit_status is not None:
        return command_line.exit_status
    if len(command_line.positional) not in NUM_ARGS:
        sys.stdout.write(FLAG_SET.usage_text())
        return USAGE_STATUS
    return glog.run_tool(lambda: run(command_line.values["backend"], *command_line.positional))


if __name__ == "__main__":
    sys.exit(main())
