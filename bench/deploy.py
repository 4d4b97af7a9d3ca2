"""Deploy throughput: this project's pipeline against the original demo's way, in one run.

Both pipelines read the same JPEGs (375x500 by default), preprocess with the original formula,
run the same net (models/sec/deploy.prototxt, DeepLab-LargeFOV at 321x321, random weights unless
--weights) and write palette PNGs. They differ in what the original deploy.py did one image at a
time in numpy/scipy:

- original: decode, forward a batch of 1, numpy softmax, scipy.ndimage.zoom(order=1) of the
  H x W x 21 probabilities, clip at 1e-5, one pydensecrf2 dense CRF call per image (the same
  kernels as the SEC wrapper: Gaussian sxy 3 weight 3, bilateral sxy 80 srgb 13 weight 10,
  10 iterations), argmax;
- ours (sec.deploy): decoding in threads ahead of the net, batches, softmax/upsampling/log in
  torch, the CRFs of a batch in parallel threads through krahenbuhl2013.CRF_batch.

Prints images per second for each, with and without CRF, and the ratios, twice: end to end
(the forward, identical in both, included) and for the work around the net only (both fed the
same cached net outputs), since on a CPU the VGG16 forward alone can take most of the time.
    python bench/deploy.py [--count 6] [--prototxt P] [--weights W] [--device cpu|cuda]
"""
import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.ndimage
import torch
from PIL import Image

from sec import caffe, data, visualize
from sec import deploy as pipeline

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PROTOTXT = REPO_ROOT / "models" / "sec" / "deploy.prototxt"
# Original SEC CRF wrapper kernels (scale_factor 1): positions-only and appearance terms.
GAUSSIAN_SXY, GAUSSIAN_WEIGHT = 3.0, 3.0
BILATERAL_SXY, BILATERAL_SRGB, BILATERAL_WEIGHT = 80.0, 13.0, 10.0
# Smoothness of the synthetic test photographs (Gaussian sigma in pixels).
IMAGE_SMOOTHING = 6.0
# Random weights: He-normal for filters, small normal biases.
BIAS_STD = 0.01


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=6, help="images per measurement")
    parser.add_argument("--height", type=int, default=375, help="image height")
    parser.add_argument("--width", type=int, default=500, help="image width")
    parser.add_argument("--prototxt", type=Path, default=DEFAULT_PROTOTXT, help="deploy net")
    parser.add_argument("--weights", type=Path, default=None,
                        help=".caffemodel (default: seeded random weights)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where both pipelines run the net")
    parser.add_argument("--batch", type=int, default=4, help="our pipeline's batch size")
    parser.add_argument("--jobs", type=int, default=2, help="our pipeline's decoding threads")
    parser.add_argument("--no-crf-runs", action="store_true", help="skip the runs with CRF")
    parser.add_argument("--no-end-to-end", action="store_true",
                        help="only the runs with cached net outputs (skips the slow forwards)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed runs per pipeline, interleaved; the best one counts")
    parser.add_argument("--seed", type=int, default=0, help="seed of images and weights")
    return parser.parse_args(argv)


