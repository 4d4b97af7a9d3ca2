"""`extract_features`: Datum records of the named blobs, Caffe's keys, commits and log lines, its
exit statuses, and nothing left behind when it fails. The tool logic runs against a stand-in for
sec.caffe.db's Writer; the last test writes a real LMDB when sec.caffe.db is there."""
import importlib
import importlib.util
import sys
import types

import numpy as np
import pytest
import torch

from caffe_tools_helpers import messages, write_tiny_classifier
from sec import caffe
from sec.caffe.tools import extract_features, glog
from sec.proto import caffe_pb2

BATCHES = 3


class FakeWriter:
    """sec.caffe.db.Writer's interface over a dict: `databases[path]` holds the committed records
    once finish() ran; `events` records what happened."""
    databases, events = {}, []

    def __init__(self, path, backend):
        if backend not in ("lmdb", "leveldb"):
            raise ValueError(f"unknown database backend '{backend}'")
        if str(path) in self.databases:
            raise ValueError(f"{backend} database {path} already exists (remove it first)")
        self.path, self.records = str(path), []
        self.events.append(("open", self.path))

    def put_many(self, items):
        self.records.extend(items)
        self.events.append(("commit", self.path, len(items)))

    def finish(self):
        self.databases[self.path] = dict(self.records)
        self.events.append(("finish", self.path))

    def abort(self):
        self.events.append(("abort", self.path))


@pytest.fixture
def fake_db(monkeypatch):
    """sec.caffe.db's Writer replaced by FakeWriter (a module of its own when there is no sec.caffe.db;
    the rest of the real module stays: the data layers use it)."""
    FakeWriter.databases, FakeWriter.events = {}, []
    if importlib.util.find_spec("sec.caffe.db") is not None:
        monkeypatch.setattr(importlib.import_module("sec.caffe.db"), "Writer", FakeWriter)
        return FakeWriter
    module = types.ModuleType("sec.caffe.db")
    module.Writer = FakeWriter
    monkeypatch.setitem(sys.modules, "sec.caffe.db", module)
    monkeypatch.setattr(caffe, "db", module, raising=False)
    return FakeWriter


@pytest.fixture
def tiny(tmp_path):
    paths = write_tiny_classifier(tmp_path, images=4, batch=2)
    torch.manual_seed(2)
    net = caffe.Net(str(paths["net"]), caffe.TEST)
    paths["weights"] = tmp_path / "w.caffemodel"
    net.save(str(paths["weights"]))
    return paths


def run_tool(args, capsys):
    status = extract_features.main([str(a) for a in args])
    return status, messages(capsys.readouterr().err)


