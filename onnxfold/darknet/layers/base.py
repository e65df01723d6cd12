"""What every darknet layer builder shares: shapes, the graph being built, the layer record."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxfold.darknet.cfg import Section

BN_FLAVOURS = ("darknet", "alexeyab")
HEADS = ("darknet", "raw")


@dataclass(frozen=True)
class Shape:
    c: int
    h: int
    w: int

    def __str__(self) -> str:
        return f"{self.c}x{self.h}x{self.w}"


@dataclass(frozen=True)
class Options:
    bn_eps: str = "darknet"  # darknet: gamma*(x-mean)/(sqrt(var)+1e-6); alexeyab: sqrt(var+1e-5)
    head: str = "darknet"  # darknet: what [region] leaves in pj's output; raw: its input


class Graph:
    """Nodes and initializers of the ONNX graph being built, with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    def _claim(self, name: str) -> str:
        if name in self._names:
            raise ValueError(f"duplicate name {name!r}")  # a bug in a builder, not bad input
        self._names.add(name)
        return name

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array),
                                                         self._claim(name)))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs: object) -> str:
        """Add a node whose single output is named like the node; return that name."""
        self.nodes.append(helper.make_node(op, inputs, [self._claim(name)], name=name, **attrs))
        return name

    def multi(self, op: str, inputs: list[str], name: str, outputs: list[str],
              **attrs: object) -> list[str]:
        """Add a node with several outputs, named `name.<output>`."""
        outs = [self._claim(f"{name}.{o}") for o in outputs]
        self._claim(name)
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs


@dataclass
class Layer:
    """A parsed darknet layer: where it reads from, its output shape, its arrays in the file."""

    section: Section
    sources: list[int]  # layer indices read; -1 is the network input
    out: Shape
    blobs: list[tuple[str, int]] = field(default_factory=list)

    @property
    def index(self) -> int:
        return self.section.index

    @property
    def kind(self) -> str:
        return self.section.kind

    def emit(self, g: Graph, inputs: list[str], params: dict[str, np.ndarray],
             opts: Options) -> str:
        """Add this layer's nodes reading `inputs`; return the name of its output."""
        raise NotImplementedError


def positive_out(sec: Section, key: str, size: int, what: str) -> int:
    """An output dimension darknet computes; zero or less means the cfg cannot work."""
    if size < 1:
        raise sec.error(key, f"a layer whose output {what} is at least 1", f"{size}")
    return size


AB_HINT = "convert with --bn-eps alexeyab for the AlexeyAB fork"


def pj_refusal(sec: Section, key: str | None, expected: str, found: str, why: str):
    """A cfg the original darknet (the pj flavour) silently computes differently from the fork."""
    return sec.error(key, f"{expected} with --bn-eps darknet (the original darknet: {why}; "
                     f"{AB_HINT})", found)
