"""Classify images with an exported EfficientViM in ONNX Runtime or OpenVINO: numpy, Pillow and a runtime only.

Importing this module loads neither torch nor timm, so a deployment needs only ``onnx``, ``numpy``,
``Pillow`` and ``onnxruntime`` or ``openvino`` (``runtime="auto"``, the default, takes ONNX Runtime where it is
installed: it ran our fp32 and int8 files faster than OpenVINO at batch 1 and 32, docs/benchmarks.md). Files
are read by the package's one image reader (:mod:`efficientvim.images`) and labelled with the class names
stored in the file at export, so the answers match ``efficientvim predict``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ExportError, import_extra
from .images import read_image, to_rgb

ImageLike = str | os.PathLike | Image.Image | np.ndarray
PREDICTOR_RUNTIMES = ("auto", "onnxruntime", "openvino")


class OnnxPredictor:
    """An ONNX classifier written by :func:`efficientvim.export.export_onnx`, with its own preprocessing.

    Preprocessing follows the metadata stored at export: resize the shorter side to
    size / crop_pct, centre-crop to size, scale to [0, 1], normalise with mean and std.

    Args:
        path: an ONNX file written by ``export_onnx`` (a classifier), fp32 or int8.
        threads: inference threads; default: the runtime's own choice.
        runtime: ``"onnxruntime"``, ``"openvino"`` or ``"auto"``: ONNX Runtime if installed, else OpenVINO
            (which one ran is in :attr:`runtime`).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, runtime: str = "auto") -> None:
        from .sessions import AUTO_ORDER, missing_modules, onnxruntime_session, openvino_request

        if runtime not in PREDICTOR_RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}: choose from {', '.join(PREDICTOR_RUNTIMES)}")
        onnx = import_extra("onnx", "onnx", "OnnxPredictor")
        if runtime == "auto":  # the commands' fp32 rule over the two file runtimes; neither installed: ONNX
            # Runtime's import names the extra
            runtime = next((r for r in AUTO_ORDER["fp32"] if r in PREDICTOR_RUNTIMES and not missing_modules(r)),
                           "onnxruntime")

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file {path} not found")
        try:
            props = onnx.load(str(path), load_external_data=False).metadata_props
        except Exception as e:  # protobuf raises its own DecodeError for files that are not ONNX
            raise ExportError(f"{path} is not an ONNX file ({type(e).__name__})") from None
        meta = {p.key: json.loads(p.value) for p in props}
        if meta.get("input_size") is None:
            raise ExportError(f"{path} carries no EfficientViM preprocessing metadata: export it with export_onnx")
        self.runtime = runtime
        if runtime == "onnxruntime":
            session = onnxruntime_session(path, threads)
            outputs = [o.name for o in session.get_outputs()]
            self._run = lambda batch: session.run(None, {"images": batch})[0]
        else:
            request = openvino_request(path, threads)
            outputs = [name for o in request.model_outputs for name in sorted(o.get_names())[:1]]
            self._run = lambda batch: request.infer({0: batch})[0]
        if outputs != ["logits"]:
            raise ExportError(f"{path} is a feature extractor, not a classifier: run it in the runtime directly")
        self.model_name = meta["model_name"]
        self.input_size = tuple(meta["input_size"])
        self.mean = np.asarray(meta["mean"], dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(meta["std"], dtype=np.float32).reshape(-1, 1, 1)
        self.crop_pct = meta["crop_pct"] or 1.0
        self.interpolation = meta["interpolation"] or "bicubic"
        self.label_names = meta.get("label_names")

    def preprocess(self, image: ImageLike) -> np.ndarray:
        """An image file path, PIL image or HxW / HxWxC uint8 array -> a normalised (C, H, W) float32 array."""
        if isinstance(image, (str, os.PathLike)):
            image = read_image(image)
        elif isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3):
                raise ValueError(f"expected an HxW or HxWxC uint8 array, got {image.dtype} of shape {image.shape}")
            image = Image.fromarray(image)
        elif not isinstance(image, Image.Image):
            raise TypeError(f"expected a path, a PIL image or a uint8 array, got {type(image).__name__}")
        channels, size = self.input_size[0], self.input_size[1:]
        image = to_rgb(image) if channels == 3 else image.convert("L")
        resample = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST}.get(self.interpolation, Image.BICUBIC)
        # shorter side to size / crop_pct, then a centred crop: the arithmetic of torchvision's Resize/CenterCrop
        short = int(size[0] / self.crop_pct)
        if image.width <= image.height:
            new = (short, int(short * image.height / image.width))
        else:
            new = (int(short * image.width / image.height), short)
        image = image.resize(new, resample)
        top, left = int(round((image.height - size[0]) / 2.0)), int(round((image.width - size[1]) / 2.0))
        image = image.crop((left, top, left + size[1], top + size[0]))
        x = np.asarray(image, dtype=np.float32).reshape(size[0], size[1], channels).transpose(2, 0, 1) / 255.0
        return (x - self.mean) / self.std

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw logits of a preprocessed (B, C, H, W) float32 batch."""
        return np.array(self._run(np.ascontiguousarray(batch, dtype=np.float32)))

    def predict(self, images: ImageLike | Sequence[ImageLike], top_k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``top_k`` (label, probability) pairs of each image, most likely first."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        logits = self.logits(np.stack([self.preprocess(im) for im in images]))
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        order = np.argsort(-probs, axis=1)[:, :top_k]
        names = self.label_names or [f"class {i}" for i in range(probs.shape[1])]
        return [[(names[j], float(p[j])) for j in row] for p, row in zip(probs, order)]
