"""The benchmark's models, generated with fixed seeds (same bytes every time).

- chain-N: N blocks of Conv(3x3, C=8, no bias) -> BatchNormalization -> Relu on a 1x8x8x8 input;
  what deep, narrow graphs cost (per-node overhead), N = 100 ... 20,000.
- resnet50-wX: the ResNet-50 v1 shape (bottleneck stages 3/4/6/3, every Conv followed by a BN,
  53 BNs) with every width multiplied by X: weight-heavy, few nodes. X = 1 (~100 MB) and 3.5
  (~1.2 GB). With `external`, the weights are in `<name>.onnx.data` (written tensor by tensor).

Usage: python -m tools.bench.models OUT_DIR [NAME ...]   (names as in MODELS, or chain-N for
any N; default: all)
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20261201
CHAIN_SIZES = (100, 1000, 5000, 20000)
CHAIN_C = 8
OPSET = 17


def _bn_params(rng: np.random.Generator, c: int, prefix: str) -> list[onnx.TensorProto]:
    vals = {
        "scale": rng.uniform(0.7, 1.3, c), "B": rng.normal(0, 0.1, c),
        "mean": rng.normal(0, 0.1, c), "var": rng.lognormal(0, 0.5, c),
    }
    return [numpy_helper.from_array(v.astype(np.float32), f"{prefix}_{k}") for k, v in vals.items()]


def chain(n: int) -> onnx.ModelProto:
    """n Conv -> BN -> Relu blocks, 8 channels, 3x3 kernels (weights ~2.3 KB a block)."""
    rng = np.random.default_rng(SEED + n)
    c = CHAIN_C
    nodes, inits = [], []
    x = "input"
    for i in range(n):
        w = (rng.standard_normal((c, c, 3, 3)) * (1.0 / (3 * np.sqrt(c)))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"conv{i}_W"))
        inits += _bn_params(rng, c, f"bn{i}")
        nodes.append(helper.make_node("Conv", [x, f"conv{i}_W"], [f"conv{i}"], name=f"conv{i}",
                                      pads=[1, 1, 1, 1]))
        params = [f"bn{i}_{k}" for k in ("scale", "B", "mean", "var")]
        nodes.append(helper.make_node("BatchNormalization", [f"conv{i}", *params], [f"bn{i}"],
                                      name=f"bn{i}"))
        nodes.append(helper.make_node("Relu", [f"bn{i}"], [f"relu{i}"], name=f"relu{i}"))
        x = f"relu{i}"
    graph = helper.make_graph(
        nodes, f"chain{n}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, c, 8, 8])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, c, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                             producer_name="onnxfold-bench")


def resnet50(width: float) -> onnx.ModelProto:
    """ResNet-50 v1 (torchvision layout: stride on the 3x3 conv) with widths times `width`."""
    rng = np.random.default_rng(SEED + int(width * 100))
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    k = 0

    def conv_bn(x: str, cin: int, cout: int, ks: int, stride: int, relu: bool) -> str:
        nonlocal k
        k += 1
        w = rng.standard_normal((cout, cin, ks, ks), dtype=np.float32)
        w *= np.float32(np.sqrt(2.0 / (cin * ks * ks)))
        inits.append(numpy_helper.from_array(w, f"conv{k}_W"))
        inits.extend(_bn_params(rng, cout, f"bn{k}"))
        p = ks // 2
        nodes.append(helper.make_node("Conv", [x, f"conv{k}_W"], [f"conv{k}"], name=f"conv{k}",
                                      kernel_shape=[ks, ks], strides=[stride, stride],
                                      pads=[p, p, p, p]))
        bn_in = [f"conv{k}", *(f"bn{k}_{s}" for s in ("scale", "B", "mean", "var"))]
        nodes.append(helper.make_node("BatchNormalization", bn_in, [f"bn{k}"], name=f"bn{k}"))
        if not relu:
            return f"bn{k}"
        nodes.append(helper.make_node("Relu", [f"bn{k}"], [f"relu{k}"], name=f"relu{k}"))
        return f"relu{k}"

    def wd(c: int) -> int:
        return max(8, round(c * width / 8) * 8)

    x = conv_bn("input", 3, wd(64), 7, 2, True)
    nodes.append(helper.make_node("MaxPool", [x], ["pool0"], name="pool0", kernel_shape=[3, 3],
                                  strides=[2, 2], pads=[1, 1, 1, 1]))
    x, cin = "pool0", wd(64)
    for stage, (blocks, mid) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)]):
        for b in range(blocks):
            stride = 2 if b == 0 and stage > 0 else 1
            cout = wd(mid * 4)
            y = conv_bn(x, cin, wd(mid), 1, 1, True)
            y = conv_bn(y, wd(mid), wd(mid), 3, stride, True)
            y = conv_bn(y, wd(mid), cout, 1, 1, False)
            short = conv_bn(x, cin, cout, 1, stride, False) if b == 0 else x
            name = f"add{stage}_{b}"
            nodes.append(helper.make_node("Add", [y, short], [name], name=name))
            nodes.append(helper.make_node("Relu", [name], [name + "_relu"], name=name + "_relu"))
            x, cin = name + "_relu", cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flat"))
    fc = (rng.standard_normal((1000, cin), dtype=np.float32) * np.float32(0.01))
    inits.append(numpy_helper.from_array(fc, "fc_W"))
    inits.append(numpy_helper.from_array(np.zeros(1000, np.float32), "fc_B"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc_W", "fc_B"], ["logits"], name="fc",
                                  transB=1))
    graph = helper.make_graph(
        nodes, f"resnet50_w{width}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                             producer_name="onnxfold-bench")


def save(model: onnx.ModelProto, path: Path, external: bool) -> None:
    """Deterministic bytes; with external, every initializer of 1 KB or more goes to
    `<file>.data`, 4 KB aligned, written one tensor at a time."""
    if external:
        data = path.with_name(path.name + ".data")
        with open(data, "wb") as f:
            for t in model.graph.initializer:
                if len(t.raw_data) < 1024:
                    continue
                f.seek(-(-f.tell() // 4096) * 4096)
                offset = f.tell()
                f.write(t.raw_data)
                length = len(t.raw_data)
                t.ClearField("raw_data")
                t.data_location = TensorProto.EXTERNAL
                for key, value in (("location", data.name), ("offset", offset),
                                   ("length", length)):
                    e = t.external_data.add()
                    e.key, e.value = key, str(value)
    path.write_bytes(model.SerializeToString(deterministic=True))


def _models() -> Iterator[tuple[str, Callable[[], onnx.ModelProto], bool]]:
    for n in CHAIN_SIZES:
        yield f"chain-{n}", (lambda n=n: chain(n)), False
    for w, tag in ((1.0, "w1"), (3.5, "w3.5")):
        yield f"resnet50-{tag}", (lambda w=w: resnet50(w)), False
        yield f"resnet50-{tag}-ext", (lambda w=w: resnet50(w)), True


MODELS = {name: (build, ext) for name, build, ext in _models()}


def generate(out: Path, names: list[str] | None = None) -> list[Path]:
    """Write the named models (default: all) to out/<name>.onnx unless already there."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names or list(MODELS):
        if name.startswith("chain-") and name not in MODELS:  # any size: chain-N
            build, ext = (lambda n=int(name[6:]): chain(n)), False
        else:
            build, ext = MODELS[name]
        path = out / f"{name}.onnx"
        if not path.exists():
            save(build(), path, ext)
        paths.append(path)
    return paths


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    for p in generate(Path(args[0]), args[1:] or None):
        print(p, p.stat().st_size)
