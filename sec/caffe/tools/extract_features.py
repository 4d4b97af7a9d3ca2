"""Caffe's `extract_features` (tools/extract_features.cpp) on the sec.caffe engine.

    extract_features pretrained.caffemodel net.prototxt fc7,fc8 fc7_db,fc8_db 10 lmdb [CPU|GPU] [DEVICE_ID]

Builds the TEST net, copies the weights, runs `num_mini_batches` forwards (the net's data layer
gives the batches) and stores every item of each named blob as a Datum (float_data; channels,
height and width from the blob's legacy 4-D shape) under the key `%010d` of its running index,
in a new LMDB or LevelDB per blob, committed every 1000 items, with Caffe's log lines.

Databases are written by sec.caffe.db's `Writer(path, backend)` (`put_many([(key, value)])` commits,
`finish()` moves the finished database into place, `abort()` removes it): a database that already
exists or an unknown backend is refused before anything runs.

Exit statuses, as Caffe's: 0 done; 1 fewer than six arguments (Caffe's usage text; also more than
eight, which Caffe ignores); 134 (one F line) for a failed check: names that do not pair up, a blob
the net lacks, an unknown backend, a database that already exists, a file that cannot be read.
Unlike Caffe, nothing is left half written: a database is moved into place only when every batch
is stored, and removed when the run fails.
"""
import argparse
import sys

import numpy as np
import torch

from sec.caffe.tools import glog
from sec.proto import caffe_pb2

log = glog.log
NUM_REQUIRED_ARGS = 6
COMMIT_EVERY = 1000
KEY_DIGITS = 10
USAGE = ("This program takes in a trained network and an input data layer, and then extract features of the "
         "input data produced by the net.\n"
         "Usage: extract_features  pretrained_net_param  feature_extraction_proto_file  "
         "extract_feature_blob_name1[,name2,...]  save_feature_dataset_name1[,name2,...]  num_mini_batches  "
         "db_type  [CPU/GPU] [DEVICE_ID=0]\n"
         "Note: you can extract multiple features in one pass by specifying multiple feature blob names and "
         "dataset names separated by ','. The names cannot contain white space characters and the number of "
         "blobs and datasets must be equal.")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ValueError(message)


def build_parser():
    parser = _Parser(prog="extract_features", add_help=False, description=USAGE)
    parser.add_argument("pretrained_net_param", help="the .caffemodel whose weights the net gets")
    parser.add_argument("feature_extraction_proto_file", help="the net prototxt (built in the TEST phase)")
    parser.add_argument("blob_names", help="blob names to extract, separated by ','")
    parser.add_argument("dataset_names", help="one new database per blob, separated by ','")
    parser.add_argument("num_mini_batches", help="how many forward passes (C atoi: non-numbers are 0)")
    parser.add_argument("db_type", help="lmdb or leveldb")
    parser.add_argument("mode", nargs="?", default="CPU", help="GPU to run on CUDA, anything else the CPU")
    parser.add_argument("device_id", nargs="?", default="0", help="the CUDA device (GPU mode; default 0)")
    return parser


def atoi(text):
    """C's atoi: the leading integer of `text` (after spaces), 0 when there is none."""
    text = text.lstrip()
    end = 1 if text[:1] in ("+", "-") else 0
    while end < len(text) and text[end].isdigit():
        end += 1
    digits = text[:end]
    return int(digits) if digits.lstrip("+-") else 0


def legacy_chw(shape):
    """Caffe's Blob channels(), height(), width(): axes 1-3, 1 where the blob has fewer axes."""
    padded = tuple(shape) + (1,) * 4
    return padded[1], padded[2], padded[3]


def _db_module():
    try:
        from sec.caffe import db
    except ImportError as err:
        glog.fatal(f"extract_features needs sec.caffe.db, which cannot be imported: {err}")
    return db


def extract(args):
    """The tool on its parsed arguments; returns the exit status."""
    from sec import caffe
    if args.mode == "GPU":
        log.error("Using GPU")
        device_id = atoi(args.device_id)
        glog.check(device_id >= 0, f"device_id >= 0 ({device_id} vs. 0)")
        log.error("Using Device_id=%d", device_id)
        if not torch.cuda.is_available() or device_id >= torch.cuda.device_count():
            glog.fatal(f"Cannot use GPU {device_id}: torch sees {torch.cuda.device_count()} CUDA device(s)")
        caffe.set_device(device_id)
        caffe.set_mode_gpu()
    else:
        log.error("Using CPU")
        caffe.set_mode_cpu()
    weights, proto, backend = args.pretrained_net_param, args.feature_extraction_proto_file, args.db_type
    net = caffe.Net(proto, caffe.TEST)
    net.copy_from(weights)
    blob_names, dataset_names = args.blob_names.split(","), args.dataset_names.split(",")
    glog.check(len(blob_names) == len(dataset_names),
               f"blob_names.size() == dataset_names.size() ({len(blob_names)} vs. {len(dataset_names)})  "
               "the number of blob names and dataset names must be equal")
    for name in blob_names:
        glog.check(name in net.blobs, f"feature_extraction_net->has_blob(blob_names[i]) Unknown feature blob "
                                      f"name {name} in the network {proto}")
    num_mini_batches = atoi(args.num_mini_batches)
    db = _db_module()
    writers = []
    try:
        for name in dataset_names:
            log.info("Opening dataset %s", name)
            writers.append(db.Writer(name, backend))
        _fill(net, blob_names, writers, num_mini_batches)
        for writer in writers:
            writer.finish()
        writers = []
    finally:
        for writer in writers:
            writer.abort()
    log.error("Successfully extracted the features!")
    return 0


def _fill(net, blob_names, writers, num_mini_batches):
    """Forward `num_mini_batches` times, storing each blob's items into its writer (committed
    every COMMIT_EVERY items and at the end, with Caffe's progress lines)."""
    pending = [[] for _ in blob_names]
    counts = [0] * len(blob_names)
    log.error("Extracting Features")
    for _ in range(num_mini_batches):
        with torch.no_grad():
            outputs = net.run()
        for i, name in enumerate(blob_names):
            blob = outputs[name].detach().cpu().numpy().astype(np.float32)
            channels, height, width = legacy_chw(blob.shape)
            for item in blob.reshape(blob.shape[0], -1):
                datum = caffe_pb2.Datum(channels=channels, height=height, width=width)
                datum.float_data.extend(item.tolist())
                pending[i].append((f"{counts[i]:0{KEY_DIGITS}d}".encode(), datum.SerializeToString()))
                counts[i] += 1
                if counts[i] % COMMIT_EVERY == 0:
                    writers[i].put_many(pending[i])
                    pending[i] = []
                    log.error("Extracted features of %d query images for feature blob %s", counts[i], name)
    for i, name in enumerate(blob_names):
        if pending[i]:
            writers[i].put_many(pending[i])
        log.error("Extracted features of %d query images for feature blob %s", counts[i], name)


def main(argv=None):
    """`extract_features ARGS...` (see the module docstring); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
    except ValueError:
        args = None

    def body():
        if args is None:
            log.error("%s", USAGE)
            return 1
        return extract(args)

    return glog.run_tool(body)


if __name__ == "__main__":
    sys.exit(main())
