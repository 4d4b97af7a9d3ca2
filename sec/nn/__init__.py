"""SEC in plain PyTorch: the seeding, expansion and constrain losses and the dense CRF as
torch.nn.Modules and functions, on any device (the twins of the numpy `pylayers`).

    from sec.nn import SECLoss, SeedLoss, ExpandLoss, ConstrainLoss, DenseCRF, SoftmaxWithFloor

`functional` holds the loss math, `crf` the mean-field (permutohedral lattice or exact kernels),
`lattice` the torch lattice, `cues` the cue lookup kept on the device.
"""
from .crf import dense_crf
from .cues import DeviceCues
from .modules import ConstrainLoss, DenseCRF, ExpandLoss, SECLoss, SeedLoss, SoftmaxWithFloor

__all__ = ["ConstrainLoss", "DenseCRF", "DeviceCues", "ExpandLoss", "SECLoss", "SeedLoss",
           "SoftmaxWithFloor", "dense_crf"]
