"""Statistics and a figure of a localization cue pickle: seeds per image, class balance and, where
ground truth exists, seed precision (fraction of seeds whose class is right) and recall per class
(fraction of a class's ground-truth cells that hold a seed of that class).

Ground truth is compared on the cue grid: the mask sampled at the pixels of the cue_size x
cue_size cells, corners aligned (sec.synthetic.grid_sample); cells whose truth is `ignore` (255) count for neither.
"""
from dataclasses import dataclass, field

import numpy as np

from sec.localization import UNSEEDED, cues_to_seeds
from sec.synthetic import grid_sample, grid_upsample

IGNORE_LABEL = 255
NUM_EXAMPLES = 6
FIGURE_DPI = 100
UNSEEDED_SHOWN = 255   # seed maps are drawn with unseeded cells in the palette's ignore colour


@dataclass
class CueStats:
    """Counts over a set of images; see `cue_statistics`."""
    num_classes: int
    cue_size: int
    seeds_per_image: list = field(default_factory=list)
    class_seeds: np.ndarray = None            # seeds of each class
    labelled: np.ndarray = None               # images labelled with each class
    labelled_without_seed: np.ndarray = None  # of those, images without a seed of the class
    seed_correct: np.ndarray = None           # per seeded class, seeds whose truth is that class
    seed_judged: np.ndarray = None            # per seeded class, seeds on cells with truth
    truth_cells: np.ndarray = None            # per class, ground-truth cells
    truth_found: np.ndarray = None            # per class, ground-truth cells seeded with the class
    images_with_truth: int = 0

    def __post_init__(self):
        for name in ("class_seeds", "labelled", "labelled_without_seed", "seed_correct",
                     "seed_judged", "truth_cells", "truth_found"):
            setattr(self, name, np.zeros(self.num_classes, np.int64))

    @property
    def num_images(self):
        return len(self.seeds_per_image)

    @property
    def seeded_fraction(self):
        cells = self.num_images * self.cue_size ** 2
        return float(np.sum(self.seeds_per_image)) / cells if cells else float("nan")

    @property
    def precision(self):
        judged = self.seed_judged.sum()
        return float(self.seed_correct.sum() / judged) if judged else float("nan")

    def class_precision(self):
        return np.where(self.seed_judged > 0, self.seed_correct / np.maximum(self.seed_judged, 1), np.nan)

    def class_recall(self):
        return np.where(self.truth_cells > 0, self.truth_found / np.maximum(self.truth_cells, 1), np.nan)

    def summary(self, class_names):
        """Plain-data dict of every statistic (for JSON)."""
        def per_class(values):
            return {name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, values)}
        return {"num_images": self.num_images, "seeded_fraction": self.seeded_fraction,
                "seeds_per_image_mean": float(np.mean(self.seeds_per_image)) if self.num_images else None,
                "precision": None if np.isnan(self.precision) else self.precision,
                "class_seeds": dict(zip(class_names, self.class_seeds.tolist())),
                "labelled_without_seed": dict(zip(class_names, self.labelled_without_seed.tolist())),
                "class_precision": per_class(self.class_precision()),
                "class_recall": per_class(self.class_recall()),
                "images_with_truth": self.images_with_truth}


def cue_statistics(cues, ids, num_classes, cue_size, truth_of=None):
    """CueStats of the images `ids` of a cue dict (original pickle format).

    truth_of(id) -> ground-truth mask (any size, class indices, 255 ignored) or None.
    """
    stats = CueStats(num_classes, cue_size)
    for image in ids:
        points = np.asarray(cues[f"{image}_cues"], np.int64).reshape(3, -1)
        labels = np.asarray(cues[f"{image}_labels"], np.int64).reshape(-1)
        stats.seeds_per_image.append(points.shape[1])
        stats.class_seeds += np.bincount(points[0], minlength=num_classes)
        seeded = set(points[0].tolist())
        for c in labels:
            stats.labelled[c] += 1
            stats.labelled_without_seed[c] += c not in seeded
        mask = truth_of(image) if truth_of is not None else None
        if mask is None:
            continue
        stats.images_with_truth += 1
        truth = grid_sample(np.asarray(mask), cue_size).astype(np.int64)
        seeds = cues_to_seeds(points, cue_size)
        valid = truth != IGNORE_LABEL
        judged = (seeds != UNSEEDED) & valid
        stats.seed_judged += np.bincount(seeds[judged], minlength=num_classes)
        stats.seed_correct += np.bincount(seeds[judged & (seeds == truth)], minlength=num_classes)
        stats.truth_cells += np.bincount(truth[valid], minlength=num_classes)[:num_classes]
        found = valid & (seeds == truth)
        stats.truth_found += np.bincount(truth[found], minlength=num_classes)[:num_classes]
    return stats


