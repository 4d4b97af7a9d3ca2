"""Recurrent layers (Caffe's recurrent family): RNN, LSTM and LSTMUnit.

Caffe's RNN and LSTM build an unrolled net over the T timesteps of their input (rnn_layer.cpp,
lstm_layer.cpp); here the same recurrence runs as a loop over t, with the same parameter blobs
in the same order and shapes, so weights written by Caffe load by layer name and agree.

Bottoms: x (T x N x ...: T timesteps of N independent streams; the axes from 2 on are flattened
to I values, at least one of them), cont (T x N: 0 at the first step of a sequence, 1 where it continues from the
previous step; other values scale the carried state, as Caffe's Scale does), an optional static
input x_static (N x ..., at least 2 axes: added to every step's input), and with `expose_hidden` the initial
state h_0 (and c_0 for LSTM), each 1 x N x num_output. Tops: the output sequence T x N x
num_output, and with `expose_hidden` the final state h_T (and c_T).

Caffe's behaviour followed (and listed in docs/caffe/layers-utility-loss-recurrent.md):

* Without `expose_hidden`, h_0 (and c_0) is the final state of the previous forward (zeros
  before the first), so a `cont` of 1 at t = 0 continues a sequence across batches; no gradient
  crosses batches. Here the state restarts at zeros when N changes.
* With `expose_hidden`, the initial state bottoms get no gradient and gradients arriving at the
  final state tops are dropped: Caffe shares only their data with the unrolled net.
* cont gets no gradient; LSTMUnit's forget-gate gradient is f (1 - f) with f = cont sigmoid(.),
  Caffe's form (the exact derivative only for cont in {0, 1}).
"""
import math

import torch

from sec.caffe.layers.base import need_bottoms


class LSTMUnitStep(torch.autograd.Function):
    """One LSTM step as Caffe's LSTMUnitLayer, with its hand-written backward.

    c_prev (N x D), gates (N x 4D, the pre-activations of i, f, o, g in that order), cont (N x
    1) -> c = cont sigmoid(f') c_prev + sigmoid(i') tanh(g'), h = sigmoid(o') tanh(c).
    """

    @staticmethod
    def forward(ctx, c_prev, gates, cont):
        i, f, o, g = gates.chunk(4, dim=-1)
        i, f, o, g = torch.sigmoid(i), cont * torch.sigmoid(f), torch.sigmoid(o), torch.tanh(g)
        c = f * c_prev + i * g
        tanh_c = torch.tanh(c)
        ctx.save_for_backward(c_prev, i, f, o, g, tanh_c)
        return c, o * tanh_c

    @staticmethod
    def backward(ctx, c_diff, h_diff):
        c_prev, i, f, o, g, tanh_c = ctx.saved_tensors
        c_term = c_diff + h_diff * o * (1 - tanh_c * tanh_c)
        gates_diff = torch.cat([c_term * g * i * (1 - i), c_term * c_prev * f * (1 - f),
                                h_diff * tanh_c * o * (1 - o), c_term * i * (1 - g * g)], dim=-1)
        return c_term * f, gates_diff, None


class LSTMUnit:
    """Caffe's LSTMUnit: bottoms c_prev (1 x N x D), gate pre-activations (1 x N x 4D), cont
    (1 x N); tops c and h (1 x N x D). Gradients to c_prev and the gates (Caffe's backward),
    none to cont."""

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 3)
        if len(lp.top) != 2:
            raise ValueError(f"needs 2 tops (c, h), got {len(lp.top)}")
        self.params = []
        self.shapes(shapes)

    def shapes(self, shapes):
        c_prev, gates, cont = (tuple(s) for s in shapes)
        if len(c_prev) != 3 or len(gates) != 3 or len(cont) != 2:
            raise ValueError(f"bottoms must be 1 x N x D, 1 x N x 4D and 1 x N; got {c_prev}, {gates}, {cont}")
        if c_prev[0] != 1 or gates[0] != 1 or cont[0] != 1 or not c_prev[1] == gates[1] == cont[1]:
            raise ValueError(f"bottoms {c_prev}, {gates}, {cont} must each be one timestep (1) of the same N streams")
        if gates[2] != 4 * c_prev[2]:
            raise ValueError(f"the gates {gates} must have 4 x {c_prev[2]} values per stream (i, f, o, g)")
        return [c_prev, c_prev]

    def forward(self, c_prev, gates, cont):
        c, h = LSTMUnitStep.apply(c_prev[0], gates[0], cont.detach().reshape(-1, 1))
        return c.unsqueeze(0), h.unsqueeze(0)


