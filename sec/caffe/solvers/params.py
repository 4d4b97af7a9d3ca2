"""The solver's parameter list (Caffe's Net::learnable_params) and each blob's local multipliers."""
import numpy as np

from sec.caffe.net import ParamInfo

F32 = np.float32


class Multipliers:
    """Per-blob lr_mult as float32 and the groups of blobs sharing one nonzero local decay."""

    def __init__(self, lr_mults, decay_groups):
        self.lr_mults, self.decay_groups = lr_mults, decay_groups


def local_multipliers(param, infos):
    """Caffe's local_rate = rate * lr_mult and local_decay = weight_decay * decay_mult, both float:
    the lr_mults, and [(blob indices, local decay)] for the nonzero decays (Caffe: `if (local_decay)`)."""
    groups = {}
    for index, info in enumerate(infos):
        decay = float(F32(param.weight_decay) * F32(info.decay_mult))
        if decay:
            groups.setdefault(decay, []).append(index)
    return Multipliers([F32(info.lr_mult) for info in infos], [(indices, decay) for decay, indices in groups.items()])


def solver_params(net, netparam):
    """Caffe's Net::learnable_params: every blob of every layer in order, a shared blob once (at its
    owner). Blobs the net does not list as learnable (BatchNorm's statistics, which Caffe forces to
    lr_mult 0) come with lr_mult 0 and their ParamSpec's decay_mult (default 1, as Caffe)."""
    infos = {id(info.param): info for info in net.learnable_params()}
    specs = {layer.name: layer for layer in netparam.layer}
    found, seen = [], set()
    for name, _, tensors in net.layer_params():
        for index, tensor in enumerate(tensors):
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            info = infos.get(id(tensor))
            if info is None:
                layer = specs.get(name)
                decay = layer.param[index].decay_mult if layer is not None and index < len(layer.param) else 1.0
                info = ParamInfo(name, index, tensor, 0.0, float(decay))
            found.append(info)
    return found + [info for info in infos.values() if id(info.param) not in seen]
