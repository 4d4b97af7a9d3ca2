"""AnnotationLayer and the cue reader: small pickles made here, and the real SEC cues when present."""
import gzip
import pickle

import numpy as np
import pytest
from conftest import shared_file
from test_pylayers_blob import Driver

import pylayers

SMALL_CUES = {
    "3_labels": np.array([7]),
    "3_cues": np.array([[0, 0, 7], [0, 1, 40], [0, 2, 40]]),
    "12_labels": np.array([1, 15]),
    "12_cues": np.array([[15, 1], [10, 20], [30, 5]]),
}


def write_pickle(path, data, compressed):
    opener = gzip.open if compressed else open
    with opener(path, "wb") as handle:
        pickle.dump(data, handle, protocol=2)  # the protocol Python 2 wrote
    return path


def annotation(path, ids, param_extra=""):
    param_str = f"cues: {path}\n{param_extra}"
    driver = Driver(pylayers.AnnotationLayer, [np.asarray(ids, dtype=np.float32)], num_tops=2,
                    param_str=param_str, dtype=np.float32)
    return driver, driver.forward(np.asarray(ids, dtype=np.float32))


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("id_shape", [(2,), (2, 1, 1, 1)])
def test_annotation_layer_on_a_small_pickle(tmp_path, compressed, id_shape):
    path = write_pickle(tmp_path / "cues.pickle", SMALL_CUES, compressed)  # same name either way
    driver, (labels, cues) = annotation(path, np.array([12, 3]).reshape(id_shape))
    assert labels.shape == (2, 1, 1, 21) and cues.shape == (2, 21, 41, 41)
    # only the listed foreground classes: the background column stays 0, as in the original layer
    assert np.flatnonzero(labels[0, 0, 0]).tolist() == [1, 15]
    assert np.flatnonzero(labels[1, 0, 0]).tolist() == [7]
    assert sorted(zip(*np.nonzero(cues[0]))) == [(1, 20, 5), (15, 10, 30)]
    assert sorted(zip(*np.nonzero(cues[1]))) == [(0, 0, 0), (0, 1, 2), (7, 40, 40)]
    assert driver.top[1].num == 2 and driver.top[1].channels == 21


def test_annotation_layer_sizes_from_param_str(tmp_path):
    path = write_pickle(tmp_path / "cues.pkl", {"0_labels": np.array([2]), "0_cues": np.array([[2], [20], [1]])}, False)
    _, (labels, cues) = annotation(path, [0], "num_classes: 3\ncue_size: 21")
    assert labels.shape == (1, 1, 1, 3) and cues.shape == (1, 3, 21, 21)
    assert cues[0, 2, 20, 1] == 1 and cues.sum() == 1


def test_missing_id_names_id_and_file(tmp_path):
    path = write_pickle(tmp_path / "cues.pickle.gz", SMALL_CUES, True)
    with pytest.raises(KeyError, match=f"image id 5: key '5_labels' not found in cue file {path}"):
        annotation(path, [3, 5])


@pytest.mark.parametrize("bad, message", [
    ({"0_labels": np.array([21]), "0_cues": np.zeros((3, 0), int)}, "labels \\[21\\] outside 1..20"),
    ({"0_labels": np.array([1]), "0_cues": np.array([[1], [41], [0]])}, "cue coordinates outside 0..40"),
    ({"0_labels": np.array([1]), "0_cues": np.array([[1, 2]])}, "cues need shape \\(3, K\\)"),
])
def test_invalid_cue_entries_name_id_and_file(tmp_path, bad, message):
    path = write_pickle(tmp_path / "bad.pickle", bad, False)
    with pytest.raises(ValueError, match=f"image id 0 in {path}: {message}"):
        annotation(path, [0])


