"""`caffe time`: forward and backward times of every layer of a net, as caffe.cpp's time().

sec.caffe computes gradients with autograd, so a layer's backward is timed as the autograd pass
from its tops back to its bottoms and parameters only: `torch.autograd.grad` over that layer's
part of the graph, with its tops' gradients (summed over the layers that consumed them, loss tops
seeded with their loss weight as Caffe seeds them) as the incoming gradient. Every layer gets a
forward and a backward line, as in Caffe (a layer with nothing to propagate takes ~0 ms). On CUDA
every timed call is synchronised, as Caffe's CUDA-event timers are.

The net is walked through its build steps (`Net._layers`: name, bottoms, tops, `fn`, `impl.params`,
`detach`, `kind`), the same steps `Net.run` executes; input layers (Input) have no work.
"""
import time as clock

import torch

from sec.caffe.tools import glog

log = glog.log
MS_PER_S = 1000.0
NAME_WIDTH = 10         # caffe.cpp: std::setw(10) << layername


def benchmark(net, iterations):
    """The whole `caffe time` log for `net` after its construction: a clean forward and backward,
    `iterations` timed passes, per-layer averages and totals (milliseconds)."""
    steps = list(net._layers)
    log.info("Performing Forward")
    values, records = _forward(net, steps, None)
    log.info("Initial loss: %s", f"{float(net.total_loss(values).detach()):g}")
    log.info("Performing Backward")
    _backward(net, records, values, None)
    log.info("*** Benchmark begins ***")
    log.info("Testing for %d iterations.", iterations)
    forward_s, backward_s = [0.0] * len(steps), [0.0] * len(steps)
    forward_total = backward_total = 0.0
    total_start = _now(net)
    for j in range(iterations):
        iteration_start = _now(net)
        values, records = _forward(net, steps, forward_s)
        forward_done = _now(net)
        _backward(net, records, values, backward_s)
        backward_done = _now(net)
        forward_total += forward_done - iteration_start
        backward_total += backward_done - forward_done
        log.info("Iteration: %d forward-backward time: %s ms.", j + 1, _ms(backward_done - iteration_start))
    total = _now(net) - total_start
    log.info("Average time per layer: ")
    for step, forward, backward in zip(steps, forward_s, backward_s):
        log.info("%s\tforward: %s ms.", f"{step.name:>{NAME_WIDTH}}", _ms(forward / iterations))
        log.info("%s\tbackward: %s ms.", f"{step.name:>{NAME_WIDTH}}", _ms(backward / iterations))
    log.info("Average Forward pass: %s ms.", _ms(forward_total / iterations))
    log.info("Average Backward pass: %s ms.", _ms(backward_total / iterations))
    log.info("Average Forward-Backward: %s ms.", _ms(total / iterations))
    log.info("Total Time: %s ms.", _ms(total))
    log.info("*** Benchmark ends ***")


def _ms(seconds):
    """Seconds as the milliseconds Caffe prints (a double through ostream: %g)."""
    return f"{seconds * MS_PER_S:g}"


def _now(net):
    if net.device.type == "cuda":
        torch.cuda.synchronize(net.device)
    return clock.perf_counter()


def _forward(net, steps, times):
    """Every layer's forward with autograd on, adding each layer's seconds to `times` (when given).
    Returns (blob values by name, [(step, bottoms, tops)])."""
    values = {name: net.blobs[name].tensor(net.device) for name in net.inputs}
    records = []
    for index, step in enumerate(steps):
        if step.kind == "input":
            records.append((step, [], [values[name] for name in step.tops]))
            continue
        bottoms = [values[name] for name in step.bottoms]
        if step.detach is not None:
            bottoms = [b.detach() if d else b for b, d in zip(bottoms, step.detach)]
        start = _now(net)
        tops = tuple(step.fn(*bottoms))
        if times is not None:
            times[index] += _now(net) - start
        tops = tuple(t.view_as(t) if any(t is b for b in bottoms) else t for t in tops)
        records.append((step, bottoms, tops))
        for name, top in zip(step.tops, tops):
            values[name] = top
    return values, records


def _backward(net, records, values, times):
    """Each layer's backward in reverse order (module docstring), adding its seconds to `times`.
    Returns {id(tensor): gradient} of the bottoms and parameters reached (net inputs that need
    none and consumed tops are not kept)."""
    grads = {}
    for name, weight in net.loss_weights.items():
        top = values[name]
        grads[id(top)] = torch.full_like(top, weight)
    for index in range(len(records) - 1, -1, -1):
        step, bottoms, tops = records[index]
        outs = [(t, grads.pop(id(t))) for t in tops if id(t) in grads and t.requires_grad]
        wanted = [b for b in bottoms if b.requires_grad] + [p for p in step.impl.params if p.requires_grad]
        start = _now(net)
        if outs and wanted:
            got = torch.autograd.grad([t for t, _ in outs], wanted, [g for _, g in outs],
                                      retain_graph=True, allow_unused=True)
            for tensor, grad in zip(wanted, got):
                if grad is not None:
                    key = id(tensor)
                    grads[key] = grad if key not in grads else grads[key] + grad
        if times is not None:
            times[index] += _now(net) - start
    return grads
