"""Fold rules: one per file, each a pattern / check / rewrite triple anchored on a normalization.

`pattern` says whether the rule applies to the node feeding the BatchNormalization, `check` says
why not when it may not (a Refused with a code and a one-line reason), `rewrite` edits the graph.
A rewrite computes every new value before its first edit, so a Refused or an unexpected error
raised in it leaves the graph as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from onnxfold.graph import GraphIndex


class Refused(Exception):
    """A fold that must not happen; code groups refusals in reports, the message says why."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class Match:
    norm: int  # the BatchNormalization (node index)
    producer: int  # the node whose output it normalizes
    values: dict[str, np.ndarray] = field(default_factory=dict)  # constants read by check


class Rule(Protocol):
    name: str
    producers: tuple[str, ...]  # op types this rule folds into

    def check(self, g: GraphIndex, m: Match) -> None: ...  # raises Refused

    def rewrite(self, g: GraphIndex, m: Match) -> str: ...  # returns the producer's label


def all_rules() -> list[Rule]:
    from onnxfold.fold.rules.conv_bn import ConvBatchNorm
    from onnxfold.fold.rules.convtranspose_bn import ConvTransposeBatchNorm

    return [ConvBatchNorm(), ConvTransposeBatchNorm()]
