"""The data layers without Caffe: hand-computed transforms, Caffe's generator, cursor wrap-around,
sharding, exact resume, and bad input (one clear error naming the file or layer, never a hang).
What the real Caffe produces is in tests/test_caffe_data_reference.py."""
import json

import numpy as np
import pytest
import torch

from sec import caffe
from sec.caffe import db
from sec.caffe.caffe_rng import CaffeRNG, DataLayerSeeds
from sec.caffe.data_sources import DatumSource
from sec.caffe.layers.base import NetError
from sec.caffe.prefetch import DataError
from sec.caffe.transformer import DataTransformer, Draw
from sec.proto import caffe_pb2

SHAPE = (3, 6, 7)


def images(count, shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(count)]


def make_db(path, arrays, backend="lmdb", labels=None):
    labels = range(len(arrays)) if labels is None else labels
    with db.Writer(path, backend) as writer:
        writer.put_many([(f"{i:08d}".encode(), db.array_to_datum(a, label).SerializeToString())
                         for i, (a, label) in enumerate(zip(arrays, labels))])
        writer.finish()
    return path


def data_net(tmp_path, source, batch=2, transform="", phase=caffe.TEST, backend="LMDB", extra="", seed=0,
             name="net"):
    text = (f'layer {{ name: "d" type: "Data" top: "data" top: "label" transform_param {{ {transform} }} '
            f'data_param {{ source: "{source}" backend: {backend} batch_size: {batch} {extra} }} }}\n')
    path = tmp_path / f"{name}.prototxt"
    path.write_text(text)
    torch.manual_seed(seed)
    return caffe.Net(str(path), phase)


# ---------------------------------------------------------------- Caffe's generator and transformer

def test_caffe_rng_is_boosts_mt19937():
    # 3499211612: the first output of the reference mt19937 (seed 5489, C++11 [rand.predef]);
    # the uniform_int draws were printed by boost 1.74's uniform_int<long>(0, i) on mt19937(5).
    assert CaffeRNG(5489).raw() == 3499211612
    rng = CaffeRNG(5)
    assert [rng.uniform_int(0, i) for i in range(9, 0, -1)] == [2, 0, 6, 5, 1, 1, 3, 2, 0]
    rng, order = CaffeRNG(5), list(range(10))
    rng.shuffle(order)     # Fisher-Yates from the back with those draws
    expected = list(range(10))
    for i, j in zip(range(9, 0, -1), [2, 0, 6, 5, 1, 1, 3, 2, 0]):
        expected[i], expected[j] = expected[j], expected[i]
    assert order == expected


def test_caffe_rng_state_round_trips_through_json():
    rng = CaffeRNG(3)
    rng.raw()
    state = json.loads(json.dumps(rng.state_dict()))
    ahead = [rng.raw() for _ in range(700)]    # past a regeneration of the 624 words
    rng.load_state_dict(state)
    assert [rng.raw() for _ in range(700)] == ahead


def transformer(phase=caffe.TEST, seed=None, **fields):
    t = DataTransformer(caffe_pb2.TransformationParameter(**fields), phase)
    return t.init_rand(DataLayerSeeds(seed)) if seed is not None else t


def test_transform_crops_subtracts_scales_and_mirrors_by_hand():
    image = np.arange(2 * 4 * 5, dtype=np.uint8).reshape(2, 4, 5)
    t = transformer(crop_size=3, mean_value=[1, 2], scale=0.5)
    out = t.apply(image, Draw(mirror=True, h_off=1, w_off=2))
    expected = (image[:, 1:4, 2:5].astype(np.float32) - np.array([1, 2], np.float32)[:, None, None]) * 0.5
    np.testing.assert_array_equal(out, expected[:, :, ::-1])
    assert t.draw(4, 5) == Draw(False, 0, 1)          # TEST: the centre crop, rounded down


def test_mean_file_is_taken_at_the_source_position(tmp_path):
    mean = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5) / 7
    blob = caffe_pb2.BlobProto(num=1, channels=2, height=4, width=5)
    blob.data.extend(mean.ravel().tolist())
    (tmp_path / "mean.binaryproto").write_bytes(blob.SerializeToString())
    t = transformer(crop_size=2, mean_file=str(tmp_path / "mean.binaryproto"))
    image = np.full((2, 4, 5), 9, np.uint8)
    out = t.apply(image, Draw(True, 2, 1))
    np.testing.assert_array_equal(out, (9 - mean[:, 2:4, 1:3])[:, :, ::-1])
    with pytest.raises(ValueError, match="mean_file is 2x4x5 .* the image 2x4x6"):
        t.output_shape(2, 4, 6)


def test_train_draws_mirror_then_offsets_as_caffe():
    t = transformer(caffe.TRAIN, seed=9, crop_size=3, mirror=True)
    seed = CaffeRNG(9).raw()
    rng = CaffeRNG(seed)
    expected = Draw(bool(rng.raw() % 2), rng.raw() % (6 - 3 + 1), rng.raw() % (7 - 3 + 1))
    assert t.draw(6, 7) == expected


