"""convert_imageset: a list of images and labels into an LMDB / LevelDB of Datum records.

    python -m sec.caffe.tools.convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME

Caffe's tools/convert_imageset.cpp, with its flags (--gray --shuffle --backend --resize_width
--resize_height --check_size --encoded --encode_type; gflags' syntax, usage text and statuses from
sec.caffe.tools.flags) and log lines (glog's, from sec.caffe.tools.glog). LISTFILE holds
`<path> <label>` per line (the path may hold spaces: the label follows the last space); each image is
ROOTFOLDER + path (concatenated, as Caffe), read with OpenCV (colour BGR, or grey with --gray),
resized (cv::resize INTER_LINEAR) when both resize flags are > 0, and stored under the key
`%08d_<path>` (line index after shuffling) as a raw Datum (C x H x W bytes) or, with --encoded /
--encode_type, the image file's own bytes (when no re-encoding is needed) or its cv::imencode.

Differences from Caffe, on purpose (one line on stderr, exit status 1, nothing written): a missing
list file (Caffe writes an empty database), an image that cannot be read (Caffe logs it and skips
it), a label that is not an integer (Caffe's atoi reads 0), an existing DB_NAME and a size mismatch
under --check_size (Caffe aborts with status 134). Blank lines are skipped. --shuffle draws its
order from a fresh random seed each run, as Caffe's unseeded generator does.
"""
import os
import sys

from sec.caffe import db
from sec.caffe.caffe_rng import CaffeRNG
from sec.caffe.tools import glog
from sec.caffe.tools.flags import Flag, FlagSet
from sec.proto import caffe_pb2

log = glog.log
USAGE = ("Convert a set of images to the leveldb/lmdb\nformat used as input for Caffe.\nUsage:\n"
         "    convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME\n"
         "The ImageNet dataset for the training demo is at\n    http://www.image-net.org/download-images\n")
FLAGS = (
    Flag("gray", "bool", False, "When this option is on, treat images as grayscale ones"),
    Flag("shuffle", "bool", False, "Randomly shuffle the order of images and their labels"),
    Flag("backend", "string", "lmdb", "The backend {lmdb, leveldb} for storing the result"),
    Flag("resize_width", "int32", 0, "Width images are resized to"),
    Flag("resize_height", "int32", 0, "Height images are resized to"),
    Flag("check_size", "bool", False, "When this option is on, check that all the datum have the same size"),
    Flag("encoded", "bool", False, "When this option is on, the encoded image will be save in datum"),
    Flag("encode_type", "string", "", "Optional: What type should we encode the image as ('png','jpg',...)."),
)
FLAG_SET = FlagSet("convert_imageset", USAGE, FLAGS, "sec/caffe/tools/convert_imageset.py")
NUM_ARGS = 3             # ROOTFOLDER/ LISTFILE DB_NAME (Caffe ignores any more)
USAGE_STATUS = 1         # Caffe's status after the usage message
BAD_INPUT_STATUS = 1     # this project's, for input refused before anything is written
COMMIT_EVERY = 1000      # records per transaction, and per "Processed N files." line
KEY_DIGITS = 8


class ConvertError(Exception):
    """Bad input: the message is the one line the tool prints before exiting with status 1."""


