"""Forward + backward time of the five non-CRF SEC layers at the training shape, against naive loops.

    python bench/layers.py [--repeats 30] [--batch 15] [--classes 21] [--size 41] [--cues PATH]

Times Softmax, SeedLoss, ExpandLoss, ConstrainLoss and Annotation as Caffe calls them (forward,
then backward for the four differentiable ones), and the same computation written naively: per-image
and per-class Python loops with a full sort of every class map (as the original per-image code and
Theano-style rank pooling do). Both run in this process on one thread; the naive results are checked
equal to the layers' before timing. Prints the median per layer, the total and the naive / layer ratio.
"""
import os

# One core: BLAS / OpenMP pools must be sized before numpy is imported (export these to override).
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import gzip  # noqa: E402
import pickle  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import pylayers  # noqa: E402

SHARED_CUES = Path(__file__).resolve().parents[2] / "shared" / "data" / "localization_cues.pickle.gz"
TARGET_MS = 30.0
"""Budget for the five layers' forward + backward on one core (the issue's target)."""
SYNTHETIC_CUE_FRACTION = 0.25
"""Share of seeded pixels in synthetic cues (the real SEC cues seed about a quarter of 41 x 41)."""


class ArrayBlob:
    """The part of Caffe's Blob the layers use: data, diff, reshape."""

    def __init__(self, array):
        self.data = np.ascontiguousarray(array, dtype=np.float32)
        self.diff = np.zeros_like(self.data)

    def reshape(self, *shape):
        if self.data.shape != shape:
            self.data = np.zeros(shape, dtype=np.float32)
            self.diff = np.zeros_like(self.data)


# ---- naive peers: the same math with per-image / per-class loops and full sorts ----

def naive_softmax(scores, top_diff, min_prob):
    probs, grad = np.empty_like(scores), np.empty_like(scores)
    channels = scores.shape[1]
    for i in range(len(scores)):
        e = np.exp(scores[i] - scores[i].max(axis=0))
        s = e / e.sum(axis=0)
        probs[i] = (s + min_prob) / (s + min_prob).sum(axis=0)
        d = top_diff[i] / (1 + channels * min_prob)
        grad[i] = s * (d - (s * d).sum(axis=0))
    return probs, grad


def naive_seed(probs, cues):
    num = len(probs)
    loss, grad = 0.0, np.zeros_like(probs)
    for i in range(num):
        count = cues[i].sum()
        if count > 0:
            loss -= np.sum(cues[i] * np.log(probs[i])) / count / num
            grad[i] = -cues[i] / probs[i] / count / num
    return loss, grad


def naive_pool(values, decay):
    """Full ascending sort of one map, weights reversed (Theano style); returns value, gradient."""
    flat = values.ravel()
    order = np.argsort(flat)
    weights = decay ** np.arange(flat.size)[::-1]
    pooled = np.sum(flat[order] * weights) / weights.sum()
    grad = np.empty_like(flat)
    grad[order] = weights / weights.sum()
    return pooled, grad.reshape(values.shape)


def naive_expand(probs, labels, q_fg, q_bg):
    num, channels = probs.shape[:2]
    loss, grad = 0.0, np.zeros(probs.shape)
    for i in range(num):
        present = [c for c in range(1, channels) if labels[i, 0, 0, c] > 0.5]
        absent = [c for c in range(1, channels) if labels[i, 0, 0, c] <= 0.5]
        pooled_all = {c: naive_pool(probs[i, c], q_fg) for c in range(1, channels)}  # every class sorted
        for c in present:
            pooled, pooled_grad = pooled_all[c]
            loss -= np.log(pooled) / len(present) / num
            grad[i, c] -= pooled_grad / pooled / len(present) / num
        for c in absent:
            y, x = np.unravel_index(np.argmax(probs[i, c]), probs.shape[2:])
            loss -= np.log(1 - probs[i, c, y, x]) / len(absent) / num
            grad[i, c, y, x] += 1 / (1 - probs[i, c, y, x]) / len(absent) / num
        pooled, pooled_grad = naive_pool(probs[i, 0], q_bg)
        loss -= np.log(pooled) / num
        grad[i, 0] -= pooled_grad / pooled / num
    return loss, grad.astype(probs.dtype)