@pytest.mark.parametrize("fields, message", [
    (dict(mean_value=[1], mean_file="m.binaryproto"), "mean_file and mean_value cannot both be set"),
    (dict(force_color=True, force_gray=True), "force_color and force_gray cannot both be set"),
])
def test_transformer_refuses_what_caffe_refuses(fields, message):
    with pytest.raises(ValueError, match=message):
        transformer(**fields)


# ---------------------------------------------------------------- Data

def test_data_loops_over_the_database_and_leveldb_reads_the_same(tmp_path):
    arrays = images(5)
    lmdb_net = data_net(tmp_path, make_db(tmp_path / "a", arrays), batch=2)
    level_net = data_net(tmp_path, make_db(tmp_path / "b", arrays, "leveldb"), batch=2, backend="LEVELDB",
                         name="level")
    order = []
    for _ in range(4):
        out, other = lmdb_net.run(), level_net.run()
        np.testing.assert_array_equal(out["data"].numpy(), other["data"].numpy())
        order += out["label"].int().tolist()
        for k, label in enumerate(out["label"].int().tolist()):
            np.testing.assert_array_equal(out["data"][k].numpy(), arrays[label])
    assert order == [0, 1, 2, 3, 4, 0, 1, 2]       # Caffe's cursor starts again after the last record


def test_two_nets_read_one_database_at_once(tmp_path):
    source = make_db(tmp_path / "a", images(3), "leveldb")     # LevelDB locks its folder once per process
    train = data_net(tmp_path, source, backend="LEVELDB", phase=caffe.TRAIN, name="train")
    test = data_net(tmp_path, source, backend="LEVELDB", name="test")
    assert train.run()["label"].tolist() == test.run()["label"].tolist() == [0.0, 1.0]


def test_sharding_follows_caffes_skip(tmp_path):
    source = make_db(tmp_path / "a", images(5))
    rank1 = DatumSource(source, "lmdb", 3, transformer(), caffe.TRAIN, rank=1, world=2)
    assert rank1.next_batch()[1].tolist() == [1, 3, 0]     # offsets 1, 3, 5 (wrapped: record 0)
    test = DatumSource(source, "lmdb", 3, transformer(), caffe.TEST, rank=1, world=2)
    assert test.next_batch()[1].tolist() == [0, 1, 2]      # TEST nets read everything


@pytest.mark.parametrize("transform", ["", "crop_size: 4 mirror: true"])
def test_data_resumes_exactly_from_state_dict(tmp_path, transform):
    source = make_db(tmp_path / "a", images(5))
    uninterrupted = data_net(tmp_path, source, transform=transform, phase=caffe.TRAIN, seed=4, name="u")
    first = [uninterrupted.run()["data"].clone() for _ in range(7)]
    stopped = data_net(tmp_path, source, transform=transform, phase=caffe.TRAIN, seed=4, name="s")
    for _ in range(3):
        stopped.run()
    state = json.loads(json.dumps(stopped.data_layers()[0].state_dict()))
    resumed = data_net(tmp_path, source, transform=transform, phase=caffe.TRAIN, seed=99, name="r")
    resumed.run()                                   # reading ahead before loading must not matter
    resumed.data_layers()[0].load_state_dict(state)
    for expected in first[3:]:
        np.testing.assert_array_equal(resumed.run()["data"].numpy(), expected.numpy())


def test_prefetch_thread_stops_with_close_and_restarts_where_it_was(tmp_path):
    net = data_net(tmp_path, make_db(tmp_path / "a", images(5)), extra="prefetch: 2")
    source = net.data_layers()[0]
    assert net.run()["label"].tolist() == [0, 1]
    thread = source._thread
    source.close()
    assert not thread.is_alive()
    assert net.run()["label"].tolist() == [2, 3]


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "lmdb database not found: .*missing"),
    (lambda p: p.mkdir(), "cannot open lmdb database .*missing"),
    (lambda p: (p.mkdir(), (p / "data.mdb").write_bytes(b"not an lmdb" * 500)), "cannot open lmdb database"),
])
def test_missing_or_corrupt_database_fails_at_build_naming_it(tmp_path, setup, message):
    setup(tmp_path / "missing")
    with pytest.raises(NetError, match=r"net\.prototxt:1: layer 'd' \(type Data\): DBError: " + message):
        data_net(tmp_path, tmp_path / "missing")


def test_empty_database_and_non_datum_record_fail_at_build(tmp_path):
    make_db(tmp_path / "empty", [])
    with pytest.raises(NetError, match="database .*empty is empty"):
        data_net(tmp_path, tmp_path / "empty")
    with db.Writer(tmp_path / "junk", "lmdb") as writer:
        writer.put_many([(b"k1", b"\xff\xff\xff garbage")])
        writer.finish()
    with pytest.raises(NetError, match="junk, key 'k1': not a Caffe Datum"):
        data_net(tmp_path, tmp_path / "junk")


