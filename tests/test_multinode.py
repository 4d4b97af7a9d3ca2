"""Multi-node data-parallel training: two torchrun launchers on localhost as two nodes.

`python -m torch.distributed.run --nnodes 2 --nproc_per_node 1` with the c10d rendezvous, one
process per node on the gloo backend, runs training/train.py for a few iterations on a tiny
synthetic set; the weights rank 0 writes must equal those of one process trained on the same
global batch. Each node has its own run folder, as nodes without a shared file system have.

For the two runs to see the same global batches and the same function, the net is the synthetic
SEC recipe (models/synthetic/train.prototxt: its layers, three losses and the dense CRF) with three
changes a data-parallel run cannot match on purpose: the list is read in order (each rank reads
its shard of the list, shuffled by its own seed when shuffling), and no Dropout (each rank draws
its own masks) and no BatchNorm (statistics of the rank's share of the batch, as in Caffe's
multi-GPU training). With the tensorboard package, --tensorboard is checked to log on rank 0 only.
"""
import csv
import importlib.util
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from sec.caffe import formats

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "training" / "train.py"
IMAGE_SIDE, NET_SIDE, CUE_SIDE = 80, 81, 11
TRAIN_IMAGES, GLOBAL_BATCH, ITERATIONS = 8, 4, 3
# Relative per blob. All-reduce adds the two halves of the batch in another order than one process
# sums it: measured 3e-7 or less for every blob but conv1_1's bias (1.1e-5; a sum over every pixel
# of the batch that nearly cancels). Wrong shares or batches differ by the size of an update.
WEIGHT_TOL = 1e-4
MIN_UPDATE = 1e-3          # every learnable blob moved at least this much (relative) in the 3 iterations
LOSS_TOL = 1e-5
RUN_TIMEOUT_S = 300
WITH_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


def data_parallel_net(dataset, path):
    """models/synthetic/train.prototxt for the tiny set: in-order list, no Dropout, no BatchNorm."""
    net = formats.read_net_prototxt(str(REPO / "models" / "synthetic" / "train.prototxt"))
    kept = [layer for layer in net.layer if layer.type not in ("Dropout", "BatchNorm")]
    for layer in kept:
        if layer.type == "ImageData":
            p = layer.image_data_param
            p.shuffle, p.new_height, p.new_width = False, NET_SIDE, NET_SIDE
        if layer.type == "Python" and layer.python_param.layer == "AnnotationLayer":
            layer.python_param.param_str = (f'{{"cues": "{dataset / "cues.pickle"}", "num_classes": 7, '
                                            f'"cue_size": {CUE_SIDE}}}')
    del net.layer[:]
    net.layer.extend(kept)
    path.write_text(text_format.MessageToString(net))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(folder, the train.py flags both runs share): tiny set, net, initial weights."""
    import torch

    from sec import caffe, synthetic
    folder = tmp_path_factory.mktemp("multinode")
    dataset = folder / "set"
    synthetic.generate(dataset, TRAIN_IMAGES, 2, seed=0, image_size=IMAGE_SIDE, cue_size=CUE_SIDE)
    net_path = data_parallel_net(dataset, folder / "train.prototxt")
    torch.manual_seed(0)
    caffe.Net(str(net_path), caffe.TRAIN).save(str(folder / "init.caffemodel"))
    flags = ["--list", dataset / "train.txt", "--synthetic-dir", dataset, "--cues", dataset / "cues.pickle",
             "--weights", folder / "init.caffemodel", "--net", net_path, "--iters", ITERATIONS,
             "--batch", GLOBAL_BATCH, "--no-eval", "--device", "cpu", "--threads", 1]
    return folder, [str(f) for f in flags]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_command(node, port, flags, runs):
    """torchrun for one of two nodes; node 0 hosts the rendezvous store. With the tensorboard
    package, each node is given its own --tensorboard folder (rank 0 alone must write there)."""
    if WITH_TENSORBOARD:
        flags = [*flags, "--tensorboard", str(runs.parent / f"tb{node}")]
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
            "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "sec-multinode-test",
            "--rdzv_conf", f"is_host={1 if node == 0 else 0}", "--max_restarts", "0",
            str(TRAIN), *flags, "--runs", str(runs)]


def weights(path):
    return {layer.name: [formats.blob_to_array(b) for b in layer.blobs]
            for layer in formats.read_caffemodel(str(path)).layer if layer.blobs}


def losses(run_dir):
    with open(run_dir / "losses.csv", newline="") as handle:
        return [{k: float(v) for k, v in row.items() if k.startswith("loss")} for row in csv.DictReader(handle)]


def relative(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.slow
def test_two_nodes_train_the_weights_of_one_process_with_the_same_global_batch(setup):
    folder, flags = setup
    single = subprocess.run([sys.executable, str(TRAIN), *flags, "--runs", str(folder / "single")],
                            capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert single.returncode == 0, single.stderr[-3000:]
    port = free_port()
    nodes = [subprocess.Popen(node_command(node, port, flags, folder / f"node{node}"), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for node in (0, 1)]
    outputs = []
    try:
        for process in nodes:
            outputs.append(process.communicate(timeout=RUN_TIMEOUT_S)[0])
    finally:
        for process in nodes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for node, (process, output) in enumerate(zip(nodes, outputs)):
        assert process.returncode == 0, f"node {node}:\n{output[-3000:]}"
    # each node trained one rank, on its own shard of the list, in its own run folder
    for node in (0, 1):
        run = folder / f"node{node}" / "synthetic"
        assert (run / f"list_rank{node}.txt").is_file() and not (run / f"list_rank{1 - node}.txt").exists()
    assert (folder / "node1" / "synthetic" / "train_rank1.log").is_file()
    if WITH_TENSORBOARD:
        assert list((folder / "tb0" / "synthetic").glob("events.out.tfevents.*"))
        assert not (folder / "tb1").exists()
    name = f"synthetic_iter_{ITERATIONS}.caffemodel"
    assert not (folder / "node1" / "synthetic" / name).exists()     # rank 0 alone snapshots
    want = weights(folder / "single" / "synthetic" / name)
    got = weights(folder / "node0" / "synthetic" / name)
    start = weights(folder / "init.caffemodel")
    assert got.keys() == want.keys()
    for layer in want:
        for index, (g, w, s) in enumerate(zip(got[layer], want[layer], start[layer])):
            if layer != "input_scale":   # lr_mult 0: never moves
                assert relative(w, s) > MIN_UPDATE, f"{layer}/{index} did not train"
            assert relative(g, w) <= WEIGHT_TOL, f"{layer}/{index}: {relative(g, w):.3g}"
    for row_got, row_want in zip(losses(folder / "node0" / "synthetic"), losses(folder / "single" / "synthetic"),
                                 strict=True):
        for key, value in row_want.items():
            assert abs(row_got[key] - value) <= LOSS_TOL * max(abs(value), 1.0), key