def test_records_are_the_blobs_items_in_order(tiny, fake_db, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(extract_features, "COMMIT_EVERY", 4)
    out_data, out_ip = tmp_path / "data_db", tmp_path / "ip_db"
    status, logged = run_tool([tiny["weights"], tiny["net"], "data,ip", f"{out_data},{out_ip}", BATCHES, "lmdb"],
                              capsys)
    assert status == 0
    reference = caffe.Net(str(tiny["net"]), str(tiny["weights"]), caffe.TEST)
    batches = [{k: v.copy() for k, v in reference.forward(blobs=["data", "ip"]).items()} for _ in range(BATCHES)]
    for path, blob, chw in ((out_data, "data", (3, 5, 5)), (out_ip, "ip", (3, 1, 1))):
        records = fake_db.databases[str(path)]
        assert sorted(records) == [f"{i:010d}".encode() for i in range(2 * BATCHES)]
        for index, key in enumerate(sorted(records)):
            datum = caffe_pb2.Datum.FromString(records[key])
            assert (datum.channels, datum.height, datum.width) == chw and not datum.data
            expected = batches[index // 2][blob][index % 2].ravel()
            np.testing.assert_allclose(np.array(datum.float_data, np.float32), expected, rtol=1e-6, atol=1e-6)
    commits = [e[2] for e in fake_db.events if e[0] == "commit" and e[1] == str(out_ip)]
    assert commits == [4, 2]                # every COMMIT_EVERY items, then the rest
    texts = [m for _, m in logged]
    assert texts[0] == "Using CPU" and texts.index(f"Opening dataset {out_data}") < texts.index("Extracting Features")
    assert texts[texts.index("Extracting Features"):] == [
        "Extracting Features", "Extracted features of 4 query images for feature blob data",
        "Extracted features of 4 query images for feature blob ip",
        "Extracted features of 6 query images for feature blob data",
        "Extracted features of 6 query images for feature blob ip", "Successfully extracted the features!"]


def test_usage_and_failed_checks(tiny, fake_db, tmp_path, capsys):
    status, logged = run_tool([tiny["weights"], tiny["net"], "ip"], capsys)
    assert status == 1 and logged[0][1].startswith("This program takes in a trained network")
    base = [tiny["weights"], tiny["net"]]
    status, logged = run_tool(base + ["ip,data", str(tmp_path / "one"), 1, "lmdb"], capsys)
    assert status == glog.FATAL_EXIT_STATUS
    assert logged[-1] == ("F", "Check failed: blob_names.size() == dataset_names.size() (2 vs. 1)  the number "
                               "of blob names and dataset names must be equal")
    status, logged = run_tool(base + ["fc9", str(tmp_path / "one"), 1, "lmdb"], capsys)
    assert status == glog.FATAL_EXIT_STATUS and logged[-1] == (
        "F", f"Check failed: feature_extraction_net->has_blob(blob_names[i]) Unknown feature blob name fc9 in the "
             f"network {tiny['net']}")
    status, logged = run_tool(base + ["ip", str(tmp_path / "one"), 1, "rocksdb"], capsys)
    assert status == glog.FATAL_EXIT_STATUS and "unknown database backend 'rocksdb'" in logged[-1][1]
    status, logged = run_tool([tmp_path / "absent.caffemodel", tiny["net"], "ip", str(tmp_path / "one"), 1, "lmdb"],
                              capsys)
    assert status == glog.FATAL_EXIT_STATUS and [level for level, _ in logged].count("F") == 1
    assert "absent.caffemodel" in logged[-1][1] and "not found" in logged[-1][1]
    assert fake_db.databases == {} and not (tmp_path / "one").exists()


@pytest.mark.skipif("Data" not in __import__("sec.caffe.layers", fromlist=["LAYER_TYPES"]).LAYER_TYPES,
                    reason="the Data layer (the data helper's) is not in this checkout")
def test_an_unreadable_input_database_is_one_line(tiny, fake_db, tmp_path, capsys):
    net = tmp_path / "lmdb_net.prototxt"
    net.write_text(f'''layer {{ name: "data" type: "Data" top: "data" top: "label"
  data_param {{ source: "{tmp_path}/no_such_lmdb" backend: LMDB batch_size: 2 }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param {{ num_output: 3 }} }}''')
    status, logged = run_tool([tiny["weights"], net, "ip", str(tmp_path / "one"), 1, "lmdb"], capsys)
    assert status == glog.FATAL_EXIT_STATUS and [level for level, _ in logged].count("F") == 1
    assert "no_such_lmdb" in logged[-1][1] and fake_db.databases == {}


def test_a_failure_midway_leaves_no_database(tiny, fake_db, tmp_path, capsys):
    (tmp_path / "im2.png").unlink()             # the second batch cannot be read
    first, second = tmp_path / "a_db", tmp_path / "b_db"
    status, logged = run_tool([tiny["weights"], tiny["net"], "ip,data", f"{first},{second}", BATCHES, "lmdb"],
                              capsys)
    assert status == glog.FATAL_EXIT_STATUS and [level for level, _ in logged].count("F") == 1
    assert "im2.png" in logged[-1][1]
    assert fake_db.databases == {}
    assert [e for e in fake_db.events if e[0] == "abort"] == [("abort", str(first)), ("abort", str(second))]


@pytest.mark.skipif(importlib.util.find_spec("sec.caffe.db") is None,
                    reason="sec.caffe.db (the data helper's LMDB/LevelDB module) is not in this checkout")
def test_a_real_lmdb_holds_the_records(tiny, tmp_path, capsys):
    lmdb = pytest.importorskip("lmdb")
    out = tmp_path / "ip_lmdb"
    status, _ = run_tool([tiny["weights"], tiny["net"], "ip", out, 2, "lmdb"], capsys)
    assert status == 0
    env = lmdb.open(str(out), readonly=True, lock=False)
    with env.begin() as txn:
        keys = [key for key, _ in txn.cursor()]
        first = caffe_pb2.Datum.FromString(txn.get(b"0000000000"))
    env.close()
    assert keys == [f"{i:010d}".encode() for i in range(4)] and len(first.float_data) == 3
    status, logged = run_tool([tiny["weights"], tiny["net"], "ip", out, 2, "lmdb"], capsys)
    assert status == glog.FATAL_EXIT_STATUS and "already exists" in logged[-1][1]
