"""Dataset-level segmentation metrics from one confusion matrix over all images.

Conventions: ground truth and predictions are integer class indices; ground-truth pixels equal
to `ignore` (255) are left out everywhere. Rows of the matrix are ground truth, columns are
predictions.

mIoU is the mean IoU over the classes present in the ground truth of the whole dataset. A class
present in the ground truth but never predicted counts with IoU 0. A class absent from the
ground truth but predicted gets IoU 0 in `iou()` (reported) but is left out of the mean; a class
absent from both has IoU NaN. (Averaging only classes with non-zero IoU, as some ports did,
inflates the score.) An image without a prediction can be counted with `update_missing`: every
non-ignored pixel is then wrong.
"""
import numpy as np

IGNORE_LABEL = 255


class ConfusionMatrix:
    """Accumulates a (num_classes x num_classes) confusion matrix, plus a count of pixels
    whose prediction was missing, per ground-truth class."""

    def __init__(self, num_classes, ignore=IGNORE_LABEL):
        if num_classes < 1:
            raise ValueError(f"need num_classes >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore = ignore
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.missed = np.zeros(self.num_classes, dtype=np.int64)
        self.num_images = 0

    def _valid_gt(self, gt, name):
        gt = np.asarray(gt)
        if not np.issubdtype(gt.dtype, np.integer):
            raise ValueError(f"{name}: need integer ground truth, got {gt.dtype}")
        keep = gt != self.ignore if self.ignore is not None else np.ones(gt.shape, bool)
        bad = keep & ((gt < 0) | (gt >= self.num_classes))
        if bad.any():
            raise ValueError(f"{name}: ground truth value {int(gt[bad][0])} is not a class "
                             f"(0..{self.num_classes - 1}) nor the ignore label {self.ignore}")
        return gt, keep

    def update(self, gt, pred, name="image"):
        """Add one image: gt and pred integer arrays of the same shape (name for errors)."""
        gt, keep = self._valid_gt(gt, name)
        pred = np.asarray(pred)
        if pred.shape != gt.shape:
            raise ValueError(f"{name}: prediction shape {pred.shape} != ground truth {gt.shape}")
        if not np.issubdtype(pred.dtype, np.integer):
            raise ValueError(f"{name}: need integer prediction, got {pred.dtype}")
        g = gt[keep].astype(np.int64)
        p = pred[keep].astype(np.int64)
        bad = (p < 0) | (p >= self.num_classes)
        if bad.any():
            raise ValueError(f"{name}: predicted value {int(p[bad][0])} is not a class "
                             f"(0..{self.num_classes - 1})")
        n = self.num_classes
        self.matrix += np.bincount(g * n + p, minlength=n * n).reshape(n, n)
        self.num_images += 1

    def update_missing(self, gt, name="image"):
        """Add an image whose prediction is missing: every non-ignored pixel counts as wrong."""
        gt, keep = self._valid_gt(gt, name)
        self.missed += np.bincount(gt[keep].astype(np.int64), minlength=self.num_classes)
        self.num_images += 1

    def gt_counts(self):
        """Non-ignored ground-truth pixels per class."""
        return self.matrix.sum(axis=1) + self.missed

    def present(self):
        """Boolean mask of the classes present in the ground truth so far."""
        return self.gt_counts() > 0

    def iou(self):
        """Per-class IoU (float64, NaN for a class neither in ground truth nor predicted)."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.gt_counts() + self.matrix.sum(axis=0) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def miou(self):
        """Mean IoU over the classes present in the ground truth (NaN when there are none)."""
        present = self.present()
        return float(self.iou()[present].mean()) if present.any() else float("nan")

    def pixel_accuracy(self):
        total = self.gt_counts().sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def class_accuracy(self):
        """Per-class recall TP / ground-truth pixels (NaN for classes absent from ground truth)."""
        counts = self.gt_counts()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, np.diag(self.matrix) / np.maximum(counts, 1), np.nan)

    def mean_accuracy(self):
        """Mean of class_accuracy over the classes present in the ground truth."""
        present = self.present()
        return float(self.class_accuracy()[present].mean()) if present.any() else float("nan")

    def summary(self, class_names=None):
        """Plain-data results for JSON: per-class IoU (None for NaN), mIoU, accuracies."""
        if class_names is None:
            class_names = [f"class_{i}" for i in range(self.num_classes)]
        if len(class_names) != self.num_classes:
            raise ValueError(f"need {self.num_classes} class names, got {len(class_names)}")
        iou, present = self.iou(), self.present()
        return {
            "miou": self.miou(),
            "pixel_accuracy": self.pixel_accuracy(),
            "mean_accuracy": self.mean_accuracy(),
            "num_images": self.num_images,
            "classes": [{"name": name, "iou": None if np.isnan(v) else float(v),
                         "in_ground_truth": bool(p)}
                        for name, v, p in zip(class_names, iou, present)],
        }
