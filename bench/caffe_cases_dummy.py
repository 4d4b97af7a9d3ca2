"""DummyData one-layer cases for bench/caffe_reference.py (fixture layers_dummy): shapes (`shape`
once or per top, the legacy num/channels/height/width) and constant fillers (once, per top, none),
whose values the two engines must agree on exactly. Random fillers draw from each engine's own
generator, so only their shapes could be compared: tests/test_pycaffe_api.py checks their ranges."""


def dummy(param, tops=("y",)):
    return (("DummyData", f"dummy_data_param {{ {param} }}"), {}, {"bottoms": (), "tops": tops, "backward": False})


CASES = {
    "dummy_shape_zero_fill": dummy("shape { dim: 2 dim: 3 dim: 4 }"),
    "dummy_shape_per_top": dummy('shape { dim: 2 dim: 3 } shape { dim: 5 } '
                                 'data_filler { type: "constant" value: 1.5 } data_filler { type: "constant" value: -2 }',
                                 tops=("y", "z")),
    "dummy_one_filler_two_tops": dummy('shape { dim: 1 dim: 2 dim: 2 dim: 2 } data_filler { type: "constant" value: 0.25 }',
                                       tops=("y", "z")),
    "dummy_legacy_dims": dummy('num: 2 num: 3 channels: 1 height: 2 width: 4 data_filler { value: 3 }', tops=("y", "z")),
}
