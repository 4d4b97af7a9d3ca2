"""The solver's CUDA paths, checked on the CPU (issue 21): every all-reduced tensor lives on the
solver's device (NCCL serves only CUDA tensors), the gradients travel in one bucket, one host read
per iteration, and timings are CUDA events read with it (no host wait)."""
import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sec.caffe import solver as solver_mod
from sec.caffe.net import ParamInfo
from sec.caffe.solvers import parallel
from test_solver import LinearNet, TinyNet, write_solver

COEFS = [(np.full((2, 4), 0.5, np.float32), np.array([1.0, -1.0], np.float32)),
         (np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4), np.array([0.25, 2.0], np.float32))]
HOST_SYNCS = {"_local_scalar_dense", "item", "nonzero", "is_nonzero", "equal", "_unique2", "unique_dim",
              "bincount", "masked_select"}


class FakeGroup:
    """torch.distributed for two ranks holding the same gradients: records each collective's tensor
    device and size; all_reduce of x * 1/2 from both ranks gives x back."""

    def __init__(self):
        self.reduced, self.broadcasts = [], []

    def is_available(self):
        return True

    def is_initialized(self):
        return True

    def get_rank(self):
        return 0

    def get_world_size(self):
        return 2

    def all_reduce(self, tensor):
        self.reduced.append((tensor.device, tensor.numel()))
        tensor.mul_(2)

    def broadcast(self, tensor, src):
        self.broadcasts.append(tensor.device)


def test_collectives_get_tensors_on_the_solvers_device_in_one_gradient_bucket(tmp_path, monkeypatch):
    reference = solver_mod.SGDSolver(write_solver(tmp_path, display=1), net_factory=lambda *_: LinearNet(COEFS))
    reference.step(3)
    group = FakeGroup()
    monkeypatch.setattr(parallel, "dist", group)
    net = LinearNet(COEFS)
    solver = solver_mod.SGDSolver(write_solver(tmp_path, display=1), net_factory=lambda *_: net)
    assert solver.world_size == 2 and group.broadcasts == [torch.device("cpu")] * 2
    with torch.device("meta"):          # a tensor made without the solver's device would land here
        solver.step(3)
    assert {device for device, _ in group.reduced} == {solver.device}
    assert [size for _, size in group.reduced] == [2, 10] * 3          # one loss vector, one gradient bucket
    np.testing.assert_array_equal(net.weight.detach().numpy(), reference.net.weight.detach().numpy())
    assert solver.last_outputs == reference.last_outputs


class SyncCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.syncs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in HOST_SYNCS:
            self.syncs.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("display", [0, 1])
def test_one_host_read_per_iteration(tmp_path, monkeypatch, display):
    """The loss values (all outputs on display iterations) come back in one read; before, each
    output and the total were float()ed apart (2 x iter_size + more per iteration)."""
    reads = []
    real_tolist = torch.Tensor.tolist

    def counted_tolist(tensor):
        reads.append(tensor.numel())
        return real_tolist(tensor)
    solver = solver_mod.SGDSolver(write_solver(tmp_path, display=display, iter_size=2), net_factory=TinyNet)
    monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)
    with SyncCounter() as counter:
        solver.step(4)
    assert counter.syncs == []
    assert len(reads) == 4


class FakeEvent:
    """torch.cuda.Event on the CPU: record() takes the next tick of a clock of 10 ms ticks."""
    ticks = []

    def __init__(self, enable_timing=False):
        assert enable_timing
        self.tick = None

    def record(self, stream=None):
        self.tick = len(FakeEvent.ticks)
        FakeEvent.ticks.append(self)

    def elapsed_time(self, end):
        assert self.tick is not None and end.tick is not None
        return 10.0 * (end.tick - self.tick)


def test_cuda_timings_are_events_read_without_a_host_wait(tmp_path, monkeypatch):
    """On CUDA the clock marks are events on the stream, read after the one device read: no
    torch.cuda.synchronize (each would stop the host until the GPU caught up)."""
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    solver = solver_mod.SGDSolver(write_solver(tmp_path), net_factory=TinyNet)
    solver.step(1)
    assert set(solver.last_timings) == {"forward", "backward", "update"}
    assert all(v >= 0 for v in solver.last_timings.values())
    solver.device = torch.device("cuda", 0)     # the nets stay on the CPU; only the clock asks
    solver.step(1)
    assert FakeEvent.ticks and synced == []
    # forward start, end, backward end, update start, end: one 10 ms tick apart
    assert (solver.last_timings["forward"], solver.last_timings["backward"]) == (0.01, 0.01)
    solver.step(1)
    assert solver.last_timings["update"] == 0.01      # the previous iteration's update, read with this one's


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


class WideNet(TinyNet):
    """`count` parameter blobs of a few shapes, lr_mult 1 or 2, decay_mult 1 or 0."""

    def __init__(self, count):
        super().__init__()
        self.blobs = [torch.nn.Parameter(torch.randn(3 + i % 4, 2)) for i in range(count)]

    def learnable_params(self):
        return [ParamInfo(f"l{i // 2}", i % 2, blob, 1.0 + i % 2, float(i % 2 == 0)) for i, blob in enumerate(self.blobs)]

    def layer_params(self):
        return [(f"l{k}", "InnerProduct", self.blobs[2 * k:2 * k + 2]) for k in range((len(self.blobs) + 1) // 2)]


@pytest.mark.parametrize("kind", ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"])
def test_the_update_launches_as_many_kernels_for_40_blobs_as_for_4(tmp_path, kind):
    """Foreach kernels: the work of an update does not grow with the number of blobs (per-blob
    loops launched 4-6 kernels per blob)."""
    counts = []
    fields = dict(momentum=0.0) if kind in ("AdaGrad", "RMSProp") else {}
    for count in (4, 40):
        (tmp_path / str(count)).mkdir()
        solver = solver_mod.make_solver(write_solver(tmp_path / str(count), type=kind, **fields),
                                        net_factory=lambda *_: WideNet(count))
        for info in solver.params:
            info.param.grad = torch.randn_like(info.param)
        with OpCounter() as counter:
            solver.apply_update()
        counts.append(counter.ops)
    assert counts[0] == counts[1], counts
