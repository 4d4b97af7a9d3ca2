"""One-layer cases of Caffe's recurrent layers: RNN, LSTM (recurrence over T timesteps with
`cont` markers starting new sequences, a static input, the exposed hidden state) and LSTMUnit
(format: bench/caffe_reference_cases.py). The exposed-state tops get random diffs like every
output: Caffe drops them, and gives the exposed initial state no gradient."""
import numpy as np

STEPS, STREAMS = 4, 3
CONT_FRACTIONS = (0.0, 0.5, 1.0)


def cont(rng, shape):
    """T x N sequence markers: 0 at t = 0 (a new sequence), then 1, except a restart of one
    stream half way."""
    values = np.ones(shape, np.float32)
    values[0] = 0
    values[shape[0] // 2, rng.integers(shape[1])] = 0
    return values


def fractions(rng, shape):
    """Markers of 0, 0.5 and 1: Caffe scales the carried state by them (and its LSTMUnit's
    forget-gate gradient is f (1 - f) with f = cont sigmoid(.))."""
    return rng.choice(CONT_FRACTIONS, shape).astype(np.float32)


def cont_fractions(rng, shape):
    """T x N fractions, 0 at t = 0."""
    values = fractions(rng, shape)
    values[0] = 0
    return values


def state(rng, shape):
    return (rng.standard_normal(shape) * 0.5).astype(np.float32)


INPUT_KINDS = {"cont": cont, "cont_fractions": cont_fractions, "fractions": fractions, "state": state}


def recurrent(type_, extra=""):
    return (type_, f"recurrent_param {{ num_output: 5 {extra} }}")


SEQUENCE = {"x": ((STEPS, STREAMS, 3), "randn"), "cont": ((STEPS, STREAMS), "cont")}
HIDDEN = (1, STREAMS, 5)
CASES = {
    "recurrent_rnn": (recurrent("RNN"), SEQUENCE, {"bottoms": ("x", "cont")}),
    "recurrent_rnn_static_exposed": (recurrent("RNN", "expose_hidden: true"),
                                     {"x": ((STEPS, STREAMS, 2, 2), "randn"), "cont": ((STEPS, STREAMS), "cont"),
                                      "xs": ((STREAMS, 2), "randn"), "h0": (HIDDEN, "state")},
                                     {"bottoms": ("x", "cont", "xs", "h0"), "tops": ("y", "hT")}),
    "recurrent_lstm": (recurrent("LSTM"), SEQUENCE, {"bottoms": ("x", "cont")}),
    "recurrent_lstm_exposed": (recurrent("LSTM", "expose_hidden: true"),
                               {**SEQUENCE, "h0": (HIDDEN, "state"), "c0": (HIDDEN, "state")},
                               {"bottoms": ("x", "cont", "h0", "c0"), "tops": ("y", "hT", "cT")}),
    "recurrent_lstm_static_fractions": (recurrent("LSTM"),
                                        {"x": ((STEPS, STREAMS, 3), "randn"),
                                         "cont": ((STEPS, STREAMS), "cont_fractions"), "xs": ((STREAMS, 2, 1), "randn")},
                                        {"bottoms": ("x", "cont", "xs")}),
    "recurrent_lstm_unit": (("LSTMUnit", ""), {"c": ((1, 2 * STREAMS, 4), "randn"), "g": ((1, 2 * STREAMS, 16), "randn"),
                                               "cont": ((1, 2 * STREAMS), "fractions")},
                            {"bottoms": ("c", "g", "cont"), "tops": ("c1", "h1")}),
}
