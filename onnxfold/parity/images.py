"""A real picture as a model input: RGB, scaled to [0, 1], planar NCHW, as darknet/YOLO expect.

`letterbox` keeps the aspect ratio and fills the rest with 0.5, placed as darknet's detector does
(the scaled side is computed in integers, the picture centred); `stretch` resizes to the input
size. Resampling is Pillow's bilinear filter, close to but not bit-identical with darknet's own.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np

from onnxfold.errors import OnnxfoldError
from onnxfold.parity.inputs import MAX_FEED_BYTES

RESIZE_MODES = ("letterbox", "stretch")


def parse_image_arg(spec: str) -> tuple[str, str]:
    """'images=picture.jpg' -> ('images', 'picture.jpg')."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise OnnxfoldError("--image", "INPUT_NAME=PICTURE (e.g. images=dog.jpg)", repr(spec))
    return name, path


def letterbox_size(w: int, h: int, width: int, height: int) -> tuple[int, int]:
    """The picture's size inside a width x height letterbox (integer math, as darknet)."""
    if width * h > height * w:  # relatively wider box: the height fills it
        return (w * height) // h, height
    return width, (h * width) // w


def load_image(
    path: str | os.PathLike[str], shape: list[int], resize: str = "letterbox"
) -> np.ndarray:
    """The picture at path as a float32 array of `shape` ([N, 3, H, W] or [N, 1, H, W])."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise OnnxfoldError(
            "--image", "Pillow installed (pip install 'onnxfold[image]')", "no module PIL"
        ) from None
    if resize not in RESIZE_MODES:
        raise OnnxfoldError("--resize", " or ".join(RESIZE_MODES), repr(resize))
    if len(shape) != 4 or shape[1] not in (1, 3):
        raise OnnxfoldError(path, "an input of shape [N, 3 or 1, H, W] to feed a picture to",
                            f"an input of shape {shape}")
    n, c, height, width = shape
    if math.prod(shape) * 4 > MAX_FEED_BYTES:  # the input's dims are numbers in a file
        raise OnnxfoldError(path, f"an input of at most {MAX_FEED_BYTES >> 30} GiB to feed a "
                            "picture to", f"an input of shape {shape}")
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89M pixels (a "decompression bomb"): refuse it, not decode it.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                picture = im.convert("RGB" if c == 3 else "L")
    except FileNotFoundError:
        raise OnnxfoldError(path, "a picture", "no such file") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as e:
        raise OnnxfoldError(path, "a picture Pillow can read (JPEG, PNG, ...)", str(e)) from None
    w, h = picture.size
    if resize == "stretch":
        out = np.asarray(picture.resize((width, height), Image.BILINEAR), np.float32) / 255
    else:
        new_w, new_h = letterbox_size(w, h, width, height)
        inner = np.asarray(picture.resize((new_w, new_h), Image.BILINEAR), np.float32) / 255
        out = np.full((height, width, *inner.shape[2:]), 0.5, np.float32)
        dy, dx = (height - new_h) // 2, (width - new_w) // 2
        out[dy:dy + new_h, dx:dx + new_w] = inner
    chw = out.reshape(height, width, c).transpose(2, 0, 1)
    return np.ascontiguousarray(np.broadcast_to(chw, (n, c, height, width)))
