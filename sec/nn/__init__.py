"""SEC in plain PyTorch: the seeding, expansion and constrain losses and the dense CRF as
torch.nn.Modules and functions, on any device (the twins of the numpy `pylayers`).

    from sec.nn import SECLoss, SeedLoss, ExpandLoss, ConstrainLoss, DenseCRF, SoftmaxWithFloor

`functional` holds the loss math, `crf` the mean-field (permutohedral lattice or exact kernels),
`lattice` the torch lattice, `cues` the cue lookup kept on the device, `speed` the engine's speed
options. Names are imported on first use, so `sec.nn.speed` or `sec.nn.functional` never need
the CRF extension.
"""
import importlib

_HOMES = {"ConstrainLoss": "modules", "DenseCRF": "modules", "ExpandLoss": "modules", "SECLoss": "modules",
          "SeedLoss": "modules", "SoftmaxWithFloor": "modules", "DeviceCues": "cues", "dense_crf": "crf"}

__all__ = sorted(_HOMES)


def __getattr__(name):
    if name in _HOMES:
        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module '{__name__}' has no attribute '{name}'")
