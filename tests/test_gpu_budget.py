"""The GPU budget of one SEC training iteration (issue 21), counted on the CPU with a
TorchDispatchMode (sec.nn.opcount): the torch twins at 321 x 321, batch 15, with SEC_LAYERS=torch,
the solver's real step. The VGG body is narrowed to a pooling and fc8 (bench/gpu_budget.py
--narrow): the data layer, the SEC layers, the CRF and the solver are the paper's.

Targets: at most 2 host syncs per iteration (the bilateral lattice's unique and the solver's one
loss read), fewer than 300 launching operations in the CRF call."""
import pytest
import torch

from conftest import load_script
from sec.nn.opcount import OpCounter, classify

SIZE, BATCH = 321, 15


@pytest.fixture(scope="module")
def counted(tmp_path_factory):
    budget = load_script("bench/gpu_budget.py")
    folder = tmp_path_factory.mktemp("budget")
    args = budget.build_parser().parse_args(["--narrow", "--size", str(SIZE), "--batch", str(BATCH),
                                             "--synthetic-dir", str(folder)])
    args.net = budget.narrowed_net(folder / "narrow_train.prototxt")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        solver, names = budget.counted_solver(args)
        counter = budget.count_step(solver, names)
    finally:
        torch.set_num_threads(threads)
    for source in solver.net.data_layers():
        source.close()
    return budget, counter, solver


@pytest.mark.slow
def test_one_iteration_syncs_at_most_twice(counted):
    budget, counter, _ = counted
    total, crf_syncs, _, rows = budget.summary(counter)
    assert total <= budget.TARGET_SYNCS, rows
    assert crf_syncs <= 1 and dict(counter.sync_ops[f"{budget.CRF_LAYER} forward"]) in ({}, {"_unique2": 1})
    for part in ("annotation forward", "fc8-SEC-Softmax forward", "loss-Seed forward", "loss-Expand forward",
                 "loss-Constrain forward"):
        assert counter.syncs[part] == 0, (part, dict(counter.sync_ops[part]))


@pytest.mark.slow
def test_a_crf_call_launches_fewer_than_300_ops(counted):
    budget, counter, solver = counted
    launches = counter.launches[f"{budget.CRF_LAYER} forward"]
    assert 50 < launches < budget.TARGET_CRF_LAUNCHES           # > 50: the CRF was counted at all
    assert solver.net.blobs["fc8-SEC"].data.shape == (BATCH, 21, 41, 41)


def test_the_counter_sees_what_stops_a_gpu(monkeypatch):
    """Every kind of host wait is counted: values, data-dependent sizes, host copies, explicit waits."""
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: None)    # the counter hooks this stand-in
    x = torch.arange(6.0)
    counter = OpCounter()
    with counter:
        float(x.sum())
        torch.unique(x)
        x[x > 2]
        x.tolist()
        x.numpy()
        torch.bincount(x.long())
        torch.cuda.synchronize()
        y = x * 2 + 1          # two launches, no sync
        y.view(2, 3)           # a view: nothing
    assert counter.total("syncs") == 7, dict(counter.sync_ops["other"])
    assert counter.launches["other"] >= 2
    assert torch.cuda.synchronize.__name__ == "<lambda>"                  # unhooked on exit


def test_device_to_host_copies_are_syncs_and_views_are_not():
    aten = torch.ops.aten
    cpu = torch.zeros(2)
    meta = torch.empty(2, device="meta")
    assert classify(aten._to_copy.default, (meta,), {"device": torch.device("cpu")}) == "sync"
    assert classify(aten._to_copy.default, (cpu,), {"dtype": torch.float64}) == "launch"
    assert classify(aten.copy_.default, (cpu, meta), {"non_blocking": True}) == "launch"
    assert classify(aten.view.default, (cpu, [2]), {}) is None
    assert classify(aten.repeat_interleave.self_int, (cpu, 2), {}) == "launch"
    assert classify(aten.repeat_interleave.Tensor, (torch.tensor([1, 2]),), {}) == "sync"
