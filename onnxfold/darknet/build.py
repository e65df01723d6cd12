"""A parsed cfg -> a plan (shapes, weight layout), and a plan plus weights -> an ONNX model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxfold.darknet.cfg import Cfg
from onnxfold.darknet.heads import Decode
from onnxfold.darknet.layers import convolutional, maxpool, region, reorg, route
from onnxfold.darknet.layers.base import Graph, Layer, Options, Shape
from onnxfold.darknet.weights import Layout

OPSET = 13
IR_VERSION = 7  # the IR of opset 13: loads in every runtime that runs the opset
INPUT, OUTPUT = "images", "output"
SUPPORTED = ("convolutional", "maxpool", "route", "reorg", "region")


@dataclass
class Plan:
    cfg: Cfg
    input: Shape
    layers: list[Layer]
    opts: Options
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
        prev = shapes[sec.index - 1]
        if sec.kind == "convolutional":
            layer: Layer = convolutional.parse(sec, prev)
        elif sec.kind == "maxpool":
            layer = maxpool.parse(sec, prev)
        elif sec.kind == "route":
            layer = route.parse(sec, shapes)
        elif sec.kind == "reorg":
            layer = reorg.parse(sec, prev)
        elif sec.kind == "region":
            layer = region.parse(sec, prev, sec is cfg.layers[-1], opts.head)
        else:
            raise sec.error(None, "a layer onnxfold converts ("
                            + ", ".join(f"[{k}]" for k in SUPPORTED) + ")",
                            f"[{sec.kind}], not supported yet")
        shapes[sec.index] = layer.out
        layers.append(layer)
    last = layers[-1]
    if opts.head == "darknet" and last.kind != "region":
        raise last.section.error(None, "a [region] layer at the end for --head darknet "
                                 "(or use --head raw)", f"[{last.kind}] as the last layer")
    return Plan(cfg, inp, layers, opts)


def build(p: Plan, arrays: dict[int, dict[str, np.ndarray]], meta: dict[str, str]) -> Converted:
    """The ONNX model: input `images` 1xCxHxW, output `output`, metadata `meta`."""
    g = Graph()
    names = {-1: INPUT}
    for layer in p.layers:
        inputs = [names[j] for j in layer.sources]
        names[layer.index] = layer.emit(g, inputs, arrays.get(layer.index, {}), p.opts)
    if p.decode is not None:
        outputs = p.decode.emit(g, names)
    else:
        final = names[p.layers[-1].index]
        if final == INPUT:
            g.node("Identity", [INPUT], OUTPUT)
        else:
            _rename(g, final, OUTPUT)
            names = {k: OUTPUT if v == final else v for k, v in names.items()}
        dims = [1, *_dims(p.layers[-1].out)]
        outputs = [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, dims)]
    graph = helper.make_graph(
        g.nodes, Path(p.cfg.path).stem or "darknet",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [1, *_dims(p.input)])],
        outputs, initializer=g.initializers,
    )
    from onnxfold import __version__

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="onnxfold", producer_version=__version__)
    model.ir_version = IR_VERSION
    for key in sorted(meta):
        model.metadata_props.add(key=key, value=meta[key])
    del names[-1]
    return Converted(model, names, p)


def _dims(s: Shape) -> list[int]:
    return [s.c, s.h, s.w]


def _rename(g: Graph, old: str, new: str) -> None:
    for n in g.nodes:
        for vals in (n.input, n.output):
            for k, v in enumerate(vals):
                if v == old:
                    vals[k] = new
