"""The data layers and data tools against what the real BVLC Caffe 1.0 wrote (data.json + data.npz).

bench/caffe_reference_data.py ran Caffe on tiny files that the fixture carries; here they are
rebuilt (images, lists, window file, mean file, HDF5 files, and the LMDB / LevelDB data sets from the
records Caffe's convert_imageset wrote) and every case runs in sec.caffe with the same random seed
(torch.manual_seed, which the engine's data layers draw Caffe's seeds from). Tops must be equal
bitwise: the transformations are the same float32 operations, and the random crops, mirrors,
shuffles and windows come from the same mt19937 draws. convert_imageset and compute_image_mean
must write Caffe's records and Caffe's .binaryproto byte for byte.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sec import caffe
from sec.caffe import db
from sec.caffe.tools import compute_image_mean, convert_imageset

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "caffe"
MANIFEST = json.loads((FIXTURES / "data.json").read_text())


@pytest.fixture(scope="module")
def arrays():
    with np.load(FIXTURES / "data.npz") as stored:
        return {key: stored[key] for key in stored.files}


def write_records(path, backend, records, arrays):
    with db.Writer(path, backend) as writer:
        writer.put_many([(key.encode(), arrays[value].tobytes()) for key, value in records])
        writer.finish()


@pytest.fixture(scope="module")
def root(tmp_path_factory, arrays):
    """The folder Caffe read: files, HDF5 files and the data sets, rebuilt from the fixture."""
    import h5py
    folder = tmp_path_factory.mktemp("caffe_data")
    for name, key in MANIFEST["files"].items():
        data = arrays[key].tobytes()
        if name.endswith(".txt"):
            data = data.replace(b"@ROOT@", str(folder).encode())
        (folder / name).write_bytes(data)
    for name, datasets in MANIFEST["h5"].items():
        with h5py.File(folder / name, "w") as handle:
            for dataset, key in datasets.items():
                handle.create_dataset(dataset, data=arrays[key])
    for name, convert in MANIFEST["converts"].items():
        write_records(folder / name, convert["backend"], convert["records"], arrays)
    return folder


def build(root, text, phase, seed, name="net"):
    path = root / f"{name}.prototxt"
    path.write_text(text.replace("@ROOT@", str(root)))
    torch.manual_seed(seed)    # the solver's random_seed; the data layers draw Caffe's seeds from it
    return caffe.Net(str(path), caffe.TRAIN if phase == "TRAIN" else caffe.TEST)


@pytest.mark.parametrize("name", sorted(MANIFEST["cases"]))
def test_data_layer_batches_equal_caffes(root, arrays, name):
    case = MANIFEST["cases"][name]
    net = build(root, case["prototxt"], case["phase"], case["seed"], name)
    for index, expected in enumerate(case["forwards"]):
        out = net.run()
        for top, key in expected.items():
            np.testing.assert_array_equal(out[top].numpy(), arrays[key], err_msg=f"{name}: pass {index}, top {top}")


def test_memory_data_serves_arrays_untransformed_as_caffe(root, arrays):
    spec = MANIFEST["memory"]
    net = build(root, spec["prototxt"], "TEST", 0, "memory")
    layer = net._layers[0].impl
    with pytest.raises(RuntimeError, match="needs data: call reset"):
        net.run()
    layer.reset(arrays[spec["data"]], arrays[spec["labels"]])
    for index, expected in enumerate(spec["forwards"]):
        out = net.run()
        for top, key in expected.items():
            assert tuple(out[top].shape) == arrays[key].shape, f"pass {index}, top {top}"
            np.testing.assert_array_equal(out[top].numpy(), arrays[key], err_msg=f"pass {index}, top {top}")


def test_hdf5_output_writes_caffes_file(root, arrays, tmp_path):
    import h5py
    spec = MANIFEST["output"]
    text = spec["prototxt"].replace("@ROOT@", str(tmp_path))
    net = build(tmp_path, text, "TEST", 0, "output")
    assert (tmp_path / "out.h5").is_file()     # created when the net is built, as Caffe does
    net.run({name: torch.from_numpy(arrays[key]) for name, key in spec["inputs"].items()})
    with h5py.File(tmp_path / "out.h5", "r") as handle:
        assert sorted(handle) == sorted(spec["written"])
        for name, expected in spec["written"].items():
            assert str(handle[name].dtype) == expected["dtype"]
            np.testing.assert_array_equal(handle[name][()], arrays[expected["key"]])
    with pytest.raises(RuntimeError, match="at one forward pass only"):
        net.run({name: torch.from_numpy(arrays[key]) for name, key in spec["inputs"].items()})


def read_records(path, backend):
    with db.Reader(path, backend) as reader:
        cursor, records = reader.cursor(), []
        while cursor.valid:
            records.append((cursor.key, cursor.value))
            cursor.next()
        return records


@pytest.mark.parametrize("name", sorted(MANIFEST["converts"]))
def test_convert_imageset_writes_caffes_records(root, arrays, tmp_path, name):
    spec = MANIFEST["converts"][name]
    out = tmp_path / name
    assert convert_imageset.main([*spec["flags"], f"{root}/", str(root / spec["list"]), str(out)]) == 0
    expected = [(key.encode(), arrays[value].tobytes()) for key, value in spec["records"]]
    assert read_records(out, spec["backend"]) == expected


def test_compute_image_mean_writes_caffes_binaryproto(root, arrays, tmp_path, capsys):
    spec = MANIFEST["mean"]
    out = tmp_path / "mean.binaryproto"
    assert compute_image_mean.main([str(root / spec["db"]), str(out)]) == 0
    assert out.read_bytes() == arrays[MANIFEST["files"][spec["file"]]].tobytes()
    logged = [line.split("] ", 1)[1] for line in capsys.readouterr().err.splitlines()]
    assert logged[-len(spec["log"]):] == spec["log"]