class _Recurrent:
    """What RNN and LSTM share: bottoms, tops, parameters and the carried state. A subclass sets
    STATES (its recurrent state names) and GATES (rows of the input transform per output), and
    defines `blob_names(static)` and `unroll(x_in, static_in, cont, state) -> (outputs, state)`."""

    STATES = ()
    GATES = 1

    def __init__(self, lp, shapes, ctx):
        p = lp.recurrent_param
        self.expose = bool(p.expose_hidden)
        exposed = len(self.STATES) if self.expose else 0
        need_bottoms(lp, shapes, 2 + exposed, 3 + exposed)
        if len(lp.top) != 1 + exposed:
            raise ValueError(f"needs {1 + exposed} top(s) (the output"
                             + (", then " + ", ".join(s + "_T" for s in self.STATES) if exposed else "")
                             + f"), got {len(lp.top)}")
        if p.num_output <= 0:
            raise ValueError("recurrent_param.num_output must be positive")
        self.hidden = int(p.num_output)
        self.static = len(shapes) > 2 + exposed
        x = tuple(shapes[0])
        if len(x) < 3:   # Caffe's inner InnerProduct takes axes 2.. (none: an error there too)
            raise ValueError(f"bottom 0 must have at least 3 axes (timesteps, streams, values...), got {x}")
        if self.static and len(shapes[2]) < 2:
            raise ValueError(f"bottom 2 (x_static) must have at least 2 axes (streams, values...), got "
                             f"{tuple(shapes[2])}")
        self.steps, self.inputs = x[0], math.prod(x[2:])
        self.static_inputs = math.prod(shapes[2][1:]) if self.static else 0
        rows = self.GATES * self.hidden
        blob_shapes = {"W_x": (rows, self.inputs), "b_x": (rows,), "W_x_static": (rows, self.static_inputs),
                       "W_h": (rows, self.hidden), "W_o": (self.hidden, self.hidden), "b_o": (self.hidden,)}
        self.blobs = {}
        for index, name in enumerate(self.blob_names(self.static)):
            filler = p.bias_filler if name.startswith("b_") else p.weight_filler
            field = "bias_filler" if name.startswith("b_") else "weight_filler"
            self.blobs[name] = ctx.param(lp, index, blob_shapes[name], filler if p.HasField(field) else None)
        self.params = list(self.blobs.values())
        self.state = None
        self.shapes(shapes)

    def shapes(self, shapes):
        x, cont = tuple(shapes[0]), tuple(shapes[1])
        if len(x) < 3 or x[0] != self.steps:
            raise ValueError(f"bottom 0 {x} must be {self.steps} timesteps x N streams x ... (the timesteps "
                             "cannot change after the layer is built)")
        if math.prod(x[2:]) != self.inputs:
            raise ValueError(f"bottom 0 {x} has {math.prod(x[2:])} values per step and stream, the weights "
                             f"take {self.inputs}")
        streams = x[1]
        if cont != (self.steps, streams):
            raise ValueError(f"bottom 1 (cont) must be timesteps x streams {(self.steps, streams)}, got {cont}")
        rest = [tuple(s) for s in shapes[2:]]
        if self.static:
            static = rest.pop(0)
            if not static or static[0] != streams or math.prod(static[1:]) != self.static_inputs:
                raise ValueError(f"bottom 2 (x_static) must be {streams} streams x {self.static_inputs} values, "
                                 f"got {static}")
        state_shape = (1, streams, self.hidden)
        for name, shape in zip(self.STATES, rest):
            if shape != state_shape:
                raise ValueError(f"the initial state {name}_0 must be {state_shape}, got {shape}")
        return [(self.steps, streams, self.hidden)] + [state_shape] * (len(self.STATES) if self.expose else 0)

    def forward(self, x, cont, *rest):
        steps, streams = x.shape[0], x.shape[1]
        x_in = torch.nn.functional.linear(x.reshape(steps, streams, self.inputs), self.blobs["W_x"],
                                          self.blobs["b_x"])
        static_in = None
        if self.static:
            static, rest = rest[0], rest[1:]
            static_in = torch.nn.functional.linear(static.reshape(streams, self.static_inputs),
                                                   self.blobs["W_x_static"])
        if self.expose:
            state = tuple(s.detach()[0] for s in rest)
        else:
            state = self._carried(streams, x)
        outputs, state = self.unroll(x_in, static_in, cont.detach(), state)
        final = tuple(s.detach() for s in state)
        if self.expose:
            return (outputs,) + tuple(s.unsqueeze(0) for s in final)
        self.state = final
        return (outputs,)

    def _carried(self, streams, like):
        """The final state of the previous forward (Caffe copies h_T into h_0), zeros at first or
        when the number of streams changed."""
        if self.state is None or self.state[0].shape[0] != streams:
            zeros = like.new_zeros((streams, self.hidden))
            return tuple(zeros for _ in self.STATES)
        return tuple(s.to(like.device) for s in self.state)

    def step_input(self, x_in, static_in, h, cont_t):
        """W_h (cont_t h) + x_in (+ static_in), summed in the order of Caffe's Eltwise."""
        total = torch.nn.functional.linear(cont_t * h, self.blobs["W_h"]) + x_in
        return total if static_in is None else total + static_in


