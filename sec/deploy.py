"""The deploy pipeline: a folder of images in, one palette PNG mask per image out.

Per image, as the original SEC deploy.py did it: decode (RGB, EXIF-rotated), resize to the net's
input size with scipy.ndimage.zoom(order=1), BGR, mean (104, 117, 123) subtracted (`sec.data`);
forward; softmax over the class axis; bilinear upsampling of the probabilities to the image's own
size (align_corners=True, which is what scipy.ndimage.zoom(order=1) computes); optionally a dense
CRF at full resolution on log(max(probs, 1e-5)) (scale_factor 1, 10 iterations); argmax.

What is different from the original loop, for speed: images are decoded in threads ahead of the
network, preprocessed images are batched through the net, softmax/upsampling/log run in torch (on
the GPU with device="cuda"), and the CRFs of a batch run in parallel threads through
`krahenbuhl2013.CRF_batch`.

Outputs (file names keep the image's base name):
- `<out>/<name>.png`: palette PNG, class indices 0..L-1, PASCAL VOC colour map, image size;
- `<out>/overlay/<name>.jpg` (overlay=True): image and coloured mask blended;
- `<out>/probs/<name>.npz` (probs=True): `probs` float32 L x h x w, the softmax at the net's output
  resolution (before upsampling and CRF), and `image_size` (H, W); `load_probs` upsamples it back
  exactly as the pipeline does.
Every file is written to a hidden temporary name and renamed, so an interrupted run never leaves a
half-written file under an output name; existing outputs are kept unless overwrite=True.
"""
import json
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from sec import data, visualize

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm")
# The original deploy.py clips the upsampled probabilities at 1e-5 before the log for the CRF.
PROB_FLOOR = 1e-5
CRF_ITERATIONS = 10
CRF_SCALE_FACTOR = 1.0  # full resolution: the CRF kernels are used at their nominal widths
MAX_CLASSES = 255  # uint8 masks, 255 being the VOC ignore label
OVERLAY_DIR = "overlay"
PROBS_DIR = "probs"
OVERLAY_JPEG_QUALITY = 90
# Images decoded ahead of the network: this many batches beyond the one being processed.
PREFETCH_BATCHES = 2


class DeployError(Exception):
    """A problem with the model, the folders or the options; the message says what to do."""


@dataclass
class ModelSpec:
    """Which net to run: prototxt and weights, and where the choice came from."""
    prototxt: Path
    weights: Path
    source: str
    classes: str = None
    num_classes: int = None


def _resolve(path, base):
    path = Path(path)
    return path if path.is_absolute() else base / path


