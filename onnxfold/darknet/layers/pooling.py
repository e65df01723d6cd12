"""[avgpool] -> GlobalAveragePool; [dropout] and [cost] add nothing at inference."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxfold.darknet.cfg import Section
from onnxfold.darknet.layers.base import Graph, Layer, Options, Shape


@dataclass
class Avgpool(Layer):
    def emit(self, g: Graph, inputs: list[str], params: dict[str, np.ndarray],
             opts: Options) -> str:
        return g.node("GlobalAveragePool", inputs, f"avgpool{self.index}")


@dataclass
class Passthrough(Layer):
    """darknet's dropout returns its input at inference; cost is not a network output."""

    def emit(self, g: Graph, inputs: list[str], params: dict[str, np.ndarray],
             opts: Options) -> str:
        return inputs[0]


def parse_avgpool(sec: Section, inp: Shape) -> Avgpool:
    return Avgpool(sec, [sec.index - 1], Shape(inp.c, 1, 1))


def parse_passthrough(sec: Section, inp: Shape) -> Passthrough:
    return Passthrough(sec, [sec.index - 1], inp)
