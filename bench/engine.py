"""Overhead of the prototxt engine against the same net written directly in torch.

Builds DeepLab-LargeFOV from models/sec/deploy.prototxt with sec.caffe and, by hand, as torch
modules; copies the engine's weights into the hand-written net, checks both give the same
output, then times forward + backward of both on the same input in the same run,
alternating them, and prints the median time of each and the ratio engine / torch.

    python bench/engine.py                      # CPU, 1 x 3 x 161 x 161
    python bench/engine.py --device cuda --size 321 --batch 10
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sec import caffe  # noqa: E402  (after the path set-up, so the checkout is used)

VGG_BLOCKS = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]
CONV5_DILATION = 2
FC6_DILATION = 12
FC_CHANNELS = 1024
NUM_CLASSES = 21
STRIDED_BLOCKS = 3  # pool1..pool3 have stride 2, pool4/pool5 stride 1
WEIGHT_STD = 0.01


class LargeFOV(nn.Module):
    """DeepLab-LargeFOV as plain torch modules, layer for layer as in the deploy prototxt."""

    def __init__(self):
        super().__init__()
        layers, channels = [], 3
        for block, (width, count) in enumerate(VGG_BLOCKS, 1):
            dilation = CONV5_DILATION if block == len(VGG_BLOCKS) else 1
            for _ in range(count):
                layers += [nn.Conv2d(channels, width, 3, padding=dilation, dilation=dilation), nn.ReLU()]
                channels = width
            stride = 2 if block <= STRIDED_BLOCKS else 1
            layers.append(nn.MaxPool2d(3, stride, 1, ceil_mode=True))
        layers.append(nn.AvgPool2d(3, 1, 1, ceil_mode=True, count_include_pad=True))
        layers += [nn.Conv2d(channels, FC_CHANNELS, 3, padding=FC6_DILATION, dilation=FC6_DILATION), nn.ReLU(),
                   nn.Dropout(0.5), nn.Conv2d(FC_CHANNELS, FC_CHANNELS, 1), nn.ReLU(), nn.Dropout(0.5),
                   nn.Conv2d(FC_CHANNELS, NUM_CLASSES, 1)]
        self.features = nn.Sequential(*layers)

    def forward(self, x):
        return F.softmax(self.features(x), dim=1)


def copy_weights(net, model):
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    tensors = [params for _, _, params in net.layer_params() if params]
    if len(convs) != len(tensors):
        raise RuntimeError(f"engine has {len(tensors)} weighted layers, the torch net {len(convs)}")
    with torch.no_grad():
        for conv, (weight, bias) in zip(convs, tensors):
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)


def engine_step(net, x, grad_weights):
    out = net.run({"images": x})["fc8-SEC-Softmax"]
    (out * grad_weights).sum().backward()
    net.zero_grad(set_to_none=True)


def torch_step(model, x, grad_weights):
    out = model(x)
    (out * grad_weights).sum().backward()
    model.zero_grad(set_to_none=True)


def timed(step, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(args):
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    phase = caffe.TRAIN if args.phase == "train" else caffe.TEST
    net = caffe.Net(str(args.prototxt), phase).to(device)
    with torch.no_grad():
        for info in net.learnable_params():
            info.param.normal_(0.0, WEIGHT_STD)
    model = LargeFOV().to(device)
    copy_weights(net, model)
    model.train(phase == caffe.TRAIN)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device) * 50
    grad_weights = torch.randn(args.batch, NUM_CLASSES, 1, 1, device=device)
    if phase == caffe.TEST:
        with torch.no_grad():
            a, b = net.run({"images": x})["fc8-SEC-Softmax"], model(x)
        print(f"output {tuple(a.shape)}, max |engine - torch| = {float((a - b).abs().max()):.3g}")
    for _ in range(args.warmup):
        engine_step(net, x, grad_weights)
        torch_step(model, x, grad_weights)
    engine_times, torch_times = [], []
    for _ in range(args.repeats):
        engine_times.append(timed(lambda: engine_step(net, x, grad_weights), device))
        torch_times.append(timed(lambda: torch_step(model, x, grad_weights), device))
    print(f"device {device}, input {args.batch}x3x{args.size}x{args.size}, phase {args.phase}, "
          f"{args.repeats} repeats of forward+backward, alternating")
    for label, pick in (("median", statistics.median), ("min", min)):
        engine_s, torch_s = pick(engine_times), pick(torch_times)
        print(f"{label:6s}: engine {engine_s * 1000:.1f} ms   torch {torch_s * 1000:.1f} ms   "
              f"ratio engine/torch {engine_s / torch_s:.3f}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda (default cpu)")
    parser.add_argument("--size", type=int, default=161, help="input height = width (default 161)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    parser.add_argument("--phase", choices=["train", "test"], default="test",
                        help="net phase; test also checks both nets give the same output (default test)")
    parser.add_argument("--repeats", type=int, default=10, help="timed iterations of each (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations of each first (default 2)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (0: torch's default); 1 steadies timings on a busy machine")
    parser.add_argument("--seed", type=int, default=0, help="torch seed for weights and input (default 0)")
    parser.add_argument("--prototxt", type=Path, default=REPO / "models" / "sec" / "deploy.prototxt",
                        help="deploy prototxt of DeepLab-LargeFOV (default models/sec/deploy.prototxt)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