def read_list(path):
    """[(path, label, line number)] of LISTFILE: the label follows the last space of the line."""
    if not os.path.isfile(path):
        raise ConvertError(f"list file not found: {path}")
    entries = []
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        for line_no, line in enumerate(handle, start=1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            image, space, label = line.rpartition(" ")
            try:
                entries.append((image, int(label), line_no))
            except ValueError:
                raise ConvertError(f"{path}:{line_no}: need '<image path> <integer label>', got {line!r}") from None
            if not space:
                raise ConvertError(f"{path}:{line_no}: need '<image path> <integer label>', got {line!r}")
    return entries


def matches_extension(filename, encoding):
    """Caffe's matchExt: the file's extension is the encoding (jpeg counts as jpg), case-blind."""
    ext = filename.rsplit(".", 1)[-1].lower()
    encoding = encoding.lower()
    return ext == encoding or (encoding == "jpg" and ext == "jpeg")


def image_to_datum(filename, label, height, width, is_color, encoding):
    """Caffe's ReadImageToDatum; None when OpenCV cannot read the file."""
    import cv2  # here: importing OpenCV takes about a second
    image = cv2.imread(filename, cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE)
    if image is None:
        return None
    if height > 0 and width > 0:
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    if not encoding:
        return db.image_to_datum(image, label)
    datum = caffe_pb2.Datum(label=label, encoded=True)
    if (image.ndim == 3 and image.shape[2] == 3) == is_color and not height and not width \
            and matches_extension(filename, encoding):
        with open(filename, "rb") as handle:
            datum.data = handle.read()
        return datum
    ok, buffer = cv2.imencode("." + encoding, image)
    if not ok:
        raise ConvertError(f"{filename}: OpenCV cannot encode it as '{encoding}'")
    datum.data = buffer.tobytes()
    return datum


def convert(values, root, list_file, db_name):
    """Write the data set; returns the number of records."""
    is_color, encode_type = not values["gray"], values["encode_type"]
    encoded = values["encoded"] or bool(encode_type)
    entries = read_list(list_file)
    if values["shuffle"]:
        log.info("Shuffling data")
        CaffeRNG(int.from_bytes(os.urandom(4), "little")).shuffle(entries)
    log.info("A total of %d images.", len(entries))
    if encode_type and not values["encoded"]:
        log.info("encode_type specified, assuming encoded=true.")
    height, width = max(0, values["resize_height"]), max(0, values["resize_width"])
    try:
        writer = db.Writer(db_name, values["backend"])
    except db.DBError as error:
        raise ConvertError(str(error)) from None
    log.info("Opened %s %s", writer.backend, db_name)
    with writer:
        pending, count, data_size = [], 0, None
        for line_id, (image, label, line_no) in enumerate(entries):
            encoding = encode_type
            if encoded and not encoding:
                if "." not in image:
                    raise ConvertError(f"{list_file}:{line_no}: failed to guess the encoding of '{image}'")
                encoding = image.rsplit(".", 1)[1].lower()
            datum = image_to_datum(root + image, label, height, width, is_color, encoding)
            if datum is None:
                raise ConvertError(f"{list_file}:{line_no}: could not open or find file {root + image}")
            if values["check_size"]:
                if data_size is None:
                    data_size = datum.channels * datum.height * datum.width
                elif len(datum.data) != data_size:
                    raise ConvertError(f"{list_file}:{line_no}: {root + image}: incorrect data field size "
                                       f"{len(datum.data)} (the first image has {data_size}; --check_size)")
            key = f"{line_id:0{KEY_DIGITS}d}_{image}".encode("utf-8", "surrogateescape")
            pending.append((key, datum.SerializeToString()))
            count += 1
            if count % COMMIT_EVERY == 0:
                writer.put_many(pending)
                pending = []
                log.info("Processed %d files.", count)
        if count % COMMIT_EVERY != 0:
            writer.put_many(pending)
            log.info("Processed %d files.", count)
        writer.finish()
    return count


def run(values, root, list_file, db_name):
    """convert() with its refusals as one E line and BAD_INPUT_STATUS; the exit status."""
    try:
        convert(values, root, list_file, db_name)
    except (ConvertError, db.DBError) as error:
        log.error("%s; nothing was written", error)
        return BAD_INPUT_STATUS
    return 0


def main(argv=None):
    """`convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME`; the exit status."""
    command_line = FLAG_SET.parse_command_line(sys.argv[1:] if argv is None else list(argv))
    if command_line.exit_status is not None:
        return command_line.exit_status
    if len(command_line.positional) < NUM_ARGS:
        sys.stdout.write(FLAG_SET.usage_text())
        return USAGE_STATUS
    return glog.run_tool(lambda: run(command_line.values, *command_line.positional[:NUM_ARGS]))


if __name__ == "__main__":
    sys.exit(main())
