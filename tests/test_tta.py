"""Test-time augmentation in deploy (sec.tta, sec.deploy, deploy/deploy.py --scales --flip).

The averaged probabilities are checked against a second path written here by hand (each scale's
input made from the image with sec.data.preprocess, the net run once per scale and per mirror,
each result upsampled to the image's size, the mean taken), on the synthetic SEC deploy net with
random weights; the script is checked end to end, with the manifest refusing a folder made with
other augmentation.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import load_script, randomize_weights
from sec import caffe, data, tta
from sec import deploy as pipeline

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC_DEPLOY = REPO / "models" / "synthetic" / "deploy.prototxt"
NET_SIDE = 41
SCALES = (0.75, 1.0, 1.25)
deploy_script = load_script("deploy/deploy.py")


def test_parse_scales_names_the_bad_item():
    assert tta.parse_scales("0.75,1,1.25") == (0.75, 1.0, 1.25)
    for text, reason in (("1,x", "'x' is not a number"), ("0.5,-1", "must be a positive"),
                         ("1,1.0", "given twice"), ("nan", "must be a positive")):
        with pytest.raises(ValueError, match=reason):
            tta.parse_scales(text)
    assert tta.scaled_sizes((41, 40), SCALES) == [(31, 30), (41, 40), (51, 50)]


def test_average_is_the_mean_of_every_scale_and_mirror_upsampled():
    """A forward that is not mirror-symmetric: a mirrored pass must be flipped back."""
    def forward(batch):   # probabilities from the mean-subtracted pixels, 2 classes, 1/2 resolution
        left = torch.sigmoid(batch[:, :1, ::2, ::2] / 50 + torch.linspace(-2, 2, (batch.shape[3] + 1) // 2))
        return torch.cat([left, 1 - left], dim=1)

    rng = np.random.default_rng(0)
    batches = [torch.from_numpy(rng.normal(0, 60, (2, 3, side, side + 2)).astype(np.float32)) for side in (8, 12)]
    sizes = [(20, 23), (9, 31)]
    got = tta.average_probabilities(forward, batches, sizes, True, pipeline.upsample)
    for index, size in enumerate(sizes):
        parts = []
        for batch in batches:
            x = batch[index:index + 1]
            parts.append(pipeline.upsample(forward(x)[0], size))
            parts.append(pipeline.upsample(forward(x.flip(3))[0].flip(2), size))
        want = torch.stack(parts).mean(dim=0)
        assert got[index].shape == (2, *size)
        torch.testing.assert_close(got[index], want, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The synthetic deploy net at a 41 x 41 input, random weights (BatchNorm statistics too)."""
    folder = tmp_path_factory.mktemp("tta_model")
    prototxt = folder / "deploy.prototxt"
    prototxt.write_text(SYNTHETIC_DEPLOY.read_text().replace("dim: 161", f"dim: {NET_SIDE}"))
    net = caffe.Net(str(prototxt), caffe.TEST)
    randomize_weights(net)
    net.save(str(folder / "w.caffemodel"))
    images = folder / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for index, (h, w) in enumerate([(50, 70), (64, 48), (33, 90)]):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image[: h // 2, : w // 3] = (220, 40, 40)      # a left-right asymmetric patch
        Image.fromarray(image).save(images / f"im{index}.png")
    return prototxt, folder / "w.caffemodel", images


def by_hand(net, image, scales, flip):
    """The averaged probabilities of one image, computed without sec.tta."""
    parts = []
    for h, w in tta.scaled_sizes((NET_SIDE, NET_SIDE), scales):
        x = torch.from_numpy(data.preprocess(image, h, w))[None]
        variants = [(x, False)] + ([(x.flip(3), True)] if flip else [])
        for inputs, mirrored in variants:
            with torch.no_grad():
                probs = net.run({"images": inputs})["fc8-SEC-Softmax"][0]
            parts.append(pipeline.upsample(probs.flip(2) if mirrored else probs, image.shape[:2]))
    return torch.stack(parts).mean(dim=0)


@pytest.mark.parametrize("scales, flip", [(SCALES, True), ((1.0,), True), ((0.5, 1.5), False)])
def test_segmenter_averages_as_by_hand_in_any_batch(model, scales, flip):
    prototxt, weights, images = model
    net = caffe.Net(str(prototxt), caffe.TEST, weights=str(weights))
    segmenter = pipeline.Segmenter(net, scales=scales, flip=flip)
    assert segmenter.tta
    decoded = [pipeline.decode(p, segmenter.input_sizes[0], segmenter.input_sizes[1:])
               for p in sorted(images.iterdir())]
    pictures = [d.image for d in decoded]
    together = segmenter.tta_probabilities([[d.inputs, *d.more] for d in decoded], pictures)
    for d, probs in zip(decoded, together):
        want = by_hand(net, d.image, scales, flip)
        torch.testing.assert_close(probs, want, rtol=1e-5, atol=1e-6)
        alone = segmenter.tta_probabilities([[d.inputs, *d.more]], [d.image])[0]
        torch.testing.assert_close(alone, probs, rtol=1e-5, atol=1e-6)
    # the augmentation changes the answer (else this test could not tell it from none)
    plain = pipeline.upsample(segmenter.probabilities(decoded[0].inputs[None])[0], pictures[0].shape[:2])
    if scales != (1.0,) or flip:
        assert float((together[0] - plain).abs().max()) > 1e-3


def test_a_scale_the_net_cannot_take_is_refused_naming_it(model):
    prototxt, weights, _ = model
    net = caffe.Net(str(prototxt), caffe.TEST, weights=str(weights))
    with pytest.raises(pipeline.DeployError, match=r"--scales 0.01: the net cannot take a 1x1 input"):
        pipeline.Segmenter(net, scales=(1.0, 0.01))
    assert tuple(net.blobs["images"].data.shape) == (1, 3, NET_SIDE, NET_SIDE)   # restored


def run_script(model, out, *flags):
    prototxt, weights, images = model
    return deploy_script.main(deploy_script.parse_args(
        ["--images", str(images), "--out", str(out), "--weights", str(weights), "--prototxt", str(prototxt),
         "--quiet", "--batch", "2", *flags]))


def test_script_with_scales_flip_and_crf_writes_the_averaged_masks(model, tmp_path, capsys):
    prototxt, weights, images = model
    out = tmp_path / "masks"
    assert run_script(model, out, "--scales", "0.75,1,1.25", "--flip", "--crf", "--probs") == 0
    manifest = json.loads((out / "deploy_manifest.json").read_text())
    assert manifest["options"]["tta"] == {"scales": [0.75, 1.0, 1.25], "flip": True}
    net = caffe.Net(str(prototxt), caffe.TEST, weights=str(weights))
    for path in sorted(images.iterdir()):
        image = data.load_image(path)
        stored = pipeline.load_probs(out / "probs" / f"{path.stem}.npz")      # averaged, at image size
        want = by_hand(net, image, SCALES, True)
        np.testing.assert_allclose(stored, want.numpy(), rtol=1e-5, atol=1e-6)
        mask = np.asarray(Image.open(out / f"{path.stem}.png"))
        crf_mask = pipeline.Segmenter(net, crf=True).masks([image], [want])[0]
        np.testing.assert_array_equal(mask, crf_mask)                   # the CRF ran on the average
    # the same folder without the augmentation: refused, nothing rewritten
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    assert run_script(model, out, "--crf", "--probs") == 2
    assert "tta" in capsys.readouterr().err
    assert before == {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}


def test_script_without_augmentation_keeps_the_manifest_of_before(model, tmp_path):
    """Default flags: no 'tta' key, so output folders made before TTA existed still resume."""
    out = tmp_path / "masks"
    assert run_script(model, out) == 0
    assert "tta" not in json.loads((out / "deploy_manifest.json").read_text())["options"]


def test_bad_scales_are_a_usage_error(model, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_script(model, tmp_path / "m", "--scales", "1,zero")
    assert exit_info.value.code == 2 and "'zero' is not a number" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