def resolve_model(weights, prototxt, latest, default_prototxt):
    """Pick prototxt and weights from the flags, else from `latest` (runs/latest.json).

    weights/prototxt: paths given on the command line or None. latest: the runs/latest.json
    written by training; relative paths in it are taken relative to the folder holding runs/.
    default_prototxt: used with an explicit --weights and no --prototxt. Raises DeployError with
    the way out when nothing usable is found.
    """
    latest = Path(latest)
    record = None
    if weights is None:
        if not latest.is_file():
            raise DeployError(
                f"no --weights given and no trained model found: {latest} does not exist. "
                f"Train one with `bash training/train.sh` (it writes runs/latest.json) or pass "
                f"--weights W.caffemodel [--prototxt deploy.prototxt].")
        try:
            record = json.loads(latest.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DeployError(f"cannot read {latest}: {err}") from err
        missing = [key for key in ("weights", "deploy_prototxt") if key not in record]
        if missing:
            raise DeployError(f"{latest} lacks {missing}: rerun training/train.sh or pass "
                              f"--weights")
        base = latest.resolve().parent.parent
        weights = _resolve(record["weights"], base)
        if prototxt is None:
            prototxt = _resolve(record["deploy_prototxt"], base)
        source = f"{latest} (latest training run)"
    else:
        source = "--weights"
    prototxt = Path(prototxt if prototxt is not None else default_prototxt)
    weights = Path(weights)
    if not weights.is_file():
        where = f" (named in {latest})" if record is not None else ""
        raise DeployError(f"weights file not found: {weights}{where}")
    if not prototxt.is_file():
        raise DeployError(f"deploy prototxt not found: {prototxt}")
    record = record or {}
    return ModelSpec(prototxt, weights, source, record.get("classes"), record.get("num_classes"))


def list_images(folder):
    """Image files directly in `folder` (by extension, any case), sorted; hidden files skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DeployError(f"image folder not found: {folder}")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS)


@dataclass
class Outputs:
    """The files one image produces; None for an output that was not asked for."""
    mask: Path
    overlay: Path = None
    probs: Path = None

    def wanted(self):
        return [p for p in (self.mask, self.overlay, self.probs) if p is not None]

    def done(self):
        return all(p.is_file() for p in self.wanted())


def output_paths(images, out_dir, overlay=False, probs=False):
    """Outputs for each image path; DeployError when two images would write the same mask."""
    out_dir = Path(out_dir)
    by_name = {}
    for image in images:
        by_name.setdefault(image.stem, []).append(image)
    clashes = [names for names in by_name.values() if len(names) > 1]
    if clashes:
        listed = "; ".join(", ".join(p.name for p in names) for names in clashes)
        raise DeployError(f"images with the same base name would write the same mask: {listed}. "
                          f"Rename them or deploy them into different --out folders.")
    return [Outputs(out_dir / f"{image.stem}.png",
                    out_dir / OVERLAY_DIR / f"{image.stem}.jpg" if overlay else None,
                    out_dir / PROBS_DIR / f"{image.stem}.npz" if probs else None)
            for image in images]


def atomic_save(path, save):
    """Call save(tmp_path) on a hidden sibling of `path` with the same suffix, then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        save(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def upsample(probs, size):
    """L x h x w tensor -> L x H x W, bilinear with corners aligned (= scipy zoom order=1)."""
    return F.interpolate(probs[None], size=tuple(size), mode="bilinear", align_corners=True)[0]


def crf_unary(probs, size):
    """L x h x w probabilities -> H x W x L float32 numpy log(max(upsampled, PROB_FLOOR)).

    Upsampled in channels-last layout so that the H x W x L array the CRF reads needs no copy."""
    up = F.interpolate(probs[None].contiguous(memory_format=torch.channels_last), size=tuple(size),
                       mode="bilinear", align_corners=True)
    return up.clamp_min_(PROB_FLOOR).log_()[0].permute(1, 2, 0).contiguous().cpu().numpy()


def load_probs(path):
    """probs .npz written by the pipeline -> L x H x W float32 at the image's size."""
    with np.load(path) as stored:
        probs, size = stored["probs"], stored["image_size"]
    return upsample(torch.from_numpy(probs), size).numpy()


class Segmenter:
    """A deploy net and the steps after it: softmax, upsampling, optional CRF, argmax.

    net: a `sec.caffe.Net` (TEST phase) or anything with `.inputs`, `.outputs`, `.blobs`,
    `.layers`, `.top_names` and `.run(feed) -> dict[str, Tensor]`. The input blob is
    net.inputs[0]; its declared H x W is the size images are resized to (the batch dimension is
    free). The output blob is `output`, or the net's only output: class scores, softmaxed here,
    or probabilities already when a Softmax layer produces it (as in models/sec/deploy.prototxt).
    """

    def __init__(self, net, device="cpu", output=None, crf=False, crf_threads=0):
        if not net.inputs:
            raise DeployError("the deploy net declares no input blob (need an Input layer)")
        self.net = net
        self.input = net.inputs[0]
        if output is None:
            if len(net.outputs) != 1:
                raise DeployError(f"the deploy net has outputs {list(net.outputs)}: name the "
                                  f"score blob with --output-blob")
            output = net.outputs[0]
        self.output = output
        self.output_is_softmax = _producer_type(net, output) == "Softmax"
        self.input_size = tuple(int(d) for d in net.blobs[self.input].data.shape[2:])
        self.num_classes = int(net.blobs[output].data.shape[1])
        if self.num_classes > MAX_CLASSES:
            raise DeployError(f"blob '{output}' has {self.num_classes} channels: a palette PNG "
                              f"holds at most {MAX_CLASSES} classes")
        self.device = torch.device(device)
        self.crf = crf
        self.crf_threads = crf_threads
        self._crf_batch = _import_crf_batch() if crf else None

    def probabilities(self, inputs):
        """N x 3 x h x w float32 (BGR, mean-subtracted) -> N x L x h' x w' softmax, on device."""
        feed = {self.input: torch.from_numpy(np.ascontiguousarray(inputs)).to(self.device)}
        with torch.no_grad():
            scores = self.net.run(feed)[self.output].float()
        return scores if self.output_is_softmax else torch.softmax(scores, dim=1)

    def masks(self, images, probs):
        """Masks (H x W uint8, per image size) from RGB uint8 images and their net-size probs."""
        if self.crf:
            return self._crf_masks(images, probs)
        return [_to_uint8(upsample(p, image.shape[:2]).argmax(dim=0))
                for image, p in zip(images, probs)]

    def _crf_masks(self, images, probs):
        from sec.caffe.layers_sec import layer_impl
        impl = layer_impl()
        if impl == "torch" or (impl == "auto" and self.device.type != "cpu"):
            return [self._device_crf_mask(image, p) for image, p in zip(images, probs)]
        unaries = [crf_unary(p, image.shape[:2]) for image, p in zip(images, probs)]
        marginals = self._crf_batch([np.ascontiguousarray(image) for image in images], unaries,
                                    maxiter=CRF_ITERATIONS, scale_factor=CRF_SCALE_FACTOR,
                                    num_threads=self.crf_threads)
        return [_to_uint8(torch.from_numpy(np.asarray(q)).argmax(dim=2)) for q in marginals]


    def _device_crf_mask(self, image, probs):
        """The same CRF in torch on the probabilities' device (sec.nn.crf; SEC_LAYERS as the engine)."""
        from sec.nn.crf import crf
        unary = upsample(probs, image.shape[:2]).clamp_min_(PROB_FLOOR).log_().permute(1, 2, 0)[None]
        pixels = torch.from_numpy(np.ascontiguousarray(image)).to(probs.device)[None]
        marginals = crf(pixels, unary, maxiter=CRF_ITERATIONS, scale_factor=CRF_SCALE_FACTOR)
        return _to_uint8(marginals[0].argmax(dim=2))


def _producer_type(net, blob):
    """Type of the last layer writing `blob` (in-place layers write it again)."""
    types = [layer.type for layer, tops in zip(net.layers, net.top_names.values()) if blob in tops]
    if not types:
        raise DeployError(f"no layer of the deploy net produces blob '{blob}'")
    return types[-1]


def _to_uint8(labels):
    return labels.to(torch.uint8).cpu().numpy()


def _import_crf_batch():
    try:
        import krahenbuhl2013
    except ImportError as err:
        raise DeployError(f"--crf needs the dense CRF extension: pip install ./CRF "
                          f"({err})") from err
    return krahenbuhl2013.CRF_batch


def load_net(spec, device="cpu"):
    """Build the sec.caffe.Net of `spec` in TEST phase and move it to `device`."""
    from sec import caffe
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeployError("--device cuda asked for, but torch sees no CUDA device")
        caffe.set_mode_gpu()
    else:
        caffe.set_mode_cpu()
    try:
        net = caffe.Net(str(spec.prototxt), str(spec.weights), caffe.TEST)
    except ValueError as err:  # the engine's prototxt, format and weight-shape errors
        raise DeployError(f"cannot load {spec.weights} into {spec.prototxt}: {err}") from err
    net.to(device)
    net.eval()
    return net


@dataclass
class Decoded:
    image: np.ndarray   # H x W x 3 uint8 RGB, as a viewer shows it
    inputs: np.ndarray  # 3 x h x w float32, BGR, mean-subtracted


def decode(path, size):
    """Read and preprocess one image (raises sec.data.ImageLoadError naming the file)."""
    image = data.load_image(path)
    return Decoded(image, data.preprocess(image, *size))


def decoded_in_order(paths, size, jobs, ahead):
    """Yield (path, Decoded or None, error message or None) in order, decoding in `jobs` threads,
    at most `ahead` images in flight."""
    pool = ThreadPoolExecutor(jobs, thread_name_prefix="sec-deploy-decode")
    pending = deque()
    queue = iter(paths)
    try:
        for path in queue:
            pending.append((path, pool.submit(decode, path, size)))
            if len(pending) >= ahead:
                break
        while pending:
            path, future = pending.popleft()
            following = next(queue, None)
            if following is not None:
                pending.append((following, pool.submit(decode, following, size)))
            try:
                yield path, future.result(), None
            except data.ImageLoadError as err:
                yield path, None, str(err)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class Report:
    written: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: list = field(default_factory=list)  # (path, reason naming the path)


def save_outputs(outputs, image, mask, probs, overwrite):
    """Write the outputs of one image that are missing (all of them with overwrite)."""
    def due(path):
        return path is not None and (overwrite or not path.is_file())

    if due(outputs.probs):
        atomic_save(outputs.probs, lambda tmp: np.savez_compressed(
            tmp, probs=probs, image_size=np.array(image.shape[:2], dtype=np.int64)))
    if due(outputs.overlay):
        blend = Image.fromarray(np.asarray(visualize.overlay(image, mask), dtype=np.uint8))
        atomic_save(outputs.overlay,
                    lambda tmp: blend.save(tmp, format="JPEG", quality=OVERLAY_JPEG_QUALITY))
    if due(outputs.mask):
        atomic_save(outputs.mask, lambda tmp: visualize.save_palette_png(mask, tmp))


def deploy(images, out_dir, segmenter, *, overlay=False, probs=False, batch=1, jobs=2,
           overwrite=False, progress=True):
    """Segment `images` (paths) into `out_dir`; returns a Report. Unreadable images are reported
    (tqdm.write) and skipped; every other image is processed."""
    if batch < 1 or jobs < 1:
        raise DeployError(f"need --batch >= 1 and --jobs >= 1, got {batch} and {jobs}")
    images = [Path(p) for p in images]
    outputs = dict(zip(images, output_paths(images, out_dir, overlay, probs)))
    report = Report()
    todo = []
    for image in images:
        if not overwrite and outputs[image].done():
            report.skipped.append(image)
        else:
            todo.append(image)
    bar = tqdm(total=len(images), initial=len(report.skipped), unit="img", disable=not progress,
               desc="deploy")
    pending = []

    def flush():
        inputs = np.stack([d.inputs for _, d in pending])
        net_probs = segmenter.probabilities(inputs)
        masks = segmenter.masks([d.image for _, d in pending], net_probs)
        for (path, decoded), mask, p in zip(pending, masks, net_probs):
            stored = p.cpu().numpy() if probs else None
            save_outputs(outputs[path], decoded.image, mask, stored, overwrite)
            report.written.append(path)
        bar.update(len(pending))
        pending.clear()

    try:
        ahead = batch * PREFETCH_BATCHES + jobs
        for path, decoded, error in decoded_in_order(todo, segmenter.input_size, jobs, ahead):
            if error is not None:
                report.failed.append((path, error))
                bar.write(f"FAILED: {error}")  # the message names the file
                bar.update(1)
                continue
            pending.append((path, decoded))
            if len(pending) == batch:
                flush()
        if pending:
            flush()
    finally:
        bar.close()
    return report