def make_images(folder, count, height, width, seed):
    """Smooth random colour fields (CRF cost does not depend on content) saved as JPEG."""
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(count):
        noise = rng.random((height, width, 3)) * 255
        image = scipy.ndimage.gaussian_filter(noise, (IMAGE_SMOOTHING, IMAGE_SMOOTHING, 0))
        image = (image - image.min()) / max(np.ptp(image), 1.0) * 255
        path = Path(folder) / f"image{k:03d}.jpg"
        Image.fromarray(image.astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def build_net(args):
    if args.device == "cuda":
        caffe.set_mode_gpu()
    else:
        caffe.set_mode_cpu()
    if args.weights is not None:
        net = caffe.Net(str(args.prototxt), caffe.TEST, weights=str(args.weights))
    else:
        net = caffe.Net(str(args.prototxt), caffe.TEST)
        generator = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            for info in net.learnable_params():
                values = torch.randn(info.param.shape, generator=generator)
                if info.param.dim() > 1:
                    values *= (2.0 / info.param[0].numel()) ** 0.5
                else:
                    values *= BIAS_STD
                info.param.copy_(values)
    net.to(args.device)
    net.eval()
    return net


def _key(inputs):
    return hashlib.sha1(np.ascontiguousarray(inputs).tobytes()).digest()


class CachedNet:
    """The net's surface with its outputs looked up from a forward done once per image, so that
    both pipelines can be timed without the forward."""

    def __init__(self, net, output, inputs_list):
        self.inputs, self.outputs, self.blobs = net.inputs, net.outputs, net.blobs
        self.layers, self.top_names = net.layers, net.top_names
        self.output = output
        self.cache = {}
        with torch.no_grad():
            for inputs in inputs_list:
                feed = {net.inputs[0]: torch.from_numpy(inputs[None]).to(net.device)}
                self.cache[_key(inputs)] = net.run(feed)[output][0].clone()

    def run(self, feed):
        batch = next(iter(feed.values())).cpu().numpy()
        return {self.output: torch.stack([self.cache[_key(x)] for x in batch])}


def pydensecrf_crf(image, unary):
    """The original wrapper's CRF(image, unary, scale_factor=1) through pydensecrf2: HxWxL."""
    import pydensecrf.densecrf as dcrf
    height, width, labels = unary.shape
    crf = dcrf.DenseCRF2D(width, height, labels)
    crf.setUnaryEnergy(np.ascontiguousarray(-unary.transpose(2, 0, 1).reshape(labels, -1),
                                            dtype=np.float32))
    crf.addPairwiseGaussian(sxy=GAUSSIAN_SXY, compat=GAUSSIAN_WEIGHT)
    crf.addPairwiseBilateral(sxy=BILATERAL_SXY, srgb=BILATERAL_SRGB,
                             rgbim=np.array(image, order="C"), compat=BILATERAL_WEIGHT)
    marginals = np.array(crf.inference(pipeline.CRF_ITERATIONS), dtype=np.float32)
    return marginals.reshape(labels, height, width).transpose(1, 2, 0)


def original_pipeline(paths, net, segmenter, out_dir, crf):
    """One image at a time, as the original deploy.py's predict_mask + write_to_png_file."""
    for path in paths:
        image = np.array(Image.open(path).convert("RGB"))
        inputs = data.preprocess(image, *segmenter.input_size)
        feed = {segmenter.input: torch.from_numpy(inputs[None]).to(segmenter.device)}
        with torch.no_grad():
            scores = net.run(feed)[segmenter.output][0].float().cpu().numpy().transpose(1, 2, 0)
        if segmenter.output_is_softmax:  # the net ends in a Softmax layer
            probs = scores
        else:
            scores_exp = np.exp(scores - scores.max(axis=2, keepdims=True))
            probs = scores_exp / scores_exp.sum(axis=2, keepdims=True)
        height, width = image.shape[:2]
        probs = scipy.ndimage.zoom(probs, (height / probs.shape[0], width / probs.shape[1], 1.0),
                                   order=1)
        probs[probs < pipeline.PROB_FLOOR] = pipeline.PROB_FLOOR
        if crf:
            mask = np.argmax(pydensecrf_crf(image, np.log(probs)), axis=2)
        else:
            mask = np.argmax(probs, axis=2)
        visualize.save_palette_png(mask.astype(np.uint8), Path(out_dir) / f"{path.stem}.png")


def our_pipeline(paths, net, segmenter, out_dir, args):
    pipeline.deploy(paths, out_dir, segmenter, batch=args.batch, jobs=args.jobs, overwrite=True,
                    progress=False)


def images_per_second(run, paths, out_dir):
    run(paths[:1], out_dir)   # warm-up: first-call allocations, thread pools
    start = time.perf_counter()
    run(paths, out_dir)
    return len(paths) / (time.perf_counter() - start)


def forward_per_second(net, segmenter, inputs_list):
    """Images per second of the forward alone, one image at a time (as the original)."""
    feed = {segmenter.input: torch.from_numpy(inputs_list[0][None]).to(segmenter.device)}
    with torch.no_grad():
        net.run(feed)
        start = time.perf_counter()
        for inputs in inputs_list:
            net.run({segmenter.input: torch.from_numpy(inputs[None]).to(segmenter.device)})
    return len(inputs_list) / (time.perf_counter() - start)


def measure(net, crf, paths, folder, args, have_pydensecrf):
    """(ours img/s, original img/s or None) for one net and CRF setting: the best of
    args.repeats runs each, alternating, so that load from other processes hits both alike."""
    segmenter = pipeline.Segmenter(net, args.device, crf=crf)
    ours, original = [], []
    for _ in range(args.repeats):
        ours.append(images_per_second(lambda p, o: our_pipeline(p, net, segmenter, o, args),
                                      paths, Path(folder) / "ours"))
        if not crf or have_pydensecrf:
            original.append(images_per_second(
                lambda p, o: original_pipeline(p, net, segmenter, o, crf), paths,
                Path(folder) / "original"))
    return max(ours), max(original) if original else None


def main(args):
    try:
        import pydensecrf.densecrf  # noqa: F401  (only checking that it is there)
        have_pydensecrf = True
    except ImportError:
        have_pydensecrf = False
        print("pydensecrf2 is absent (pip install pydensecrf2): the original pipeline's CRF runs "
              "are skipped")
    net = build_net(args)
    print(f"net {args.prototxt.name}, {args.count} images {args.height}x{args.width}, device "
          f"{args.device}, torch threads {torch.get_num_threads()}, batch {args.batch}, "
          f"jobs {args.jobs}")
    rows = []
    crf_settings = [False] if args.no_crf_runs else [False, True]
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(tmp, args.count, args.height, args.width, args.seed)
        probe = pipeline.Segmenter(net, args.device)
        inputs_list = [data.preprocess(data.load_image(p), *probe.input_size) for p in paths]
        print(f"forward alone: {forward_per_second(net, probe, inputs_list):.3f} img/s")
        cached = CachedNet(net, probe.output, inputs_list)
        runs = [("net outputs cached", cached)]
        if not args.no_end_to_end:
            runs.append(("end to end", net))
        for label, used in runs:
            for crf in crf_settings:
                rows.append((label, crf) + measure(used, crf, paths, tmp, args, have_pydensecrf))
    print(f"{'':20} {'CRF':4} {'ours img/s':>11} {'original img/s':>15} {'ratio':>7}")
    for label, crf, ours, original in rows:
        ratio = f"{ours / original:7.2f}" if original else f"{'n/a':>7}"
        shown = f"{original:15.3f}" if original else f"{'n/a':>15}"
        print(f"{label:20} {'yes' if crf else 'no':4} {ours:11.3f} {shown} {ratio}")


if __name__ == "__main__":
    main(parse_args())
