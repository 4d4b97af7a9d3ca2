"""The deploy pipeline: a folder of images in, one palette PNG mask per image out.

Per image, as the original SEC deploy.py did it: decode (RGB, EXIF-rotated), resize to the net's
input size with scipy.ndimage.zoom(order=1), BGR, mean (104, 117, 123) subtracted (`sec.data`);
forward; softmax over the class axis; bilinear upsampling of the probabilities to the image's own
size (align_corners=True, which is what scipy.ndimage.zoom(order=1) computes); optionally a dense
CRF at full resolution on log(max(probs, 1e-5)) (scale_factor 1, 10 iterations); argmax.

Optional test-time augmentation (Segmenter scales / flip, sec.tta; off by default): the image is
also preprocessed at each scale of the net's input size, each scale's batch runs with its mirror,
and the probabilities, upsampled to the image's size, are averaged before the CRF and the argmax.

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
- `<out>/deploy_manifest.json` (when the caller passes `options`, as deploy/deploy.py does): what
  made the masks (sec.deploy_files).
Every file is written to a hidden temporary name and renamed, so an interrupted run never leaves a
half-written file under an output name; existing outputs are kept unless overwrite=True.

A run is `prepare` (cheap checks of the images' headers and of the output folder, before any
model is loaded) then `run`; `deploy` does both. Unreadable images, broken links and images too
large for the CRF are failed files of the Report, named with their reason; the others are written.
"""
import json
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from sec import data, tta, visualize
# The file helpers live in sec.deploy_files; they stay importable from here (sec.deploy.list_images).
from sec.deploy_files import (IMAGE_EXTENSIONS, MANIFEST_NAME, OVERLAY_DIR, PROBS_DIR,  # noqa: F401
                              DeployError, Outputs, atomic_save, check_image_header,
                              check_output_folder, claim, file_sha256, list_images, output_paths)

# The original deploy.py clips the upsampled probabilities at 1e-5 before the log for the CRF.
PROB_FLOOR = 1e-5
CRF_ITERATIONS = 10
CRF_SCALE_FACTOR = 1.0  # full resolution: the CRF kernels are used at their nominal widths
MAX_CLASSES = 255  # uint8 masks, 255 being the VOC ignore label
OVERLAY_JPEG_QUALITY = 90
# Images decoded ahead of the network: this many batches beyond the one being processed.
PREFETCH_BATCHES = 2
NO_SCALES = (1.0,)    # the net's own input size only: no multi-scale test-time augmentation


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


def mask_options(spec, output_blob=None, crf=False, scales=NO_SCALES, flip=False):
    """The options that decide what a mask holds, for the output folder's manifest: the
    weights and prototxt (paths, and SHA-256 of their bytes), the score blob asked for (None:
    the net's only output), the CRF settings (None without the CRF) and, only when used, the
    test-time augmentation (`tta`: scales and flip). Also, for readers such as
    deploy/evaluate.py, the model's class set: `classes` (voc, synthetic; None when the weights
    came from --weights) and `num_classes` (from runs/latest.json; the caller sets the count of
    the loaded net)."""
    options = {"classes": spec.classes, "num_classes": spec.num_classes,
               "weights": str(Path(spec.weights).resolve()),
               "weights_sha256": file_sha256(spec.weights),
               "prototxt": str(Path(spec.prototxt).resolve()),
               "prototxt_sha256": file_sha256(spec.prototxt),
               "output_blob": output_blob,
               "crf": {"iterations": CRF_ITERATIONS, "scale_factor": CRF_SCALE_FACTOR} if crf else None}
    if tuple(scales) != NO_SCALES or flip:   # absent otherwise: folders made before TTA existed still match
        options["tta"] = {"scales": list(scales), "flip": flip}
    return options


