"""Data parallel training through torch.distributed (the part of Caffe's NCCL that the solver
needs): parameters broadcast from rank 0 at the start, gradients and loss values all-reduced as
`sum_r rank_weight_r * x_r` every iteration.

Every tensor handed to a collective lives on the solver's device (NCCL serves CUDA tensors
only), and the gradients travel in one flat bucket (one collective per iteration instead of
one per blob).
"""
import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


def rank_and_world():
    """(rank, world size) under torch.distributed, (0, 1) otherwise."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast_parameters(tensors):
    """Rank 0's values into every rank's `tensors` (in place, on their device)."""
    with torch.no_grad():
        for tensor in tensors:
            dist.broadcast(tensor.data, src=0)


def allreduce_gradients(diffs, weight):
    """diffs = sum over ranks of weight_r * diffs_r, in place, in one flat all-reduce."""
    if not diffs:
        return
    flat = _flatten_dense_tensors(diffs)
    flat.mul_(weight)
    dist.all_reduce(flat)
    torch._foreach_copy_(diffs, list(_unflatten_dense_tensors(flat, diffs)))


def allreduce_values(values, weight):
    """sum over ranks of weight_r * values_r for a 1-D tensor (returned; on its device)."""
    values = values * weight
    dist.all_reduce(values)
    return values
