"""A parsed cfg -> a plan (shapes, weight layout), and a plan plus weights -> an ONNX model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxfold.darknet.cfg import Cfg, Section
from onnxfold.darknet.heads import Decode
from onnxfold.darknet.layers import (
    connected,
    convolutional,
    maxpool,
    pooling,
    region,
    reorg,
    route,
    shortcut,
    softmax,
    upsample,
    yolo,
)
from onnxfold.darknet.layers.base import Graph, Layer, Options, Shape
from onnxfold.darknet.weights import Layout

OPSET = 13
IR_VERSION = 7  # the IR of opset 13: loads in every runtime that runs the opset
INPUT, OUTPUT = "images", "output"
SUPPORTED = ("convolutional", "connected", "maxpool", "avgpool", "route", "shortcut", "upsample",
             "reorg", "softmax", "dropout", "cost", "region", "yolo")


@dataclass
class Plan:
    cfg: Cfg
    input: Shape
    layers: list[Layer]
    opts: Options
    outputs: list[int]  # the layers whose outputs the model returns, in cfg order
    decode: Decode | None = None  # --head boxes: appended after the layers (darknet/heads/)

    def layout(self) -> Layout:
        """The arrays the .weights file holds after its header, in order."""
        return [(x.index, x.kind, x.blobs) for x in self.layers if x.blobs]

    def floats(self) -> int:
        return sum(n for x in self.layers for _, n in x.blobs)


@dataclass
class Converted:
    model: onnx.ModelProto
    layer_outputs: dict[int, str]  # darknet layer index -> ONNX tensor holding its output
    plan: Plan


def plan(cfg: Cfg, opts: Options, size: tuple[int, int] | None = None) -> Plan:
    """Every layer's parameters and shapes, from the cfg alone; `size` overrides (height, width)."""
    net = cfg.net
    h = net.get_int("height", None, minimum=1)
    w = net.get_int("width", None, minimum=1)
    c = net.get_int("channels", None, minimum=1)
    inp = Shape(c, *(size or (h, w)))
    shapes: dict[int, Shape] = {-1: inp}
    layers: list[Layer] = []
    for sec in cfg.layers:
        layer = _parse(sec, shapes, opts, sec is cfg.layers[-1])
        shapes[sec.index] = layer.out
        layers.append(layer)
    return Plan(cfg, inp, layers, opts, outputs(layers))


def _parse(sec: Section, shapes: dict[int, Shape], opts: Options, last: bool) -> Layer:
    prev = shapes[sec.index - 1]
    kind = sec.kind
    if kind == "convolutional":
        return convolutional.parse(sec, prev, opts)
    if kind == "connected":
        return connected.parse(sec, prev, opts)
    if kind == "maxpool":
        return maxpool.parse(sec, prev)
    if kind == "avgpool":
        return pooling.parse_avgpool(sec, prev)
    if kind in ("dropout", "cost"):
        return pooling.parse_passthrough(sec, prev)
    if kind == "route":
        return route.parse(sec, shapes, opts)
    if kind == "shortcut":
        return shortcut.parse(sec, shapes, opts)
    if kind == "upsample":
        return upsample.parse(sec, prev)
    if kind == "reorg":
        return reorg.parse(sec, prev)
    if kind == "softmax":
        return softmax.parse(sec, prev)
    if kind == "region":
        return region.parse(sec, prev, last, opts.head)
    if kind == "yolo":
        return yolo.parse(sec, prev, opts)
    raise sec.error(None, "a layer onnxfold converts ("
                    + ", ".join(f"[{k}]" for k in SUPPORTED) + ")",
                    f"[{kind}], not supported")


def outputs(layers: list[Layer]) -> list[int]:
    """What darknet's detector reads: every [yolo] layer; else the last layer."""
    heads = [x.index for x in layers if x.kind == "yolo"]
    if heads and layers[-1].kind == "region":
        sec = layers[-1].section
        raise sec.error(None, "[yolo] or [region] heads, not both", "both")
    return heads or [layers[-1].index]


def build(p: Plan, arrays: dict[int, dict[str, np.ndarray]], meta: dict[str, str]) -> Converted:
    """The ONNX model: input `images` 1xCxHxW, output `output`, metadata `meta`."""
    g = Graph()
    names = {-1: INPUT}
    for layer in p.layers:
        inputs = [names[j] for j in layer.sources]
        names[layer.index] = layer.emit(g, inputs, arrays.get(layer.index, {}), p.opts)
    if p.decode is not None:
        outs = p.decode.emit(g, names)
    else:
        outs = []
        by_index = {x.index: x for x in p.layers}
        for k, index in enumerate(p.outputs):
            final, name = names[index], output_name(k, len(p.outputs))
            if final == INPUT or final in {o.name for o in outs}:
                g.node("Identity", [final], name)  # the input, or an output returned twice
            else:
                _rename(g, final, name)
                names = {i: name if v == final else v for i, v in names.items()}
            outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                      [1, *_dims(by_index[index].out)]))
    graph = helper.make_graph(
        g.nodes, Path(p.cfg.path).stem or "darknet",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [1, *_dims(p.input)])],
        outs, initializer=g.initializers,
    )
    from onnxfold import __version__

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="onnxfold", producer_version=__version__)
    model.ir_version = IR_VERSION
    for key in sorted(meta):
        model.metadata_props.add(key=key, value=meta[key])
    del names[-1]
    return Converted(model, names, p)


def output_name(k: int, n: int) -> str:
    """`output` for a model with one output; output0, output1, ... in cfg order for several."""
    return OUTPUT if n == 1 else f"{OUTPUT}{k}"


def _dims(s: Shape) -> list[int]:
    return [s.c, s.h, s.w]


def _rename(g: Graph, old: str, new: str) -> None:
    for n in g.nodes:
        for vals in (n.input, n.output):
            for k, v in enumerate(vals):
                if v == old:
                    vals[k] = new
