"""sec.metrics against hand-computed confusion matrices (ignore label, absent classes)."""
import itertools

import numpy as np
import pytest

from sec.metrics import ConfusionMatrix

IGNORE = 255

# Four classes. Class 3 never occurs in the ground truth but is predicted once.
GT = np.array([[0, 0, 1, 1],
               [0, 2, 1, IGNORE],
               [2, 2, 2, IGNORE]])
PRED = np.array([[0, 1, 1, 1],
                 [0, 2, 3, 0],
                 [2, 0, 2, 2]])
# Rows gt, columns pred, pixels with gt 255 left out (counted by hand from the arrays above).
HAND_MATRIX = np.array([[2, 1, 0, 0],
                        [0, 2, 0, 1],
                        [1, 0, 3, 0],
                        [0, 0, 0, 0]])


def brute_force_matrix(pairs, num_classes):
    matrix = np.zeros((num_classes, num_classes), np.int64)
    for gt, pred in pairs:
        for g, p in zip(gt.ravel(), pred.ravel()):
            if g != IGNORE:
                matrix[g, p] += 1
    return matrix


def test_matrix_and_scores_match_hand_computation():
    cm = ConfusionMatrix(4)
    cm.update(GT, PRED)
    np.testing.assert_array_equal(cm.matrix, HAND_MATRIX)
    # IoU = TP / (gt + pred - TP): class 0: 2/(3+3-2), 1: 2/(3+3-2), 2: 3/(4+3-3), 3: 0/(0+1-0).
    np.testing.assert_allclose(cm.iou(), [0.5, 0.5, 0.75, 0.0])
    # Class 3 is predicted but absent from the ground truth: reported 0, left out of the mean.
    assert cm.miou() == pytest.approx((0.5 + 0.5 + 0.75) / 3)
    assert cm.pixel_accuracy() == pytest.approx(7 / 10)
    assert cm.mean_accuracy() == pytest.approx((2 / 3 + 2 / 3 + 3 / 4) / 3)
    assert cm.present().tolist() == [True, True, True, False]


def test_class_present_but_never_predicted_counts_as_zero():
    gt = np.array([[0, 1, 2]])
    pred = np.array([[0, 1, 1]])
    cm = ConfusionMatrix(4)
    cm.update(gt, pred)
    iou = cm.iou()
    assert iou[2] == 0.0 and np.isnan(iou[3])
    # Mean over classes 0, 1, 2 (present in gt): 1, 1/2, 0 -> not the inflated mean of non-zero IoUs.
    assert cm.miou() == pytest.approx((1 + 0.5 + 0) / 3)


def test_accumulates_over_images_like_one_big_image():
    rng = np.random.default_rng(0)
    images = []
    for _ in range(5):
        gt = rng.integers(0, 5, size=(6, 7))
        gt[rng.random(gt.shape) < 0.2] = IGNORE
        images.append((gt, rng.integers(0, 5, size=(6, 7))))
    cm = ConfusionMatrix(5)
    for gt, pred in images:
        cm.update(gt, pred)
    np.testing.assert_array_equal(cm.matrix, brute_force_matrix(images, 5))
    assert cm.num_images == 5
    whole = ConfusionMatrix(5)
    whole.update(np.concatenate([g for g, _ in images]), np.concatenate([p for _, p in images]))
    np.testing.assert_allclose(cm.iou(), whole.iou())


def test_missing_prediction_makes_every_pixel_wrong():
    cm = ConfusionMatrix(3)
    cm.update(np.array([[0, 1]]), np.array([[0, 1]]))
    cm.update_missing(np.array([[1, 1, 2, IGNORE]]))
    # class 0: 1/1; class 1: TP 1, gt 3 -> 1/3; class 2: 0/1.
    np.testing.assert_allclose(cm.iou(), [1.0, 1 / 3, 0.0])
    assert cm.pixel_accuracy() == pytest.approx(2 / 5)
    assert cm.num_images == 2


def test_summary_is_plain_data():
    cm = ConfusionMatrix(4)
    cm.update(GT, PRED)
    summary = cm.summary(["a", "b", "c", "d"])
    assert [c["name"] for c in summary["classes"]] == ["a", "b", "c", "d"]
    assert summary["classes"][3] == {"name": "d", "iou": 0.0, "in_ground_truth": False}
    assert summary["miou"] == pytest.approx(cm.miou())
    empty = ConfusionMatrix(2).summary()
    assert [c["iou"] for c in empty["classes"]] == [None, None]


@pytest.mark.parametrize("gt, pred, message", [
    (np.zeros((2, 2), int), np.zeros((2, 3), int), "shape"),
    (np.full((1, 1), 7), np.zeros((1, 1), int), "ground truth value 7"),
    (np.zeros((1, 1), int), np.full((1, 1), 4), "predicted value 4"),
    (np.zeros((1, 1), float), np.zeros((1, 1), int), "integer ground truth"),
])
def test_bad_input_is_an_error(gt, pred, message):
    with pytest.raises(ValueError, match=message):
        ConfusionMatrix(4).update(gt, pred, name="img_1")


def test_ignored_pixels_are_never_counted():
    gt = np.full((3, 3), IGNORE)
    gt[1, 1] = 2
    for pred_value in range(3):
        cm = ConfusionMatrix(3)
        cm.update(gt, np.full((3, 3), pred_value))
        assert cm.matrix.sum() == 1
    assert list(itertools.chain(*cm.matrix.tolist())).count(1) == 1
