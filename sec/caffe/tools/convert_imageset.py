"""convert_imageset: a list of images and labels into an LMDB / LevelDB of Datum records.

    python -m sec.caffe.tools.convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME

Caffe's tools/convert_imageset.cpp, with its flags (--gray --shuffle --backend --resize_width
--resize_height --check_size --encoded --encode_type, gflags syntax) and log lines. LISTFILE holds
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
from sec.caffe.tools.data_tool_flags import Flag, glog, parse_or_exit, usage_text
from sec.proto import caffe_pb2

PROGRAM = "convert_imageset"
USAGE = ("Convert a set of images to the leveldb/lmdb\nformat used as input for Caffe.\nUsage:\n"
         "    convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME\n")
FLAGS = {
    "gray": Flag("bool", False, "When this option is on, treat images as grayscale ones"),
    "shuffle": Flag("bool", False, "Randomly shuffle the order of images and their labels"),
    "backend": Flag("string", "lmdb", "The backend {lmdb, leveldb} for storing the result"),
    "resize_width": Flag("int32", 0, "Width images are resized to"),
    "resize_height": Flag("int32", 0, "Height images are resized to"),
    "check_size": Flag("bool", False, "When this option is on, check that all the datum have the same size"),
    "encoded": Flag("bool", False, "When this option is on, the encoded image will be save in datum"),
    "encode_type": Flag("string", "", "Optional: What type should we encode the image as ('png','jpg',...)."),
}
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
        glog(PROGRAM, "I", "Shuffling data")
        CaffeRNG(int.from_bytes(os.urandom(4), "little")).shuffle(entries)
    glog(PROGRAM, "I", f"A total of {len(entries)} images.")
    if encode_type and not values["encoded"]:
        glog(PROGRAM, "I", "encode_type specified, assuming encoded=true.")
    height, width = max(0, values["resize_height"]), max(0, values["resize_width"])
    try:
        writer = db.Writer(db_name, values["backend"])
    except db.DBError as error:
        raise ConvertError(str(error)) from None
    glog(PROGRAM, "I", f"Opened {writer.backend} {db_name}")
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
                glog(PROGRAM, "I", f"Processed {count} files.")
        if count % COMMIT_EVERY != 0:
            writer.put_many(pending)
            glog(PROGRAM, "I", f"Processed {count} files.")
        writer.finish()
    return count


def main(argv=None):
    values, positional = parse_or_exit(PROGRAM, USAGE, FLAGS, argv)
    if len(positional) < 3:
        sys.stdout.write(usage_text(PROGRAM, USAGE, FLAGS))
        return 1
    try:
        convert(values, *positional[:3])
    except (ConvertError, db.DBError) as error:
        glog(PROGRAM, "E", f"{error}; nothing was written")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
