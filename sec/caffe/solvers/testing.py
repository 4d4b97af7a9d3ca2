"""The solver's test nets as Caffe runs them (Solver::Test, Net::ShareTrainedLayersWith).

A test net shares the train net's blobs by layer name: each blob of a test-net layer that the
train net also has becomes a view of the train net's tensor (`param.data = train.data`), so the
test net sees every later update without a copy, as Caffe's Blob::ShareData. Scores are every
element of every output blob (sorted by name, as Caffe's outputs), summed over test_iter forward
passes in float32 and divided by test_iter; the log lines are Caffe's.
"""
import logging

import torch

log = logging.getLogger("sec.caffe.solver")


class ShareError(ValueError):
    """Two nets whose same-named layers hold blobs of different number or shape."""


def share_trained_layers(target, source):
    """Caffe's target->ShareTrainedLayersWith(source): the blobs of every layer of `target` named
    like a layer of `source` become views of the source's blobs (checked first, then shared)."""
    sources = {name: tensors for name, _, tensors in source.layer_params()}
    pairs = []
    for name, _, tensors in target.layer_params():
        if name not in sources:
            continue
        theirs = sources[name]
        if len(theirs) != len(tensors):
            raise ShareError(f"layer '{name}': {len(theirs)} blobs in the train net, {len(tensors)} in the "
                             "test net (Caffe: incompatible number of blobs)")
        for index, (mine, other) in enumerate(zip(tensors, theirs)):
            if tuple(mine.shape) != tuple(other.shape):
                raise ShareError(f"cannot share param {index} weights from layer '{name}'; shape mismatch: "
                                 f"source {tuple(other.shape)}, target {tuple(mine.shape)}")
            pairs.append((mine, other))
    for mine, other in pairs:
        if mine is not other:
            mine.data = other.data


def test_net(solver, index):
    """Caffe's Solver::Test of test net `index`: returns {output name: [mean score per element]}
    (empty when an action request stopped it), logs as Caffe."""
    log.info("Iteration %d, Testing net (#%d)", solver.iter, index)
    net = solver.test_nets[index]
    share_trained_layers(net, solver.net)
    iterations = solver.param.test_iter[index]
    scores, loss, names, sizes = None, None, None, []
    with torch.no_grad():
        for _ in range(iterations):
            if solver.handle_requests_while_testing():
                log.info("Test interrupted.")
                return {}
            outputs = net.run()
            if names is None:
                names = [name for name in net.outputs if name in outputs]
                sizes = [outputs[name].numel() for name in names]
            values = torch.cat([outputs[name].detach().reshape(-1).float() for name in names]) if names else None
            scores = values if scores is None else scores + values
            iteration_loss = net.total_loss(outputs).detach().float()
            loss = iteration_loss if loss is None else loss + iteration_loss
    if solver.param.test_compute_loss and iterations:
        log.info("Test loss: %.6g", float(loss) / iterations)
    results, position = {}, 0
    means = (scores / iterations).tolist() if scores is not None and iterations else []
    for name, size in zip(names or [], sizes):
        results[name] = means[position:position + size]
        weight = net.loss_weights.get(name, 0.0)
        for value in results[name]:
            extra = f" (* {weight:g} = {weight * value:.6g} loss)" if weight else ""
            log.info("    Test net output #%d: %s = %.6g%s", position, name, value, extra)
            position += 1
    return results

