"""`onnxfold convert` on files: convert, optionally fold and prove it, then write atomically."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import onnx

from onnxfold.darknet import convert_darknet
from onnxfold.darknet.heads import Nms
from onnxfold.errors import OnnxfoldError
from onnxfold.modelio import model_bytes, write_atomic


@dataclass
class ConvertOutcome:
    exit_code: int  # 0 written; 1 the folded model failed its check (nothing written)
    text: str
    error: str = ""


def default_output(cfg: Path) -> Path:
    return cfg.with_name(f"{cfg.stem}.onnx")


def convert_file(
    cfg: Path,
    weights: Path | None,
    output: Path | None = None,
    *,
    weights_seed: int | None = None,
    bn_eps: str = "darknet",
    head: str = "darknet",
    size: tuple[int, int] | None = None,
    nms: Nms | None = None,
    names: Path | None = None,
    fold: bool = False,
    force: bool = False,
    seed: int = 0,
) -> ConvertOutcome:
    """The whole `onnxfold convert` job; raises OnnxfoldError for bad input (exit 2)."""
    from onnxfold.fold.pipeline import check_output_path

    t0 = time.perf_counter()
    target = output or default_output(cfg)
    check_output_path(cfg, target, force)
    if weights is not None and weights.exists() and weights.resolve() == target.resolve():
        raise OnnxfoldError(target, "an output path other than the input", "the weights file")
    conv = convert_darknet(cfg, weights, weights_seed=weights_seed, bn_eps=bn_eps, head=head,
                           size=size, nms=nms, names=names)
    model = conv.model
    onnx.checker.check_model(model, full_check=True)
    source = f"{cfg} + {weights}" if weights is not None else f"{cfg} (weights seed {weights_seed})"
    s, outs = conv.plan.input, model.graph.output
    if len(outs) == 1 and outs[0].name == "output":
        shown = f"output {_dims(outs[0])}"
    else:
        shown = "outputs " + ", ".join(f"{o.name} {_dims(o)}" for o in outs)
    lines = [
        f"onnxfold convert: {source} -> {target}",
        f"{len(conv.plan.layers)} darknet layers; head {head}{' + nms' if nms else ''}, bn-eps "
        f"{bn_eps}; input images 1x{s.c}x{s.h}x{s.w}, {shown}",
    ]
    if fold:
        # NMS output rows swap places when two scores move by float noise: prove the fold on
        # the boxes and scores NMS reads instead
        model, text, error = _fold(model, seed, ["boxes", "scores"] if nms else None)
        lines += text
        if error:
            return ConvertOutcome(1, "\n".join(lines), error)
    else:
        counts = Counter(n.op_type for n in model.graph.node)
        lines.append("ops: " + ", ".join(f"{op} {counts[op]}" for op in sorted(counts)))
    write_atomic(target, model_bytes(model))
    lines.append(f"time: {time.perf_counter() - t0:.2f} s")
    return ConvertOutcome(0, "\n".join(lines))


def _dims(value: onnx.ValueInfoProto) -> str:
    return "x".join(d.dim_param or str(d.dim_value) for d in value.type.tensor_type.shape.dim)


def _outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` whose outputs are the tensors `names`."""
    view = onnx.ModelProto()
    view.CopyFrom(model)
    del view.graph.output[:]
    view.graph.output.extend(
        onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    return view


def _fold(model: onnx.ModelProto, seed: int,
          compare: list[str] | None = None) -> tuple[onnx.ModelProto, list[str], str]:
    """Fold every BatchNormalization and prove the result against the unfolded conversion."""
    from onnxfold import fuse
    from onnxfold.fold import report
    from onnxfold.fold.engine import op_counts
    from onnxfold.parity import check_parity

    result = fuse(model)
    onnx.checker.check_model(result.model, full_check=True)
    if compare:
        parity = check_parity(_outputs(model, compare), _outputs(result.model, compare), seed=seed)
    else:
        parity = check_parity(model, result.model, seed=seed)
    rep = report.build(result, op_counts(model), op_counts(result.model), parity, "", None)
    text = report.render(rep, {}).splitlines()[1:-1]  # without the fuse header and timings
    if result.refused:
        return result.model, text, f"{len(result.refused)} BatchNormalization not folded"
    if parity.status != "pass":
        return result.model, text, f"the folded model's check did not pass ({parity.status})"
    return result.model, text, ""