def naive_constrain(probs, log_q):
    num, _, height, width = probs.shape
    loss, grad = 0.0, np.empty_like(probs)
    for i in range(num):
        q = np.exp(log_q[i])
        loss += np.sum(q * (log_q[i] - np.log(probs[i]))) / (num * height * width)
        grad[i] = -q / probs[i] / (num * height * width)
    return loss, grad


def naive_annotation(cue_dict, ids, channels, size):
    labels = np.zeros((len(ids), 1, 1, channels), dtype=np.float32)
    cues = np.zeros((len(ids), channels, size, size), dtype=np.float32)
    for i, image in enumerate(ids):
        labels[i, 0, 0, 0] = 1
        labels[i, 0, 0, cue_dict[f"{image}_labels"]] = 1
        points = cue_dict[f"{image}_cues"]
        cues[i, points[0], points[1], points[2]] = 1
    return labels, cues


# ---- the layers, driven as Caffe does ----

def make_layer(cls, bottoms, num_tops, param_str=""):
    layer = cls(None)
    layer.param_str = param_str
    layer.phase = 0
    tops = [ArrayBlob(np.zeros(1)) for _ in range(num_tops)]
    layer.setup(bottoms, tops)
    layer.reshape(bottoms, tops)
    return layer, tops


def step(layer, bottoms, tops, top_diff=None):
    layer.forward(bottoms, tops)
    if top_diff is not None:
        tops[0].diff[...] = top_diff
        layer.backward(tops, [True, False], bottoms)