def _percent(value):
    return "   n/a" if value is None or np.isnan(value) else f"{100 * value:6.2f}"


def format_report(stats, class_names, title="localization cues"):
    """The text report: totals, then one line per class."""
    seeds = np.asarray(stats.seeds_per_image)
    lines = [f"{title}: {stats.num_images} images, {stats.cue_size}x{stats.cue_size} grid"]
    if stats.num_images:
        lines.append(f"seeds per image: mean {seeds.mean():.1f}, min {seeds.min()}, median "
                     f"{np.median(seeds):.0f}, max {seeds.max()}; seeded cells {_percent(stats.seeded_fraction)} %")
    if stats.images_with_truth:
        lines.append(f"seed precision {_percent(stats.precision)} % over {stats.images_with_truth} images "
                     "with ground truth")
    total = max(int(stats.class_seeds.sum()), 1)
    lines.append(f"  {'class':<12s} {'seeds %':>8s} {'labelled':>9s} {'no seed':>8s} {'prec %':>7s} {'recall %':>9s}")
    precision, recall = stats.class_precision(), stats.class_recall()
    for c, name in enumerate(class_names):
        lines.append(f"  {name:<12s} {100 * stats.class_seeds[c] / total:8.2f} {stats.labelled[c]:9d} "
                     f"{stats.labelled_without_seed[c]:8d} {_percent(precision[c]):>7s} {_percent(recall[c]):>9s}")
    return "\n".join(lines)


def seed_mask(points, cue_size):
    """Seed map of (3, K) cues as a uint8 mask, unseeded cells UNSEEDED_SHOWN (for sec.visualize)."""
    seeds = cues_to_seeds(points, cue_size)
    return np.where(seeds == UNSEEDED, UNSEEDED_SHOWN, seeds).astype(np.uint8)


def save_report_figure(path, stats, class_names, examples=()):
    """PNG: class balance and per-class precision/recall bars, then example rows
    (image | seeds | ground truth when given). examples: (title, image HxWx3 uint8, seed mask,
    truth mask or None)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    from sec import visualize

    rows = 1 + len(examples)
    figure = pyplot.figure(figsize=(10, 3.2 * rows))
    grid = figure.add_gridspec(rows, 3)
    positions = np.arange(len(class_names))
    total = max(int(stats.class_seeds.sum()), 1)
    axes = figure.add_subplot(grid[0, 0])
    axes.bar(positions, 100 * stats.class_seeds / total, color="tab:blue")
    axes.set_title(f"class balance (seeds, {stats.num_images} images)", fontsize=9)
    axes.set_ylabel("% of seeds")
    axes.set_xticks(positions, class_names, rotation=60, fontsize=7)
    axes = figure.add_subplot(grid[0, 1:])
    width = 0.4
    axes.bar(positions - width / 2, 100 * np.nan_to_num(stats.class_precision()), width, label="precision")
    axes.bar(positions + width / 2, 100 * np.nan_to_num(stats.class_recall()), width, label="recall")
    axes.set_ylim(0, 100)
    axes.set_title(f"per class (overall precision {_percent(stats.precision).strip()} %, "
                   f"seeded {_percent(stats.seeded_fraction).strip()} %)", fontsize=9)
    axes.set_xticks(positions, class_names, rotation=60, fontsize=7)
    axes.legend(fontsize=7)
    for row, (title, image, seeds, truth) in enumerate(examples, start=1):
        height, width_px = image.shape[:2]
        cells = [(f"{title}", image),
                 ("seeds (pale: none)", visualize.colorize(grid_upsample(seeds, (height, width_px))))]
        if truth is not None:
            cells.append(("ground truth", visualize.colorize(np.asarray(truth))))
        for col, (name, picture) in enumerate(cells):
            axes = figure.add_subplot(grid[row, col])
            axes.imshow(picture, interpolation="nearest")
            axes.set_title(name, fontsize=8)
            axes.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=FIGURE_DPI)
    pyplot.close(figure)
    return path
