"""Read a darknet .cfg the way darknet does, with errors that say file, line, layer and key.

darknet removes every space and tab from a line (inside values too), skips lines starting with
`#` or `;`, and looks a key up by its first occurrence in the section. We also accept CRLF line
ends and a UTF-8 byte order mark, which darknet chokes on.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from onnxfold.errors import OnnxfoldError

log = logging.getLogger(__name__)

ALIASES = {
    "conv": "convolutional",
    "conn": "connected",
    "max": "maxpool",
    "avg": "avgpool",
    "soft": "softmax",
    "network": "net",
}
MAX_CFG_BYTES = 16 << 20  # the largest real cfgs are ~30 kB
_INT = re.compile(r"[+-]?[0-9]+")
_INT32 = (-(2**31), 2**31 - 1)  # darknet reads every integer with atoi into a C int


@dataclass
class Option:
    value: str
    line: int


@dataclass
class Section:
    """One [section]: its kind (aliases resolved), layer index (-1 for [net]) and options."""

    path: str
    kind: str
    index: int
    line: int
    options: dict[str, Option] = field(default_factory=dict)
    read: set[str] = field(default_factory=set)  # keys the converter asked for

    def where(self, key: str | None = None) -> str:
        opt = self.options.get(key) if key else None
        line = opt.line if opt else self.line
        what = "[net]" if self.index < 0 else f"[{self.kind}] layer {self.index}"
        return f"{self.path}:{line}: {what}" + (f", key '{key}'" if key else "")

    def error(self, key: str | None, expected: str, found: str) -> OnnxfoldError:
        return OnnxfoldError(self.where(key), expected, found)

    def has(self, key: str) -> bool:
        self.read.add(key)
        return key in self.options

    def raw(self, key: str) -> str | None:
        self.read.add(key)
        opt = self.options.get(key)
        return None if opt is None else opt.value

    def get_str(self, key: str, default: str) -> str:
        v = self.raw(key)
        return default if v is None else v

    def get_int(self, key: str, default: int | None = None, minimum: int | None = None) -> int:
        v = self.raw(key)
        if v is None:
            if default is None:
                raise self.error(key, "a value (the key has no default)", "no such key")
            return default
        if not _INT.fullmatch(v):
            raise self.error(key, "an integer", repr(v))
        n = int(v)
        if not _INT32[0] <= n <= _INT32[1]:
            raise self.error(key, "an integer that fits darknet's 32-bit int", repr(v))
        if minimum is not None and n < minimum:
            what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise self.error(key, what, repr(v))
        return n

    def get_ints(self, key: str) -> list[int]:
        v = self.raw(key)
        if v is None:
            raise self.error(key, "a comma-separated list of integers", "no such key")
        items = [t for t in v.split(",") if t]
        if not items or not all(_INT.fullmatch(t) for t in items):
            raise self.error(key, "a comma-separated list of integers", repr(v))
        out = [int(t) for t in items]
        if not all(_INT32[0] <= n <= _INT32[1] for n in out):
            raise self.error(key, "integers that fit darknet's 32-bit int", repr(v))
        return out

    def get_floats(self, key: str) -> list[float]:
        v = self.raw(key)
        if v is None:
            return []
        try:
            out = [float(t) for t in v.split(",") if t]
        except ValueError:
            raise self.error(key, "a comma-separated list of numbers", repr(v)) from None
        if not all(math.isfinite(x) for x in out):
            raise self.error(key, "finite numbers", repr(v))
        return out

    def only(self, key: str, allowed: tuple[int, ...], why: str) -> None:
        """Refuse a key whose value changes semantics we do not implement."""
        if self.has(key) and self.get_int(key) not in allowed:
            ok = " or ".join(str(a) for a in allowed)
            raise self.error(key, f"{key}={ok} ({why})", f"{key}={self.raw(key)}")


# Keys darknet reads for training or detection post-processing only: they do not change what
# the network computes at inference, so converting ignores them without a word.
TRAINING_KEYS = {
    "net": {
        "batch", "subdivisions", "momentum", "decay", "angle", "saturation", "exposure", "hue",
        "learning_rate", "burn_in", "max_batches", "policy", "steps", "scales", "step", "gamma",
        "power", "max_crop", "min_crop", "flip", "mosaic", "aspect", "jitter", "letter_box",
        "cutmix", "mixup", "blur", "gaussian_noise", "track", "time_steps", "seq_scales",
        "adam", "B1", "B2", "eps", "optimized_memory", "workspace_size_limit_MB", "rate",
    },
    "region": {
        "jitter", "rescore", "object_scale", "noobject_scale", "class_scale", "coord_scale",
        "thresh", "random", "absolute", "bias_match", "max", "focal_loss", "map", "tree",
    },
    "yolo": {
        "jitter", "ignore_thresh", "truth_thresh", "random", "resize", "iou_thresh",
        "iou_normalizer", "cls_normalizer", "obj_normalizer", "delta_normalizer", "iou_loss",
        "iou_thresh_kind", "max_delta", "focal_loss", "label_smooth_eps", "objectness_smooth",
        "counters_per_class", "max", "map", "show_details", "nms_kind", "beta_nms",
        "track_history_size", "sim_thresh", "dets_for_track", "dets_for_show", "track_ciou_norm",
        "embedding_layer",
    },
    "convolutional": {"stopbackward", "dontload", "dontloadscales", "learning_rate",
                      "stream", "wait_stream"},
    "connected": {"stopbackward", "dontload", "dontloadscales", "learning_rate"},
    "route": {"stream", "wait_stream"},
    "softmax": {"noloss"},
    "dropout": {"probability", "dropblock", "dropblock_size_rel", "dropblock_size_abs"},
    "cost": {"type", "scale", "ratio", "noobject_scale", "thresh"},
}


def unused_keys(section: Section) -> list[str]:
    """Keys of a section the converter never read and that are not training-only (darknet
    prints them as "Unused field"); call after the whole cfg was converted."""
    known = TRAINING_KEYS.get(section.kind, set())
    return [k for k in section.options if k not in section.read and k not in known]


@dataclass
class Cfg:
    path: str
    net: Section
    layers: list[Section]
    sha256: str


def read_cfg(path: str | os.PathLike[str]) -> Cfg:
    """Parse a darknet cfg file; raise OnnxfoldError on anything darknet would not read."""
    p = Path(path)
    expected = "a darknet .cfg text file"
    if not p.is_file():
        raise OnnxfoldError(p, expected, not_a_file(p))
    try:
        size = p.stat().st_size
        if size > MAX_CFG_BYTES:
            raise OnnxfoldError(p, f"{expected} (at most {MAX_CFG_BYTES} bytes)", f"{size} bytes")
        data = p.read_bytes()
    except OSError as e:
        raise OnnxfoldError(p, expected, f"a file that cannot be read ({e.strerror})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise OnnxfoldError(p, f"{expected} in UTF-8 or ASCII", f"byte {e.start}: {e.reason}") \
            from None
    cfg = parse_cfg(text, str(p))
    cfg.sha256 = hashlib.sha256(data).hexdigest()
    return cfg


def parse_cfg(text: str, path: str = "<cfg>") -> Cfg:
    sections: list[Section] = []
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = "".join(raw.split())  # darknet drops all whitespace, even inside values
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]") or len(line) < 3:
                raise OnnxfoldError(f"{path}:{lineno}", "a section header like [convolutional]",
                                    repr(raw.strip()))
            kind = ALIASES.get(line[1:-1], line[1:-1])
            sections.append(Section(path, kind, len(sections) - 1, lineno))
            continue
        key, eq, value = line.partition("=")
        if not eq or not key or not value:
            raise OnnxfoldError(f"{path}:{lineno}", "a line 'key=value', a [section] or a comment",
                                repr(raw.strip()))
        if not sections:
            raise OnnxfoldError(f"{path}:{lineno}", "the [net] section before any option",
                                repr(raw.strip()))
        sec = sections[-1]
        if key in sec.options:  # darknet reads the first one
            log.warning("%s:%d: duplicate key '%s' in %s; darknet uses line %d", path, lineno,
                        key, sec.where(), sec.options[key].line)
            continue
        sec.options[key] = Option(value, lineno)
    if not sections or sections[0].kind != "net":
        first = f"[{sections[0].kind}] at line {sections[0].line}" if sections else "no section"
        raise OnnxfoldError(path, "[net] or [network] as the first section", first)
    if len(sections) == 1:
        raise OnnxfoldError(path, "at least one layer section after [net]", "none")
    return Cfg(path, sections[0], sections[1:], "")


def not_a_file(p: Path) -> str:
    """Why a path that should be a file is not one."""
    if p.is_dir():
        return "a directory"
    return "not a regular file" if p.exists() else "no such file"
