"""convert_imageset and compute_image_mean without Caffe: gflags syntax (sec.caffe.tools.flags), glog
lines (sec.caffe.tools.glog), exit statuses, and bad input that leaves nothing written. Caffe's own
records and mean file are compared in tests/test_caffe_data_reference.py."""
import datetime
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from caffe_tools_helpers import GLOG_LINE
from sec.caffe import db
from sec.caffe.tools import compute_image_mean, convert_imageset
from sec.caffe.tools.flags import FlagError
from sec.proto import caffe_pb2

REPO = Path(__file__).resolve().parents[1]


def test_gflags_syntax():
    parse = convert_imageset.FLAG_SET.parse
    values, positional = parse(["-gray", "a", "--backend", "leveldb", "b", "--resize_height=-3"])
    assert (values["gray"], values["backend"], values["resize_height"], positional) == (True, "leveldb", -3, ["a", "b"])
    assert (values["shuffle"], values["resize_width"], values["encode_type"]) == (False, 0, "")
    assert parse(["--gray", "--nogray", "--", "--resize_height"])[0]["gray"] is False
    assert parse(["--", "--resize_height"])[1] == ["--resize_height"]
    for argv, message in ((["--bogus"], "unknown command line flag 'bogus'"),
                          (["--resize_width=abc"], "illegal value 'abc' specified for int32 flag 'resize_width'"),
                          (["--gray=maybe"], "illegal value 'maybe' specified for bool flag 'gray'"),
                          (["--backend"], "flag '--backend' is missing its argument")):
        with pytest.raises(FlagError, match=message):
            parse(argv)


def write_images(folder, sizes, names=None):
    rng = np.random.default_rng(1)
    names = names or [f"im {k}.png" for k in range(len(sizes))]      # Caffe's lists allow spaces in paths
    for name, (height, width) in zip(names, sizes):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / name)
    (folder / "list.txt").write_text("".join(f"{n} {k}\n" for k, n in enumerate(names)))
    return folder / "list.txt"


def records(path, backend="lmdb"):
    with db.Reader(path, backend) as reader:
        cursor, out = reader.cursor(), []
        while cursor.valid:
            datum = db.parse_datum(cursor.value, "test")
            out.append((cursor.key.decode(), datum.label, db.datum_to_array(datum).shape))
            cursor.next()
        return out


def log_messages(err):
    return [line.split("] ", 1)[1] for line in err.splitlines() if "] " in line]


def test_convert_imageset_writes_keys_labels_and_logs_as_caffe(tmp_path, capsys):
    write_images(tmp_path, [(5, 6), (7, 4), (3, 3)])
    assert convert_imageset.main(["--resize_height", "4", "-resize_width=5", f"{tmp_path}/", str(tmp_path / "list.txt"),
                                  str(tmp_path / "db")]) == 0
    assert records(tmp_path / "db") == [(f"{k:08d}_im {k}.png", k, (3, 4, 5)) for k in range(3)]
    assert log_messages(capsys.readouterr().err) == ["A total of 3 images.", f"Opened lmdb {tmp_path}/db",
                                                     "Processed 3 files."]


def test_convert_imageset_shuffle_and_gray(tmp_path):
    write_images(tmp_path, [(5, 6)] * 6)
    args = ["--shuffle", "--gray", "--backend=leveldb", f"{tmp_path}/", str(tmp_path / "list.txt")]
    assert convert_imageset.main(args + [str(tmp_path / "db")]) == 0
    found = records(tmp_path / "db", "leveldb")
    assert sorted(label for _, label, _ in found) == list(range(6))
    assert {shape for _, _, shape in found} == {(1, 5, 6)}
    assert [key[:8] for key, _, _ in found] == [f"{k:08d}" for k in range(6)]


def no_leftovers(folder, names):
    return sorted(p.name for p in folder.iterdir()) == sorted(names)


