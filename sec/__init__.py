"""SEC: Seed, Expand and Constrain on a Caffe-compatible PyTorch engine."""