def crf_pixel_limit():
    """The most pixels (H*W) the CRF takes per image (krahenbuhl2013.MAX_PIXELS, 2**26)."""
    return _import_crf().MAX_PIXELS


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
    scales / flip: test-time augmentation (sec.tta); the images are then decoded at every size of
    `input_sizes` and `tta_probabilities` gives their averaged probabilities at the image's size.
    """

    def __init__(self, net, device="cpu", output=None, crf=False, crf_threads=0, scales=NO_SCALES,
                 flip=False):
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
        _check_score_blob(net, output)
        self.input_size = tuple(int(d) for d in net.blobs[self.input].data.shape[2:])
        self.num_classes = int(net.blobs[output].data.shape[1])
        if self.num_classes > MAX_CLASSES:
            raise DeployError(f"blob '{output}' has {self.num_classes} channels: a palette PNG "
                              f"holds at most {MAX_CLASSES} classes")
        self.device = torch.device(device)
        self.crf = crf
        self.crf_threads = crf_threads
        self._crf_batch = _import_crf_batch() if crf else None
        self.scales, self.flip = tuple(scales), flip
        self.tta = self.scales != NO_SCALES or flip
        self.input_sizes = tta.scaled_sizes(self.input_size, self.scales) if self.tta else [self.input_size]
        if self.tta and hasattr(net, "reshape"):
            self._check_sizes(net)

    def _check_sizes(self, net):
        """DeployError when the engine cannot build the net for a scaled input size (nets with
        Caffe's reshape(), i.e. sec.caffe's; others fail at their first forward instead)."""
        from sec.caffe import NetError
        declared = tuple(net.blobs[self.input].data.shape)
        try:
            for scale, size in zip(self.scales, self.input_sizes):
                net.blobs[self.input].reshape(1, declared[1], *size)
                try:
                    net.reshape()
                except NetError as err:
                    raise DeployError(f"--scales {scale:g}: the net cannot take a {size[0]}x{size[1]} input: "
                                      f"{err}") from err
        finally:
            net.blobs[self.input].reshape(*declared)
            net.reshape()

    def probabilities(self, inputs):
        """N x 3 x h x w float32 (BGR, mean-subtracted) -> N x L x h' x w' softmax, on device."""
        return self._forward(torch.from_numpy(np.ascontiguousarray(inputs)).to(self.device))

    def _forward(self, batch):
        with torch.no_grad():
            scores = self.net.run({self.input: batch})[self.output].float()
        return scores if self.output_is_softmax else torch.softmax(scores, dim=1)

    def tta_probabilities(self, inputs, images):
        """Per image, L x H x W probabilities at the image's size averaged over the scales (and
        mirrors): `inputs` holds per image one 3 x h x w array per size of `input_sizes`."""
        batches = [torch.from_numpy(np.stack(arrays)).to(self.device) for arrays in zip(*inputs)]
        return tta.average_probabilities(self._forward, batches, [image.shape[:2] for image in images],
                                         self.flip, upsample)

    def masks(self, images, probs):
        """Masks (H x W uint8, per image size) from RGB uint8 images and their probs (at the net's
        output size, or already at the image's: the upsampling is then the identity)."""
        if self.crf:
            return self._crf_masks(images, probs)
        return [_to_uint8(upsample(p, image.shape[:2]).argmax(dim=0))
                for image, p in zip(images, probs)]

    def _crf_masks(self, images, probs):
        from sec.caffe.layers.sec_twins import layer_impl
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


def _check_score_blob(net, blob):
    """`blob` must hold class scores: N x L x h x w with L the class count of the net's outputs
    (an inner blob such as fc7 would make argmax over its features look like classes)."""
    shape = tuple(net.blobs[blob].data.shape)
    if len(shape) != 4:
        raise DeployError(f"blob '{blob}' has shape {shape}: need class scores N x classes x h x w")
    classes = {name: int(net.blobs[name].data.shape[1]) for name in net.outputs
               if len(net.blobs[name].data.shape) == 4}
    if classes and shape[1] not in classes.values():
        listed = ", ".join(f"'{name}' {count}" for name, count in classes.items())
        raise DeployError(f"--output-blob {blob}: {shape[1]} channels, but the net's output(s) give "
                          f"{listed} classes: '{blob}' is not a class-score blob (its argmax would be no "
                          "class); name the scores or probabilities, e.g. the net's output")


def _producer_type(net, blob):
    """Type of the last layer writing `blob` (in-place layers write it again)."""
    types = [layer.type for layer, tops in zip(net.layers, net.top_names.values()) if blob in tops]
    if not types:
        raise DeployError(f"no layer of the deploy net produces blob '{blob}'")
    return types[-1]


def _to_uint8(labels):
    return labels.to(torch.uint8).cpu().numpy()


def _import_crf():
    try:
        import krahenbuhl2013
    except ImportError as err:
        raise DeployError(f"--crf needs the dense CRF extension: pip install ./CRF "
                          f"({err})") from err
    return krahenbuhl2013


def _import_crf_batch():
    return _import_crf().CRF_batch


def load_net(spec, device="cpu", allow_missing_weights=False):
    """Build the sec.caffe.Net of `spec` in TEST phase and move it to `device`.

    DeployError when the weights do not fit the prototxt, hold NaN or Inf (naming the layer), fill
    no parameter layer at all (the wrong file), or leave a parameter layer of the net without
    weights (it would keep its filler values and give plausible-looking masks) unless
    allow_missing_weights."""
    from sec import caffe
    from sec.caffe.weights import MissingWeightsError
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeployError("--device cuda asked for, but torch sees no CUDA device")
        caffe.set_mode_gpu()
    else:
        caffe.set_mode_cpu()
    try:
        net = caffe.Net(str(spec.prototxt), caffe.TEST, weights=str(spec.weights))
        report = net.weight_report
        if report.untouched and not report.loaded:   # the wrong file, whatever --allow-missing-weights says
            raise DeployError(
                f"cannot load {spec.weights} into {spec.prototxt}: no layer of the file matches a parameter "
                f"layer of the net by name (file layers: {', '.join(report.ignored[:8]) or 'none'}; net "
                f"layers: {', '.join(report.untouched[:8])}), so every mask would come from filler values "
                "(--allow-missing-weights allows some layers left at their fillers, not all)")
        if not allow_missing_weights:
            report.require_complete()
    except ValueError as err:  # prototxt, format, shape, non-finite and missing-weight errors
        hint = ("; pass --allow-missing-weights to run with filler values there"
                if isinstance(err, MissingWeightsError) else "")
        raise DeployError(f"cannot load {spec.weights} into {spec.prototxt}: {err}{hint}") from err
    net.to(device)
    net.eval()
    return net


@dataclass
class Decoded:
    image: np.ndarray   # H x W x 3 uint8 RGB, as a viewer shows it
    inputs: np.ndarray  # 3 x h x w float32, BGR, mean-subtracted
    more: list = field(default_factory=list)   # the same at the further test-time augmentation sizes


def decode(path, size, more_sizes=()):
    """Read and preprocess one image at `size` (and at each of `more_sizes`); raises
    sec.data.ImageLoadError naming the file."""
    image = data.load_image(path)
    return Decoded(image, data.preprocess(image, *size), [data.preprocess(image, *s) for s in more_sizes])


def decoded_in_order(paths, size, jobs, ahead, more_sizes=()):
    """Yield (path, Decoded or None, error message or None) in order, decoding in `jobs` threads,
    at most `ahead` images in flight."""
    pool = ThreadPoolExecutor(jobs, thread_name_prefix="sec-deploy-decode")
    pending = deque()
    queue = iter(paths)
    try:
        for path in queue:
            pending.append((path, pool.submit(decode, path, size, more_sizes)))
            if len(pending) >= ahead:
                break
        while pending:
            path, future = pending.popleft()
            following = next(queue, None)
            if following is not None:
                pending.append((following, pool.submit(decode, following, size, more_sizes)))
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


@dataclass
class Plan:
    """What a run will do, decided before the model is loaded (see `prepare`)."""
    out_dir: Path
    outputs: dict                 # image path -> Outputs
    todo: list                    # images to segment, in order
    overwrite: bool
    report: Report                # skipped and failed (header checks) filled in already
    manifest: object = None  # sec.deploy_files.Claim


def prepare(images, out_dir, *, overlay=False, probs=False, overwrite=False, crf=False,
            options=None):
    """Check everything that is cheap before any work: the output folder takes files, no two
    images write the same mask, each image's header reads (and fits the CRF with crf=True), and,
    with `options` (what makes a mask, see mask_options), that existing outputs were
    made the same way. DeployError for the folder and the options; unusable images go to
    plan.report.failed. Returns a Plan for `run`."""
    images = [Path(p) for p in images]
    outputs = dict(zip(images, output_paths(images, out_dir, overlay, probs)))
    check_output_folder(out_dir, overlay, probs)
    report = Report()
    max_pixels = crf_pixel_limit() if crf else None
    usable = []
    for image in images:
        reason = check_image_header(image, max_pixels)
        if reason is None:
            usable.append(image)
        else:
            report.failed.append((image, reason))
    manifest = None
    if options is not None:
        manifest = claim(out_dir, options, [outputs[p] for p in images], overwrite)
    todo = []
    for image in usable:
        if not overwrite and outputs[image].done():
            report.skipped.append(image)
        else:
            todo.append(image)
    return Plan(Path(out_dir), outputs, todo, overwrite, report, manifest)


def _check_counts(batch, jobs):
    if batch < 1 or jobs < 1:
        raise DeployError(f"need --batch >= 1 and --jobs >= 1, got {batch} and {jobs}")


def run(plan, segmenter, *, batch=1, jobs=2, progress=True):
    """Segment plan.todo into plan.out_dir; returns plan.report completed. Images that cannot
    be decoded, or that the CRF refuses, are reported (tqdm.write) and skipped; every other
    image is processed."""
    _check_counts(batch, jobs)
    report = plan.report
    for path, reason in report.failed:
        tqdm.write(f"FAILED: {reason}")
    bar = tqdm(total=len(plan.todo) + len(report.skipped) + len(report.failed),
               initial=len(report.skipped) + len(report.failed), unit="img",
               disable=not progress, desc="deploy")
    pending = []

    def fail(path, reason):
        report.failed.append((path, reason))
        bar.write(f"FAILED: {reason}")  # the message names the file

    def flush():
        images = [d.image for _, d in pending]
        if segmenter.tta:
            net_probs = segmenter.tta_probabilities([[d.inputs, *d.more] for _, d in pending], images)
        else:
            net_probs = segmenter.probabilities(np.stack([d.inputs for _, d in pending]))
        try:
            masks = segmenter.masks(images, net_probs)
        except ValueError:  # the CRF refused one image of the batch: find it, keep the others
            masks = []
            for (path, decoded), p in zip(pending, net_probs):
                try:
                    masks.extend(segmenter.masks([decoded.image], p[None]))
                except ValueError as err:
                    fail(path, f"{path}: {err}")
                    masks.append(None)
        for (path, decoded), mask, p in zip(pending, masks, net_probs):
            if mask is None:
                continue
            stored = p.cpu().numpy() if plan.outputs[path].probs is not None else None
            try:
                if plan.manifest is not None:
                    plan.manifest.record()
                save_outputs(plan.outputs[path], decoded.image, mask, stored, plan.overwrite)
            except OSError as err:
                raise DeployError(f"cannot write the outputs of {path} into {plan.out_dir}: "
                                  f"{err}") from err
            report.written.append(path)
        bar.update(len(pending))
        pending.clear()

    try:
        ahead = batch * PREFETCH_BATCHES + jobs
        for path, decoded, error in decoded_in_order(plan.todo, segmenter.input_sizes[0], jobs, ahead,
                                                   segmenter.input_sizes[1:]):
            if error is not None:
                fail(path, error)
                bar.update(1)
                continue
            pending.append((path, decoded))
            if len(pending) == batch:
                flush()
        if pending:
            flush()
    finally:
        bar.close()
    if plan.manifest is not None:
        plan.manifest.finish(complete=not report.failed)
    return report


def deploy(images, out_dir, segmenter, *, overlay=False, probs=False, batch=1, jobs=2,
           overwrite=False, progress=True, options=None):
    """prepare + run: segment `images` (paths) into `out_dir`; returns a Report."""
    _check_counts(batch, jobs)
    plan = prepare(images, out_dir, overlay=overlay, probs=probs, overwrite=overwrite,
                   crf=segmenter.crf, options=options)
    return run(plan, segmenter, batch=batch, jobs=jobs, progress=progress)