@pytest.mark.parametrize("prepare, message", [
    (lambda d: (d / "list.txt").unlink(), "list file not found: .*list.txt"),
    (lambda d: (d / "im 1.png").write_bytes(b"not a png"), r"list.txt:2: could not open or find file .*im 1.png"),
    (lambda d: (d / "list.txt").write_text("im 0.png zero\n"), r"list.txt:1: need '<image path> <integer label>'"),
    (lambda d: (d / "db").mkdir(), "lmdb database .*db already exists"),
])
def test_convert_imageset_bad_input_is_one_line_and_nothing_written(tmp_path, capsys, prepare, message):
    write_images(tmp_path, [(5, 6), (5, 6)])
    prepare(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert convert_imageset.main([f"{tmp_path}/", str(tmp_path / "list.txt"), str(tmp_path / "db")]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("E")]
    assert len(errors) == 1 and re.search(message, errors[0]), errors
    assert no_leftovers(tmp_path, before)


def test_convert_imageset_check_size_refuses_a_second_size(tmp_path, capsys):
    write_images(tmp_path, [(5, 6), (6, 6)])
    before = sorted(p.name for p in tmp_path.iterdir())
    assert convert_imageset.main(["--check_size", f"{tmp_path}/", str(tmp_path / "list.txt"), str(tmp_path / "d")]) == 1
    assert "incorrect data field size 108 (the first image has 90" in capsys.readouterr().err
    assert no_leftovers(tmp_path, before)


def test_tools_usage_and_bad_flags_exit_1(capsys):
    assert convert_imageset.main(["a", "b"]) == 1
    usage = capsys.readouterr().out
    assert usage.startswith("convert_imageset: Convert a set of images to the leveldb/lmdb\n")
    assert "    convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME\n" in usage
    # gflags' layout of a flag too long for one line (tests/test_caffe_data_live.py compares it all)
    assert ("    -check_size (When this option is on, check that all the datum have the same\n"
            "      size) type: bool default: false\n") in usage
    assert convert_imageset.main(["--help"]) == 1 and capsys.readouterr().out == usage
    assert compute_image_mean.main(["--bogus", "x"]) == 1
    assert capsys.readouterr().err == "ERROR: unknown command line flag 'bogus'\n"
    assert compute_image_mean.main([]) == 1
    assert compute_image_mean.main(["a", "b", "c"]) == 1
    assert '-backend (The backend {leveldb, lmdb} containing the images) type: string\n' in capsys.readouterr().out


def test_log_lines_are_glogs_of_caffes_time(tmp_path, capsys, monkeypatch):
    """The date is month and day (no year), as Caffe's tools/extra/extract_seconds.py reads it;
    file:line is the tool's; GLOG_minloglevel hides lower levels, also of a logger given its own
    level (sec.train sets "sec" to INFO for a run's train.log)."""
    write_images(tmp_path, [(5, 6)])
    assert convert_imageset.main([f"{tmp_path}/", str(tmp_path / "list.txt"), str(tmp_path / "db")]) == 0
    lines = capsys.readouterr().err.splitlines()
    found = [GLOG_LINE.match(line) for line in lines]
    assert all(found) and len(found) == 3, lines
    today = datetime.date.today()
    assert {m.group(2) for m in found} == {f"{today.month:02d}{today.day:02d}"}
    assert {(m.group(1), m.group(5)) for m in found} == {("I", "convert_imageset.py")}
    monkeypatch.setenv("GLOG_minloglevel", "1")
    sec_logger = logging.getLogger("sec")
    level = sec_logger.level
    sec_logger.setLevel(logging.INFO)
    try:
        assert compute_image_mean.main([str(tmp_path / "db"), str(tmp_path / "db")]) == 1
    finally:
        sec_logger.setLevel(level)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and GLOG_LINE.match(lines[0]).group(1) == "E" and "nothing was written" in lines[0]


def test_compute_image_mean_by_hand_and_bad_databases(tmp_path, capsys):
    values = [np.full((2, 3, 4), v, np.uint8) for v in (1, 2, 6)]
    with db.Writer(tmp_path / "db", "lmdb") as writer:
        writer.put_many([(f"{k}".encode(), db.array_to_datum(v, 0).SerializeToString()) for k, v in enumerate(values)])
        writer.finish()
    assert compute_image_mean.main([str(tmp_path / "db"), str(tmp_path / "mean.binaryproto")]) == 0
    blob = caffe_pb2.BlobProto.FromString((tmp_path / "mean.binaryproto").read_bytes())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 2, 3, 4)
    np.testing.assert_array_equal(np.asarray(blob.data, np.float32), np.float32(3))
    assert log_messages(capsys.readouterr().err)[-3:] == ["Number of channels: 2", "mean_value channel [0]: 3",
                                                          "mean_value channel [1]: 3"]
    with db.Writer(tmp_path / "mixed", "lmdb") as writer:
        writer.put_many([(b"a", db.array_to_datum(values[0]).SerializeToString()),
                         (b"b", db.array_to_datum(np.zeros((2, 3, 5), np.uint8)).SerializeToString())])
        writer.finish()
    for path, message in ((tmp_path / "nowhere", "lmdb database not found"),
                          (tmp_path / "mixed", "key 'b': incorrect data field size 30 .*first record has 24")):
        assert compute_image_mean.main([str(path), str(tmp_path / "out.binaryproto")]) == 1
        assert re.search(message, capsys.readouterr().err)
        assert not (tmp_path / "out.binaryproto").exists()


def test_tools_run_as_modules(tmp_path):
    write_images(tmp_path, [(5, 6)])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "sec.caffe.tools.convert_imageset", f"{tmp_path}/",
                          str(tmp_path / "list.txt"), str(tmp_path / "db")], env=env, capture_output=True, text=True)
    assert run.returncode == 0 and "Processed 1 files." in run.stderr
    run = subprocess.run([sys.executable, "-m", "sec.caffe.tools.compute_image_mean", str(tmp_path / "db")],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0 and "mean_value channel [2]" in run.stderr
