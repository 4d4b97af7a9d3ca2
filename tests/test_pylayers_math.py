"""Loss values against brute-force references, GWRP limits, degenerate images, param_str, base class."""
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
from test_pylayers_blob import Blob, Driver

import pylayers
from pylayers import base

ODD_SHAPE = (3, 5, 13, 17)


def brute_force_gwrp(values, decay):
    """Sort one map in descending order and average with weights decay**j, one value at a time."""
    ordered = sorted(values.ravel().tolist(), reverse=True)
    weights = [decay ** j for j in range(len(ordered))]
    return sum(w * v for w, v in zip(weights, ordered)) / sum(weights)


def brute_force_expand(probs, labels, q_fg, q_bg):
    """The expansion loss image by image, class by class; empty terms contribute 0."""
    num, channels = probs.shape[:2]
    present_terms, absent_terms, background_terms = [], [], []
    for i in range(num):
        present = [c for c in range(1, channels) if labels[i, 0, 0, c] > 0.5]
        absent = [c for c in range(1, channels) if labels[i, 0, 0, c] <= 0.5]
        present_sum = sum(np.log(brute_force_gwrp(probs[i, c], q_fg)) for c in present)
        absent_sum = sum(np.log(1 - probs[i, c].max()) for c in absent)
        present_terms.append(present_sum / len(present) if present else 0.0)
        absent_terms.append(absent_sum / len(absent) if absent else 0.0)
        background_terms.append(np.log(brute_force_gwrp(probs[i, 0], q_bg)))
    return -np.mean(present_terms) - np.mean(absent_terms) - np.mean(background_terms)


def random_probs(shape, seed):
    return pylayers.softmax_with_floor(np.random.default_rng(seed).normal(scale=2.0, size=shape))


def test_gwrp_hand_computed():
    pooled, grad = pylayers.global_pool(np.array([[0.1, 0.5, 0.3]]), "gwrp", 0.5)
    assert pooled[0] == pytest.approx((0.5 + 0.5 * 0.3 + 0.25 * 0.1) / 1.75)
    np.testing.assert_allclose(grad[0], np.array([0.25, 1.0, 0.5]) / 1.75)