def synthetic_cue_file(folder, num_images, channels, size, rng):
    cue_dict = {}
    for image in range(num_images):
        present = rng.choice(np.arange(1, channels), size=rng.integers(1, 4), replace=False)
        seeded = np.flatnonzero(rng.random(size * size) < SYNTHETIC_CUE_FRACTION)
        classes = rng.choice(np.concatenate([[0], present]), size=seeded.size)
        cue_dict[f"{image}_labels"] = present
        cue_dict[f"{image}_cues"] = np.stack([classes, seeded // size, seeded % size])
    path = Path(folder) / "cues.pickle.gz"
    with gzip.open(path, "wb") as handle:
        pickle.dump(cue_dict, handle, protocol=2)
    return path


def median_ms(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def build(args, cue_path, rng):
    """The five layers wired as in SEC's train.prototxt, plus the naive peer of each."""
    cue_dict = pylayers.load_cues(cue_path)
    ids = sorted({int(key.split("_")[0]) for key in cue_dict})[:args.batch]
    if len(ids) < args.batch:
        raise SystemExit(f"{cue_path} holds {len(ids)} images, need --batch {args.batch}")
    shape = (args.batch, args.classes, args.size, args.size)
    id_blob = ArrayBlob(np.array(ids, dtype=np.float32))
    annotation, (label_blob, cue_blob) = make_layer(
        pylayers.AnnotationLayer, [id_blob], 2,
        f"{{cues: '{cue_path}', num_classes: {args.classes}, cue_size: {args.size}}}")
    score_blob = ArrayBlob(rng.normal(scale=3.0, size=shape))
    softmax, (prob_blob,) = make_layer(pylayers.SoftmaxLayer, [score_blob], 1)
    crf_log = ArrayBlob(np.log(pylayers.softmax_with_floor(rng.normal(scale=3.0, size=shape))))
    step(annotation, [id_blob], [label_blob, cue_blob])
    step(softmax, [score_blob], [prob_blob])
    losses = {name: make_layer(cls, [prob_blob, second], 1) for name, cls, second in (
        ("SeedLoss", pylayers.SeedLossLayer, cue_blob),
        ("ExpandLoss", pylayers.ExpandLossLayer, label_blob),
        ("ConstrainLoss", pylayers.ConstrainLossLayer, crf_log))}
    prob_diff = rng.normal(size=shape).astype(np.float32)
    one = np.ones(1, dtype=np.float32)

    fast = {
        "Softmax": lambda: step(softmax, [score_blob], [prob_blob], prob_diff),
        "SeedLoss": lambda: step(*losses["SeedLoss"][:1], [prob_blob, cue_blob], losses["SeedLoss"][1], one),
        "ExpandLoss": lambda: step(*losses["ExpandLoss"][:1], [prob_blob, label_blob], losses["ExpandLoss"][1], one),
        "ConstrainLoss": lambda: step(*losses["ConstrainLoss"][:1], [prob_blob, crf_log], losses["ConstrainLoss"][1], one),
        "Annotation": lambda: step(annotation, [id_blob], [label_blob, cue_blob]),
    }
    probs, cues, labels = prob_blob.data, cue_blob.data, label_blob.data
    naive = {
        "Softmax": lambda: naive_softmax(score_blob.data, prob_diff, pylayers.MIN_PROB),
        "SeedLoss": lambda: naive_seed(probs, cues),
        "ExpandLoss": lambda: naive_expand(probs, labels, pylayers.Q_FG, pylayers.Q_BG),
        "ConstrainLoss": lambda: naive_constrain(probs, crf_log.data),
        "Annotation": lambda: naive_annotation(cue_dict, ids, args.classes, args.size),
    }
    blobs = {"Softmax": (prob_blob, score_blob), "SeedLoss": (losses["SeedLoss"][1][0], prob_blob),
             "ExpandLoss": (losses["ExpandLoss"][1][0], prob_blob),
             "ConstrainLoss": (losses["ConstrainLoss"][1][0], prob_blob), "Annotation": (label_blob, cue_blob)}
    return fast, naive, blobs


def check_equal(fast, naive, blobs):
    """Run each layer and its naive peer once; both outputs must agree (float32 tolerance)."""
    for name in fast:
        fast[name]()
        reference = naive[name]()
        first, second = blobs[name]
        produced = (first.data, second.diff) if name != "Annotation" else (first.data, second.data)
        for got, want in zip(produced, reference):
            scale = max(np.abs(want).max(), 1e-30)
            error = np.abs(np.asarray(got, dtype=np.float64).reshape(np.shape(want)) - want).max() / scale
            if error > 1e-4:
                raise SystemExit(f"{name}: layer and naive peer differ (relative {error:.2e})")


def main(args):
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as folder:
        cue_path = args.cues
        if cue_path is None:
            cue_path = synthetic_cue_file(folder, args.batch, args.classes, args.size, rng)
        fast, naive, blobs = build(args, cue_path, rng)
    check_equal(fast, naive, blobs)
    threads = {v: os.environ[v] for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    print(f"shape {args.batch}x{args.classes}x{args.size}x{args.size} float32, cues {cue_path if args.cues else 'synthetic'}, "
          f"threads {threads}, median of {args.repeats}")
    print(f"{'layer':<15}{'pylayers ms':>12}{'naive ms':>12}{'ratio':>9}")
    total_fast = median_ms(lambda: [f() for f in fast.values()], args.repeats)
    total_naive = median_ms(lambda: [f() for f in naive.values()], max(1, args.repeats // 5))
    for name in fast:
        fast_ms = median_ms(fast[name], args.repeats)
        naive_ms = median_ms(naive[name], max(1, args.repeats // 5))
        print(f"{name:<15}{fast_ms:>12.2f}{naive_ms:>12.2f}{naive_ms / fast_ms:>8.1f}x")
    print(f"{'five together':<15}{total_fast:>12.2f}{total_naive:>12.2f}{total_naive / total_fast:>8.1f}x")
    verdict = "meets" if total_fast < TARGET_MS else "MISSES"
    print(f"target: five layers under {TARGET_MS:.0f} ms on one core -> {verdict} ({total_fast:.1f} ms)")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per measurement (median reported)")
    parser.add_argument("--batch", type=int, default=15, help="images per batch (SEC: 15)")
    parser.add_argument("--classes", type=int, default=21, help="classes incl. background (SEC: 21)")
    parser.add_argument("--size", type=int, default=41, help="score map side (SEC: 41)")
    parser.add_argument("--cues", default=None,
                        help=f"cue pickle for the Annotation layer (e.g. {SHARED_CUES}); default: synthetic cues")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the inputs")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
