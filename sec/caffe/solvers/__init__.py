"""Caffe's six solvers on the PyTorch engine, in parts: `policies` (learning-rate policies),
`rules` (the six update rules), `config` (the SolverParameter: checks, nets, overrides), `hdf5`
(HDF5 snapshots), `parallel` (torch.distributed), `base` (the Solver loop). The public names are
those of `sec.caffe.solver`, which imports them from here.
"""