def test_non_integer_id_and_missing_file(tmp_path):
    path = write_pickle(tmp_path / "cues.pickle", SMALL_CUES, False)
    with pytest.raises(ValueError, match="image id must be an integer, got 3.5"):
        annotation(path, [3.5])
    with pytest.raises(OSError, match="AnnotationLayer.*cannot open cue file .*absent.pickle"):
        annotation(tmp_path / "absent.pickle", [3])
    (tmp_path / "junk.pickle").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="cannot read cue pickle .*junk.pickle"):
        pylayers.load_cues(tmp_path / "junk.pickle")


def _make_array(values):
    return np.array(values)


class _PickledByFunction:
    def __reduce__(self):
        return _make_array, ([7],)


def test_numpy2_module_names_fall_back_to_numpy1s(tmp_path, monkeypatch):
    """A pickle naming numpy._core.<m> (what numpy 2 writes) loads where only numpy.core.<m>
    exists (numpy 1, e.g. Caffe's Python); stood in here by a module registered under both names
    while pickling, then only under numpy.core while loading."""
    import sys
    import types
    names = {"numpy2": "numpy._core._sec_test_only", "numpy1": "numpy.core._sec_test_only"}
    modules = {key: types.ModuleType(name) for key, name in names.items()}
    monkeypatch.setattr(_make_array, "__module__", names["numpy2"])
    monkeypatch.setattr(_make_array, "__qualname__", "make_array")
    for module in modules.values():
        module.make_array = _make_array
        monkeypatch.setitem(sys.modules, module.__name__, module)
    body = pickle.dumps({"0_labels": _PickledByFunction()}, protocol=2)
    assert names["numpy2"].encode() in body
    monkeypatch.delitem(sys.modules, names["numpy2"])
    (tmp_path / "cues.pickle").write_bytes(body)
    assert pylayers.load_cues(tmp_path / "cues.pickle")["0_labels"].tolist() == [7]
    (tmp_path / "other.pickle").write_bytes(body.replace(b"numpy._core.", b"numpy._kore."))
    with pytest.raises(ModuleNotFoundError, match="numpy._kore"):
        pylayers.load_cues(tmp_path / "other.pickle")


@pytest.fixture(scope="module")
def real_cues():
    path = shared_file("localization_cues.pickle.gz")
    ids = [int(line.split()[1]) for line in shared_file("input_list.txt").read_text().splitlines() if line.strip()]
    return path, pylayers.load_cues(path), ids


def test_real_cue_pickle_is_consistent(real_cues):
    """Every training id has labels in 1..20 and cues inside 41 x 41, one class per pixel."""
    path, cues, ids = real_cues
    assert len(ids) == 10582 and len(set(ids)) == 10582
    assert len(cues) == 2 * len(ids)
    for image in ids:
        labels, points = cues[f"{image}_labels"], cues[f"{image}_cues"]
        assert labels.size >= 1 and labels.min() >= 1 and labels.max() <= 20, image
        assert points.shape[0] == 3 and points[0].max() <= 20 and points[0].min() >= 0, image
        assert points[1:].min() >= 0 and points[1:].max() <= 40, image
        pixels = np.unique(points[1] * 41 + points[2])
        assert len(pixels) == len(np.unique(points[0] * 41 * 41 + points[1] * 41 + points[2])), image


def test_annotation_layer_on_real_cues(real_cues):
    """A training batch of 15 through the layer: one-hot seeds that agree with the pickle."""
    path, cues, ids = real_cues
    batch = ids[:15]
    _, (labels, seeds) = annotation(path, batch)
    assert seeds.sum(axis=1).max() == 1  # no pixel carries two classes
    for i, image in enumerate(batch):
        present = set(np.flatnonzero(labels[i, 0, 0]).tolist())
        assert present == set(cues[f"{image}_labels"].tolist())
        assert seeds[i].sum() == cues[f"{image}_cues"].shape[1]
        seeded_classes = set(np.flatnonzero(seeds[i].sum(axis=(1, 2))).tolist())
        assert seeded_classes <= present | {0}
