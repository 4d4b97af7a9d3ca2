"""Neuron layers (Caffe's neuron_layers family): one bottom, one top of the same shape, applied
value by value: ReLU, Sigmoid, TanH, Dropout."""
import torch
import torch.nn.functional as F

from sec.caffe.layers.base import TRAIN, UnaryLayer


class ReLU(UnaryLayer):
    def __init__(self, lp, shapes, ctx):
        super().__init__(lp, shapes, ctx)
        self.slope = lp.relu_param.negative_slope

    def forward(self, x):
        if self.slope == 0:
            return (F.relu(x),)
        return (F.leaky_relu(x, self.slope),)


class Sigmoid(UnaryLayer):
    def forward(self, x):
        return (torch.sigmoid(x),)


class TanH(UnaryLayer):
    def forward(self, x):
        return (torch.tanh(x),)


class Dropout(UnaryLayer):
    """TRAIN: zero with probability p, scale survivors by 1/(1-p) (Caffe's scaling); TEST: identity."""

    def __init__(self, lp, shapes, ctx):
        super().__init__(lp, shapes, ctx)
        self.ratio = lp.dropout_param.dropout_ratio
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"dropout_param.dropout_ratio must be in [0, 1), got {self.ratio}")
        self.train = ctx.phase == TRAIN

    def forward(self, x):
        if self.train:
            return (F.dropout(x, self.ratio, True),)
        return (x,)