def test_a_bad_record_later_is_raised_at_forward_every_time_without_hanging(tmp_path):
    arrays = images(3) + images(1, (3, 5, 7))
    net = data_net(tmp_path, make_db(tmp_path / "a", arrays), batch=2)
    net.run()
    for _ in range(2):
        with pytest.raises(DataError, match=r"layer 'd' \(Data\): .*key '00000003': record is 3x5x7 .* 3x6x7"):
            net.run()


@pytest.mark.parametrize("param, message", [
    ("batch_size: 0 backend: LMDB", "data_param.batch_size must be > 0"),
    ("batch_size: 2 prefetch: 0 backend: LMDB", "data_param.prefetch must be >= 1"),
    ("batch_size: 2", "cannot open leveldb database"),    # Caffe's default backend is LEVELDB
])
def test_data_parameters_out_of_range_fail_at_build(tmp_path, param, message):
    source = make_db(tmp_path / "a", images(2))
    (tmp_path / "net.prototxt").write_text(
        f'layer {{ name: "d" type: "Data" top: "data" data_param {{ source: "{source}" {param} }} }}\n')
    with pytest.raises(NetError, match=message):
        caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)


def test_crop_larger_than_the_records_fails_at_build(tmp_path):
    with pytest.raises(NetError, match="image of 6 x 7 is smaller than crop_size 8"):
        data_net(tmp_path, make_db(tmp_path / "a", images(2)), transform="crop_size: 8")


def test_float_data_records_are_transformed_as_floats(tmp_path):
    values = np.linspace(-2, 3, 2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    make_db(tmp_path / "f", [values.astype(np.float64)])
    out = data_net(tmp_path, tmp_path / "f", batch=1, transform="scale: 2 mean_value: 1").run()
    np.testing.assert_array_equal(out["data"][0].numpy(), (values - np.float32(1)) * np.float32(2))


def test_solver_snapshot_resumes_a_data_net_exactly(tmp_path):
    """A Data layer (random crops and mirrors) in a trained net: 3 + snapshot + restore + 3 iterations
    give the weights of 6 uninterrupted ones (the snapshot sidecar keeps the cursor and generator)."""
    from sec.caffe.solver import SGDSolver
    source = make_db(tmp_path / "a", images(5), labels=[0, 1, 2, 1, 0])
    (tmp_path / "train.prototxt").write_text(
        f'layer {{ name: "d" type: "Data" top: "data" top: "label" transform_param {{ crop_size: 4 mirror: true '
        f'scale: 0.01 }} data_param {{ source: "{source}" backend: LMDB batch_size: 2 }} }}\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 '
        'weight_filler { type: "gaussian" std: 0.1 } } }\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }\n')
    solver_text = (f'net: "{tmp_path}/train.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nmomentum: 0.9\n'
                   f'max_iter: 6\ndisplay: 0\nrandom_seed: 5\nsnapshot_prefix: "{tmp_path}/snap"\n')
    (tmp_path / "solver.prototxt").write_text(solver_text)
    straight = SGDSolver(tmp_path / "solver.prototxt")
    straight.step(6)
    first = SGDSolver(tmp_path / "solver.prototxt")
    first.step(3)
    state = first.snapshot()
    resumed = SGDSolver(tmp_path / "solver.prototxt")
    resumed.restore(state)
    resumed.step(3)
    for a, b in zip(straight.net.learnable_params(), resumed.net.learnable_params()):
        assert torch.equal(a.param, b.param), a.layer


def test_deprecated_data_param_fields_are_ignored_as_caffe_with_a_warning(tmp_path, caplog):
    source = make_db(tmp_path / "a", images(2))
    with caplog.at_level("WARNING", logger="sec.caffe.data"):
        net = data_net(tmp_path, source, extra="crop_size: 3 rand_skip: 5")
    assert net.blobs["data"].shape == (2,) + SHAPE          # not cropped: Caffe 1.0 ignores it too
    assert "data_param.crop_size is ignored" in caplog.text and "data_param.rand_skip is ignored" in caplog.text


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
def test_data_tops_land_on_the_nets_cuda_device(tmp_path):
    source = make_db(tmp_path / "a", images(4))
    on_cpu = data_net(tmp_path, source, transform="crop_size: 4 mirror: true", phase=caffe.TRAIN, seed=2, name="c")
    on_gpu = data_net(tmp_path, source, transform="crop_size: 4 mirror: true", phase=caffe.TRAIN, seed=2,
                      name="g").to("cuda")
    for _ in range(3):
        expected, out = on_cpu.run(), on_gpu.run()
        assert out["data"].device.type == "cuda" and out["label"].device.type == "cuda"
        assert torch.equal(out["data"].cpu(), expected["data"])
