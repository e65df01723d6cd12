"""Small torch.nn networks shaped like well-known architectures, exported to ONNX with BN kept.

No torchvision: each net is rebuilt here at small widths so the whole set exports in seconds.
Only imported by tests that have torch (tests/test_real_networks.py).
"""

from __future__ import annotations

import functools
import io
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from torch import nn

OPSET = 17  # the TorchScript exporter in torch 2.13 supports opsets 7..20
NEAR_ZERO_VAR = 1e-6  # below torch's default epsilon 1e-5: a wrong or dropped epsilon shows


def conv_bn(cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1,
            act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    """Conv (no bias, as torchvision builds them) -> BatchNorm2d [-> activation]."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=groups,
                                         bias=False),
                               nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


# ---- ResNet-18 / ResNet-50 ------------------------------------------------------------------

class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, planes, 3, stride),
                                  conv_bn(planes, planes, act=None))
        self.down = (conv_bn(cin, planes, 1, stride, act=None)
                     if stride != 1 or cin != planes else nn.Identity())

    def forward(self, x):
        return torch.relu(self.body(x) + self.down(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        out = planes * self.expansion
        self.body = nn.Sequential(conv_bn(cin, planes, 1), conv_bn(planes, planes, 3, stride),
                                  conv_bn(planes, out, 1, act=None))
        self.down = (conv_bn(cin, out, 1, stride, act=None)
                     if stride != 1 or cin != out else nn.Identity())

    def forward(self, x):
        return torch.relu(self.body(x) + self.down(x))


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], width: int,
                 classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        blocks: list[nn.Module] = []
        cin = width
        for i, n in enumerate(layers):
            planes = width * 2**i
            for j in range(n):
                blocks.append(block(cin, planes, 2 if i > 0 and j == 0 else 1))
                cin = planes * block.expansion
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def resnet18() -> nn.Module:
    return ResNet(BasicBlock, [2, 2, 2, 2], width=8)


def resnet50() -> nn.Module:
    net = ResNet(Bottleneck, [3, 4, 6, 3], width=4)
    # torchvision's zero_init_residual leaves a block's last BN with gamma 0 (build() zeroes it
    # after the statistics): its Conv folds to a weight and bias of all zeros but beta.
    net.zero_gamma = [net.blocks[1].body[2][1]]
    return net


# ---- MobileNetV2 ----------------------------------------------------------------------------

class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [conv_bn(cin, hidden, 1, act=nn.ReLU6)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),  # depthwise
                   conv_bn(hidden, cout, 1, act=None)]  # linear bottleneck
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


def mobilenet_v2(classes: int = 10) -> nn.Module:
    # (expand t, channels c, repeats n, first stride s): torchvision's table, channels / 4.
    table = [(1, 4, 1, 1), (6, 6, 2, 2), (6, 8, 3, 2), (6, 16, 4, 2), (6, 24, 3, 1),
             (6, 40, 3, 2), (6, 80, 1, 1)]
    layers: list[nn.Module] = [conv_bn(3, 8, 3, 2, act=nn.ReLU6)]
    cin = 8
    for t, c, n, s in table:
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    layers += [conv_bn(cin, 320, 1, act=nn.ReLU6), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Dropout(0.2), nn.Linear(320, classes)]
    return nn.Sequential(*layers)


# ---- DenseNet-BC ----------------------------------------------------------------------------

class DenseLayer(nn.Module):
    """Pre-activation: BN -> ReLU -> 1x1 Conv -> BN -> ReLU -> 3x3 Conv, output concatenated."""

    def __init__(self, cin: int, growth: int, bn_size: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(),
                                  nn.Conv2d(cin, bn_size * growth, 1, bias=False),
                                  nn.BatchNorm2d(bn_size * growth), nn.ReLU(),
                                  nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.body(torch.cat(features, 1))


class DenseBlock(nn.Module):
    def __init__(self, n: int, cin: int, growth: int):
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth) for i in range(n))

    def forward(self, x):
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


def densenet(classes: int = 10) -> nn.Module:
    """Stem, dense block (4 layers), transition (BN-ReLU-Conv-AvgPool), dense block, final BN."""
    growth, c0 = 8, 16
    c1 = c0 + 4 * growth
    c2 = c1 // 2 + 3 * growth
    return nn.Sequential(
        nn.Conv2d(3, c0, 7, 2, 3, bias=False), nn.BatchNorm2d(c0), nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
        DenseBlock(4, c0, growth),
        nn.BatchNorm2d(c1), nn.ReLU(), nn.Conv2d(c1, c1 // 2, 1, bias=False), nn.AvgPool2d(2, 2),
        DenseBlock(3, c1 // 2, growth),
        nn.BatchNorm2d(c2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(c2, classes),
    )


# ---- U-Net ----------------------------------------------------------------------------------

def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv_bn(cin, cout), conv_bn(cout, cout))


class Up(nn.Module):
    """ConvTranspose (bias, stride 2) -> BN -> ReLU, concatenated with the skip, double conv."""

    def __init__(self, cin: int, cout: int, output_padding: bool):
        super().__init__()
        # k3/s2/p1 needs output_padding 1 to double the size; k2/s2 does not.
        k, p, op = (3, 1, 1) if output_padding else (2, 0, 0)
        self.up = nn.Sequential(nn.ConvTranspose2d(cin, cout, k, 2, p, op), nn.BatchNorm2d(cout),
                                nn.ReLU())
        self.conv = double_conv(2 * cout, cout)

    def forward(self, x, skip):
        return self.conv(torch.cat([skip, self.up(x)], 1))


class UNet(nn.Module):
    def __init__(self, w: int = 8, classes: int = 2):
        super().__init__()
        self.enc = nn.ModuleList([double_conv(3, w), double_conv(w, 2 * w),
                                  double_conv(2 * w, 4 * w)])
        self.mid = double_conv(4 * w, 8 * w)
        self.dec = nn.ModuleList([Up(8 * w, 4 * w, False), Up(4 * w, 2 * w, True),
                                  Up(2 * w, w, False)])
        # A depthwise ConvTranspose (group = channels) + BN, as light decoders use.
        self.refine = nn.Sequential(nn.ConvTranspose2d(w, w, 3, 1, 1, groups=w, bias=False),
                                    nn.BatchNorm2d(w), nn.ReLU())
        self.head = nn.Conv2d(w, classes, 1)

    def forward(self, x):
        skips = []
        for enc in self.enc:
            x = enc(x)
            skips.append(x)
            x = nn.functional.max_pool2d(x, 2)
        x = self.mid(x)
        for up, skip in zip(self.dec, reversed(skips), strict=True):
            x = up(x, skip)
        return self.head(self.refine(x))


# ---- YOLO (v5/v8-style: Conv-BN-SiLU, C3 with residual bottlenecks, SPPF, FPN neck) ----------

def cbs(cin: int, cout: int, k: int = 1, s: int = 1) -> nn.Sequential:
    return conv_bn(cin, cout, k, s, act=nn.SiLU)


class C3(nn.Module):
    def __init__(self, cin: int, cout: int, n: int, shortcut: bool = True):
        super().__init__()
        h = cout // 2
        self.cv1, self.cv2, self.cv3 = cbs(cin, h), cbs(cin, h), cbs(2 * h, cout)
        self.m = nn.ModuleList(nn.Sequential(cbs(h, h), cbs(h, h, 3)) for _ in range(n))
        self.shortcut = shortcut

    def forward(self, x):
        y = self.cv1(x)
        for m in self.m:
            y = y + m(y) if self.shortcut else m(y)
        return self.cv3(torch.cat([y, self.cv2(x)], 1))


class SPPF(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.cv1, self.cv2 = cbs(cin, cin // 2), cbs(cin // 2 * 4, cout)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.cv2(torch.cat([x, y1, y2, self.pool(y2)], 1))


class YOLO(nn.Module):
    def __init__(self, w: int = 8, anchors: int = 3, classes: int = 4):
        super().__init__()
        no = anchors * (5 + classes)
        self.b1 = nn.Sequential(cbs(3, w, 6, 2), cbs(w, 2 * w, 3, 2), C3(2 * w, 2 * w, 1),
                                cbs(2 * w, 4 * w, 3, 2), C3(4 * w, 4 * w, 2))  # P3, stride 8
        self.b2 = nn.Sequential(cbs(4 * w, 8 * w, 3, 2), C3(8 * w, 8 * w, 1))  # P4, stride 16
        self.b3 = nn.Sequential(cbs(8 * w, 16 * w, 3, 2), C3(16 * w, 16 * w, 1),
                                SPPF(16 * w, 16 * w))  # P5, stride 32
        self.lat5 = cbs(16 * w, 8 * w)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.td4 = C3(16 * w, 8 * w, 1, shortcut=False)
        self.lat4 = cbs(8 * w, 4 * w)
        self.td3 = C3(8 * w, 4 * w, 1, shortcut=False)
        self.down3 = cbs(4 * w, 4 * w, 3, 2)
        self.bu4 = C3(8 * w, 8 * w, 1, shortcut=False)
        self.detect = nn.ModuleList(nn.Conv2d(c, no, 1) for c in (4 * w, 8 * w))  # bias, no BN

    def forward(self, x):
        p3 = self.b1(x)
        p4 = self.b2(p3)
        l5 = self.lat5(self.b3(p4))
        l4 = self.lat4(self.td4(torch.cat([self.up(l5), p4], 1)))
        n3 = self.td3(torch.cat([self.up(l4), p3], 1))
        n4 = self.bu4(torch.cat([self.down3(n3), l4], 1))
        return self.detect[0](n3), self.detect[1](n4)


# ---- statistics and export ------------------------------------------------------------------

def set_bn_statistics(net: nn.Module, x: torch.Tensor, seed: int) -> None:
    """Give every BN trained-looking, non-trivial statistics and affine parameters.

    Fresh BNs have mean 0, var 1, gamma 1, beta 0, which would hide a swapped or dropped term.
    Random statistics alone blow up a deep net (a variance 1e-6 channel amplifies ~300x per
    layer), so: measure each BN's real batch statistics on `x` (train mode, cumulative
    average), perturb them, draw gamma and beta, then give channel 0 a variance of 1e-6 with a
    gamma that keeps its output at the measured scale. That channel's s = gamma / sqrt(var + eps)
    is then dominated by epsilon: a fold without epsilon is off there by a factor ~3.3.
    BNs without running statistics (track_running_stats=False) are left as they are.
    """
    bns = [m for m in net.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in bns:
        m.momentum = None  # cumulative average: one batch gives its exact statistics
    net.train()
    with torch.no_grad():
        net(x)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in bns:
            m.momentum = 0.1  # back to the default, which the export writes as momentum 0.9
            c = m.num_features
            true_var = m.running_var.clone()
            m.running_mean += 0.2 * torch.randn(c, generator=g) * true_var.sqrt()
            m.running_var *= torch.empty(c).uniform_(0.6, 1.6, generator=g)
            m.running_var[0] = NEAR_ZERO_VAR
            if m.affine:
                m.weight.copy_(torch.empty(c).uniform_(0.6, 1.4, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
                m.weight[0] *= float(np.sqrt((NEAR_ZERO_VAR + m.eps) / float(true_var[0] + 1e-12)))
    net.eval()


def export(net: nn.Module, x: torch.Tensor, opset: int = OPSET,
           output_names: list[str] | None = None,
           keep_initializers_as_inputs: bool | None = None) -> onnx.ModelProto:
    """TorchScript export with every BatchNormalization kept (see the README, Real networks)."""
    f = io.BytesIO()
    with warnings.catch_warnings():
        # dynamo=False is deprecated since torch 2.9 but still present in 2.13, and it is the
        # exporter that keeps BN: TrainingMode.EVAL folds BN into Conv during export.
        warnings.simplefilter("ignore", DeprecationWarning)
        # Advice for PRESERVE with a model in training mode; ours is in eval mode.
        warnings.filterwarnings("ignore", "It is recommended that constant folding be turned off")
        # None, not torch's default False: opset <= 8 (IR 3) lists initializers as inputs
        # anyway, and False would warn about it.
        torch.onnx.export(net.eval(), (x,), f, dynamo=False, opset_version=opset,
                          training=torch.onnx.TrainingMode.PRESERVE,
                          input_names=["images"], output_names=output_names,
                          keep_initializers_as_inputs=keep_initializers_as_inputs)
    return onnx.load_from_string(f.getvalue())


@dataclass(frozen=True)
class Net:
    name: str
    module: nn.Module  # in eval mode, statistics set
    x: torch.Tensor  # the export input
    output_names: list[str]

    def export(self, opset: int = OPSET, **kw) -> onnx.ModelProto:
        return export(self.module, self.x, opset, self.output_names, **kw)

    def torch_outputs(self, x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            y = self.module(torch.from_numpy(x))
        return [t.numpy() for t in (y if isinstance(y, tuple) else (y,))]


NETS = {
    "resnet18": (resnet18, ["logits"]),
    "resnet50": (resnet50, ["logits"]),
    "mobilenet_v2": (mobilenet_v2, ["logits"]),
    "densenet": (densenet, ["logits"]),
    "unet": (UNet, ["mask"]),
    "yolo": (YOLO, ["p3", "p4"]),
}
SHAPE = (1, 3, 64, 64)

# Single layers as torch exports them, each in a tiny net: (factory, input shape).
PATTERNS = {
    "linear-bn1d": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.BatchNorm1d(16),
                                          nn.ReLU(), nn.Linear(16, 4)), (4, 3, 4, 4)),
    "linear-nobias-bn1d": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(48, 16, bias=False),
                                                 nn.BatchNorm1d(16), nn.ReLU()), (4, 3, 4, 4)),
    "conv1d-bn1d": (lambda: nn.Sequential(nn.Conv1d(3, 8, 3, padding=1), nn.BatchNorm1d(8),
                                          nn.ReLU()), (1, 3, 32)),
    "conv3d-bn3d": (lambda: nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.BatchNorm3d(8),
                                          nn.ReLU()), (1, 3, 8, 8, 8)),
    "bn-affine-false": (lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1),
                                              nn.BatchNorm2d(8, affine=False), nn.ReLU()),
                        (1, 3, 16, 16)),
    "input-bn": (lambda: nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 8, 3), nn.ReLU()),
                 (1, 3, 16, 16)),
    "batch-statistics": (lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1),
                                               nn.BatchNorm2d(8, track_running_stats=False),
                                               nn.ReLU()), (2, 3, 16, 16)),
}


@functools.cache
def build(name: str, seed: int = 0) -> Net:
    """The named net or pattern, seeded weights and statistics (cached: built once a session)."""
    if name in PATTERNS:
        factory, shape = PATTERNS[name]
        output_names = ["y"]
    else:
        (factory, output_names), shape = NETS[name], SHAPE
    torch.manual_seed(seed)
    net = factory()
    calib = torch.rand(4, *shape[1:], generator=torch.Generator().manual_seed(seed + 1))
    set_bn_statistics(net, calib, seed)
    with torch.no_grad():
        for bn in getattr(net, "zero_gamma", []):
            bn.weight.zero_()
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed + 2))
    return Net(name, net, x, output_names)
