"""Test-time augmentation for deploy: the net run at several input scales and mirrored, and the
class probabilities averaged at each image's own size, before the optional CRF (as DSRG's
`test-ms` and SEC-MXNet's `--flip` do).

Layouts: net inputs are N x 3 x h x w float32 tensors (BGR, mean-subtracted, on the net's
device); probabilities are N x L x h' x w' out of the net and L x H x W per image after averaging
(H x W: the image's size). A scale s runs the net on the image resized to round(s h) x round(s w),
(h, w) being the net's declared input size; a mirrored pass flips the input left-right and its
probabilities back before they are upsampled.
"""
import torch

MIN_SIDE = 1


def parse_scales(text):
    """'0.75,1,1.25' -> (0.75, 1.0, 1.25); ValueError naming the bad item (positive numbers only,
    none repeated)."""
    scales = []
    for item in text.split(","):
        try:
            scale = float(item)
        except ValueError:
            raise ValueError(f"'{item.strip()}' is not a number") from None
        if not scale > 0 or scale == float("inf"):
            raise ValueError(f"scale {item.strip()} must be a positive number")
        if scale in scales:
            raise ValueError(f"scale {item.strip()} is given twice")
        scales.append(scale)
    return tuple(scales)


def scaled_sizes(size, scales):
    """[(round(s h), round(s w)) for s in scales] for the net's input size (h, w), each side >= 1."""
    return [tuple(max(MIN_SIDE, round(side * scale)) for side in size) for scale in scales]


def average_probabilities(forward, batches, image_sizes, flip, upsample):
    """Per image, the mean of the class probabilities of every scale (and its mirror with flip),
    each upsampled to the image's size: a list of L x H x W tensors on the forward's device.

    forward: N x 3 x h x w -> N x L x h' x w' probabilities; batches: one input batch per scale,
    the same N images in each; image_sizes: (H, W) per image; upsample(L x h x w, (H, W)) ->
    L x H x W. With flip, each scale's batch and its mirror run as one batch of 2N."""
    count = len(image_sizes)
    sums = [None] * count
    passes = 0
    for batch in batches:
        probs = forward(torch.cat([batch, batch.flip(3)]) if flip else batch)
        parts = [probs[:count], probs[count:].flip(3)] if flip else [probs]
        for part in parts:
            for index, (p, size) in enumerate(zip(part, image_sizes)):
                up = upsample(p, size)
                sums[index] = up if sums[index] is None else sums[index].add_(up)
            passes += 1
    return [total.div_(passes) for total in sums]
