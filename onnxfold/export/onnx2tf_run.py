"""Run onnx2tf in its own process: `python -m onnxfold.export.onnx2tf_run REQUEST.json`.

REQUEST: {"onnx": path, "out": folder, "nhwc": bool, "inputs": [names], "outputs": [[node, name]]}.
Writes RESULT (REQUEST with .result.json) with each output's layout and the TF input shapes.

With nhwc false the ONNX interface is kept: inputs stay as they are (-kat) and every output that
onnx2tf made channel-last gets `post_process_transpose_perm` back to channel-first. Which outputs
those are only onnx2tf knows (its per-tensor `nhwc` flag), so a first pass builds the model without
saving it to read the flags, and the second pass converts with the parameter-replacement file.
onnx2tf's own imports and output go to this process's stdout/stderr, which the caller logs.
"""

from __future__ import annotations

import json
import os
import sys

# Channel-last -> channel-first, by rank.
TO_CHANNEL_FIRST = {3: [0, 2, 1], 4: [0, 3, 1, 2], 5: [0, 4, 1, 2, 3]}


def main(request_path: str) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import onnx2tf

    with open(request_path) as f:
        req = json.load(f)
    common = dict(
        input_onnx_file_path=req["onnx"],
        keep_shape_absolutely_input_names=None if req["nhwc"] else req["inputs"],
        verbosity="error",
    )
    probe = onnx2tf.convert(output_folder_path=req["out"], disable_model_save=True, **common)
    layouts = dict(getattr(probe, "onnx_output_layouts", {}) or {})
    in_shapes = [[int(d) if d is not None else -1 for d in t.shape] for t in probe.inputs]
    out_ranks = [len(t.shape) for t in probe.outputs]
    ops = []
    transposed = {}
    for (node, name), rank in zip(req["outputs"], out_ranks):
        channel_last = bool(layouts.get(name, False)) and rank in TO_CHANNEL_FIRST
        if channel_last and not req["nhwc"]:
            ops.append({"op_name": node, "param_target": "outputs", "param_name": name,
                        "post_process_transpose_perm": TO_CHANNEL_FIRST[rank]})
            channel_last = False
        transposed[name] = channel_last
    prf = ""
    if ops:
        prf = os.path.join(os.path.dirname(os.path.abspath(request_path)), "replace.json")
        with open(prf, "w") as f:
            json.dump({"format_version": 1, "operations": ops}, f, indent=1, sort_keys=True)
    del probe
    onnx2tf.convert(output_folder_path=req["out"], param_replacement_file=prf, **common)
    result = {"channel_last_outputs": transposed, "tf_input_shapes": in_shapes}
    with open(request_path[: -len(".json")] + ".result.json", "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