class RNN(_Recurrent):
    """Caffe's RNN: h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static]),
    o_t = tanh(W_ho h_t + b_o). Blobs: W_xh (H x I), b_h (H), [W_xh_static (H x S)], W_hh (H x H),
    W_ho (H x H), b_o (H); the top is o (T x N x H)."""

    STATES = ("h",)
    GATES = 1

    @staticmethod
    def blob_names(static):
        return ["W_x", "b_x"] + (["W_x_static"] if static else []) + ["W_h", "W_o", "b_o"]

    def unroll(self, x_in, static_in, cont, state):
        (h,) = state
        hidden = []
        for t in range(x_in.shape[0]):
            h = torch.tanh(self.step_input(x_in[t], static_in, h, cont[t].unsqueeze(1)))
            hidden.append(h)
        outputs = torch.tanh(torch.nn.functional.linear(torch.stack(hidden), self.blobs["W_o"], self.blobs["b_o"]))
        return outputs, (h,)


class LSTM(_Recurrent):
    """Caffe's LSTM: gates_t = W_hc (cont_t h_{t-1}) + W_xc x_t + b_c [+ W_xc_static x_static]
    (i, f, o, g, each H rows), then Caffe's LSTMUnit (c_t, h_t from c_{t-1}, gates_t, cont_t).
    Blobs: W_xc (4H x I), b_c (4H), [W_xc_static (4H x S)], W_hc (4H x H); the top is h (T x N x
    H); exposed state order h, c."""

    STATES = ("h", "c")
    GATES = 4

    @staticmethod
    def blob_names(static):
        return ["W_x", "b_x"] + (["W_x_static"] if static else []) + ["W_h"]

    def unroll(self, x_in, static_in, cont, state):
        h, c = state
        hidden = []
        for t in range(x_in.shape[0]):
            cont_t = cont[t].unsqueeze(1)
            c, h = LSTMUnitStep.apply(c, self.step_input(x_in[t], static_in, h, cont_t), cont_t)
            hidden.append(h)
        return torch.stack(hidden), (h, c)