def test_gwrp_limits_are_max_and_average_pooling():
    rows = np.random.default_rng(0).random((6, 41 * 41))
    near_zero, _ = pylayers.global_pool(rows, "gwrp", 1e-12)
    one, _ = pylayers.global_pool(rows, "gwrp", 1.0)
    np.testing.assert_allclose(near_zero, rows.max(axis=1), rtol=1e-10)
    np.testing.assert_allclose(one, rows.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(pylayers.global_pool(rows, "gmp")[0], rows.max(axis=1))
    np.testing.assert_allclose(pylayers.global_pool(rows, "gap")[0], rows.mean(axis=1))
    for decay in (0.9, 0.996, 0.999):
        assert pylayers.global_pool(rows[:1], "gwrp", decay)[0][0] == pytest.approx(brute_force_gwrp(rows[0], decay))


def test_expand_loss_matches_brute_force():
    probs = random_probs(ODD_SHAPE, 1)
    labels = np.zeros((ODD_SHAPE[0], 1, 1, ODD_SHAPE[1]))
    labels[:, 0, 0, 0] = 1
    labels[0, 0, 0, [1, 3]] = 1
    labels[1, 0, 0, 2] = 1
    labels[2, 0, 0, 1:] = 1
    loss, _ = pylayers.expand_loss(probs, labels, q_fg=0.9, q_bg=0.95)
    assert loss == pytest.approx(brute_force_expand(probs, labels, 0.9, 0.95), rel=1e-12)


def test_expand_loss_ignores_the_background_label_column():
    """AnnotationLayer leaves labels[..., 0] at 0 (as the original); 0 or 1 there changes nothing."""
    probs = random_probs(ODD_SHAPE, 11)
    labels = np.zeros((ODD_SHAPE[0], 1, 1, ODD_SHAPE[1]))
    labels[0, 0, 0, [1, 3]] = labels[1, 0, 0, 2] = 1
    with_background = labels.copy()
    with_background[:, 0, 0, 0] = 1
    without, with_ = pylayers.expand_loss(probs, labels), pylayers.expand_loss(probs, with_background)
    assert without[0] == with_[0]
    np.testing.assert_array_equal(without[1], with_[1])


def test_expand_param_str_sets_q_and_pooling():
    probs = random_probs(ODD_SHAPE, 2)
    labels = np.zeros((ODD_SHAPE[0], 1, 1, ODD_SHAPE[1]))
    labels[:, 0, 0, [0, 2]] = 1
    yaml_driver = Driver(pylayers.ExpandLossLayer, [probs, labels], param_str="q_fg: 0.8\nq_bg: 0.7")
    json_driver = Driver(pylayers.ExpandLossLayer, [probs, labels], param_str='{"q_fg": 0.8, "q_bg": 0.7}')
    expected = brute_force_expand(probs, labels, 0.8, 0.7)
    assert yaml_driver.forward(probs, labels)[0][0] == pytest.approx(expected, rel=1e-12)
    assert json_driver.forward(probs, labels)[0][0] == pytest.approx(expected, rel=1e-12)
    gmp = Driver(pylayers.ExpandLossLayer, [probs, labels], param_str="pooling: gmp")
    assert gmp.forward(probs, labels)[0][0] == pytest.approx(brute_force_expand(probs, labels, 0.0, 0.0))
    gap = Driver(pylayers.ExpandLossLayer, [probs, labels], param_str="pooling: gap")
    assert gap.forward(probs, labels)[0][0] == pytest.approx(brute_force_expand(probs, labels, 1.0, 1.0))


def test_expand_degenerate_images_stay_finite():
    """No present class and all classes present: those terms contribute 0, never NaN."""
    probs = random_probs(ODD_SHAPE, 3)
    labels = np.zeros((ODD_SHAPE[0], 1, 1, ODD_SHAPE[1]))
    labels[1, 0, 0, 1:] = 1  # image 0: no foreground; image 1: all; image 2: one class
    labels[2, 0, 0, 4] = 1
    loss, grad = pylayers.expand_loss(probs, labels)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert loss == pytest.approx(brute_force_expand(probs, labels, pylayers.Q_FG, pylayers.Q_BG), rel=1e-12)
    assert np.count_nonzero(grad[0, 1:]) == ODD_SHAPE[1] - 1  # image 0: only the max of each absent map


def test_seed_loss_matches_formula_and_skips_empty_images():
    probs = random_probs(ODD_SHAPE, 4)
    cues = np.zeros(ODD_SHAPE)
    cues[0, 2, 3, 4] = cues[0, 0, 5, 6] = cues[2, 1, 0, 0] = 1  # image 1 has no cue pixel
    loss, grad = pylayers.seed_loss(probs, cues)
    image0 = (np.log(probs[0, 2, 3, 4]) + np.log(probs[0, 0, 5, 6])) / 2
    image2 = np.log(probs[2, 1, 0, 0])
    assert loss == pytest.approx(-(image0 + image2) / 3, rel=1e-12)
    assert np.all(grad[1] == 0) and np.all(np.isfinite(grad))
    assert grad[2, 1, 0, 0] == pytest.approx(-1 / (3 * probs[2, 1, 0, 0]))
    empty_loss, empty_grad = pylayers.seed_loss(probs, np.zeros(ODD_SHAPE))
    assert empty_loss == 0 and not empty_grad.any()


def test_constrain_loss_is_mean_kl():
    probs, q = random_probs(ODD_SHAPE, 5), random_probs(ODD_SHAPE, 6)
    loss, _ = pylayers.constrain_loss(probs, np.log(q))
    kl = sum(q[n, c, y, x] * np.log(q[n, c, y, x] / probs[n, c, y, x])
             for n, c, y, x in np.ndindex(*ODD_SHAPE))
    assert loss == pytest.approx(kl / (ODD_SHAPE[0] * ODD_SHAPE[2] * ODD_SHAPE[3]), rel=1e-10)
    assert pylayers.constrain_loss(q, np.log(q))[0] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("cls, param_str, message", [
    (pylayers.ExpandLossLayer, "pooling: softmax", "pooling must be one of"),
    (pylayers.ExpandLossLayer, "q_fg: 1.5", "q_fg must be in [0, 1]"),
    (pylayers.ExpandLossLayer, "q_fg: high", "q_fg must be a number"),
    (pylayers.SeedLossLayer, "min_prob: 0.1", "unknown param_str key(s) ['min_prob']"),
    (pylayers.ConstrainLossLayer, "[1, 2]", "must be a mapping"),
    (pylayers.ExpandLossLayer, "{q_fg: [", "not valid YAML/JSON"),
])
def test_bad_param_str_names_layer_and_key(cls, param_str, message):
    with pytest.raises(ValueError) as err:
        Driver(cls, [np.ones((1, 2, 1, 1)) * 0.5, np.ones((1, 1, 1, 2))], param_str=param_str)
    assert message in str(err.value) and cls.__name__ in str(err.value)


def test_bad_shapes_name_the_layer():
    probs = np.full((2, 3, 4, 4), 1 / 3)
    with pytest.raises(ValueError, match="ExpandLossLayer.*labels need shape \\(2, 1, 1, 3\\)"):
        Driver(pylayers.ExpandLossLayer, [probs, np.ones((2, 3))])
    with pytest.raises(ValueError, match="SeedLossLayer.*bottom\\[1\\]"):
        Driver(pylayers.SeedLossLayer, [probs, np.ones((2, 3, 4, 5))])
    with pytest.raises(ValueError, match="need 2 bottom"):
        Driver(pylayers.ConstrainLossLayer, [probs])


def test_loss_top_is_one_element():
    probs = np.full((2, 3, 4, 4), 1 / 3)
    top = Blob(5, 5)
    layer = pylayers.ConstrainLossLayer()
    bottom = [Blob.holding(probs), Blob.holding(np.log(probs))]
    layer.setup(bottom, [top])
    layer.reshape(bottom, [top])
    assert top.shape == (1,)


def test_base_falls_back_without_a_real_caffe(monkeypatch):
    monkeypatch.setitem(sys.modules, "caffe", types.ModuleType("caffe"))  # the empty PyPI placeholder
    layer, reason = base.find_caffe_layer()
    assert layer is None and "no Layer class" in reason
    monkeypatch.setitem(sys.modules, "caffe", None)  # import caffe raises ImportError
    assert base.find_caffe_layer()[0] is None
    fake = types.ModuleType("caffe")
    fake.Layer = type("Layer", (), {})
    monkeypatch.setitem(sys.modules, "caffe", fake)
    assert base.find_caffe_layer() == (fake.Layer, None)


def test_caffe_base_prints_a_failing_layers_traceback_once(capsys):
    """Caffe's command line aborts on a Python layer's exception without printing it: the
    Caffe-side base prints it (once, through an overriding subclass too) and re-raises it."""
    fake_caffe_layer = type("Layer", (), {"param_str": "q_fg: 2"})

    class Failing(base.caffe_base(fake_caffe_layer)):
        def setup(self, bottom, top):
            return "ready"

        def forward(self, bottom, top):
            raise ValueError("labels need shape (2, 1, 1, 3)")

    class Overriding(Failing):
        def forward(self, bottom, top):
            return super().forward(bottom, top)

    assert issubclass(Overriding, fake_caffe_layer) and Overriding().setup([], []) == "ready"
    with pytest.raises(ValueError, match=r"labels need shape \(2, 1, 1, 3\)"):
        Overriding().forward([], [])
    err = capsys.readouterr().err
    assert err.count("Traceback (most recent call last)") == 1
    assert "pylayers: Overriding.forward failed (param_str 'q_fg: 2')" in err
    assert "in forward" in err and "ValueError: labels need shape (2, 1, 1, 3)" in err
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("caffe_source, expect_caffe_base", [
    ("", False),                                             # empty placeholder package
    ("raise RuntimeError('broken libcaffe')", False),        # a caffe that fails to import
    ("class Layer:\n    def __init__(self, param):\n        self.param_str = ''\n", True),
])
def test_import_with_a_caffe_on_the_path(tmp_path, caffe_source, expect_caffe_base):
    (tmp_path / "caffe").mkdir()
    (tmp_path / "caffe" / "__init__.py").write_text(caffe_source)
    script = textwrap.dedent(f"""
        import pylayers
        assert issubclass(pylayers.SeedLossLayer, pylayers.Layer)
        import sys
        caffe = sys.modules.get("caffe")
        uses_caffe = caffe is not None and hasattr(caffe, "Layer") and issubclass(pylayers.SeedLossLayer, caffe.Layer)
        assert uses_caffe == {expect_caffe_base}, pylayers.CAFFE_UNAVAILABLE_REASON
    """)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("cls", [pylayers.SeedLossLayer, pylayers.ConstrainLossLayer])
def test_no_gradient_to_the_second_bottom(cls):
    probs = random_probs((2, 3, 4, 4), 7)
    second = np.log(probs) if cls is pylayers.ConstrainLossLayer else (probs > 0.5).astype(float)
    driver = Driver(cls, [probs, second])
    driver.forward(probs, second)
    driver.bottom[1].diff[...] = 3.0
    driver.backward(np.ones(1), propagate_down=[False, True])
    assert not driver.bottom[1].diff.any() and not driver.bottom[0].diff.any()


def test_backward_after_two_forwards_uses_its_own_bottoms():
    """An engine may run forward on other arrays before backward: the gradient follows the bottoms."""
    shape = (2, 4, 5, 6)
    first, second = random_probs(shape, 8), random_probs(shape, 9)
    labels = np.zeros((2, 1, 1, 4))
    labels[:, 0, 0, [0, 2]] = 1
    driver = Driver(pylayers.ExpandLossLayer, [first, labels])
    driver.bottom[0].data = first
    driver.layer.forward(driver.bottom, driver.top)
    driver.bottom[0].data = second
    driver.layer.forward(driver.bottom, driver.top)
    driver.bottom[0].data = first
    got = driver.backward(np.ones(1))
    np.testing.assert_allclose(got, pylayers.expand_loss(first, labels)[1], rtol=1e-12)
