"""One bulk job, the same on every engine: what a row holds, how a file becomes a model input, how a batch of
inputs becomes rows, and what the output records about the model.

predict rows: ``path``, ``label``, ``probability``, ``topk_labels``, ``topk_probabilities``, ``error``; embed rows:
``path``, ``embedding`` (fixed-size list of float32, ``model.num_features`` long: the MSF head's pooled features,
``model.forward_head(model.forward_features(x), pre_logits=True)``), ``error``. A file that cannot be an input
(not an image, truncated, empty, too large, too small) is a row with its one-line ``error`` and nulls.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from ..errors import EfficientViMError
from ..images import check_min_side, load_image, read_image
from ..predict import class_names, make_transform, min_image_side
from .sources import is_uri, read_bytes

TASKS = ("predict", "embed")
METADATA_KEY = b"efficientvim"  # the Parquet schema metadata entry that records the job (JSON)


def schema(task: str, width: int) -> pa.Schema:
    """The Arrow schema of ``task``'s rows; ``width``: top-k for predict, the embedding length for embed."""
    if task == "predict":
        fields = [pa.field("label", pa.string()), pa.field("probability", pa.float32()),
                  pa.field("topk_labels", pa.list_(pa.string())),
                  pa.field("topk_probabilities", pa.list_(pa.float32()))]
    else:
        fields = [pa.field("embedding", pa.list_(pa.float32(), width))]
    return pa.schema([pa.field("path", pa.string(), nullable=False), *fields, pa.field("error", pa.string())])


def weights_hash(model: nn.Module) -> str:
    """SHA-256 of the model's weights (names, shapes, dtypes and bytes, in order): the same weights give the same
    hash whichever file or hub repo they came from."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tuple(tensor.shape)}:{t.dtype};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Job:
    """What is computed, recorded in every part: outputs made by another job are not mixed with these."""

    task: str
    model: str
    weights_sha256: str
    preprocessing: dict
    topk: int | None
    width: int  # the embedding length (embed) or top-k (predict)

    @classmethod
    def of(cls, model: nn.Module, task: str, topk: int = 5) -> Job:
        if task not in TASKS:
            raise EfficientViMError(f"unknown task {task!r}: predict or embed")
        if task == "predict" and not getattr(model, "num_classes", 0):
            raise EfficientViMError("predict needs a classifier: this model has no classes (use embed)")
        cfg = model.pretrained_cfg
        preprocessing = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()
                         if k in ("input_size", "crop_pct", "interpolation", "mean", "std")}
        topk = min(topk, model.num_classes) if task == "predict" else None
        return cls(task, model.model_name, weights_hash(model), preprocessing, topk,
                   topk if task == "predict" else model.num_features)

    def identity(self) -> dict:
        return {"task": self.task, "model": self.model, "weights_sha256": self.weights_sha256,
                "preprocessing": self.preprocessing, "topk": self.topk}

    def differences(self, recorded: dict) -> list[str]:
        """What ``recorded`` (an earlier part's job) computes otherwise than this job, in words."""
        mine, changes = self.identity(), []
        for key, value in mine.items():
            was = recorded.get(key)
            if was == value:
                continue
            if key == "weights_sha256":
                changes.append(f"weights {str(was)[:12]} -> {value[:12]}")
            elif isinstance(value, dict) and isinstance(was, dict):
                changes += [f"{k} {was.get(k)} -> {value.get(k)}" for k in value if was.get(k) != value.get(k)]
            else:
                changes.append(f"{key} {was} -> {value}")
        return changes

    def metadata(self, runtime: str, precision: str, engine: str) -> dict[bytes, bytes]:
        from .. import __version__

        record = {**self.identity(), "runtime": runtime, "precision": precision, "engine": engine,
                  "efficientvim": __version__}
        return {METADATA_KEY: json.dumps(record).encode()}


class Preprocess:
    """A file (path or URI) -> the model's input tensor, or the one-line reason it cannot be one. In two steps where
    they run apart (Ray): :meth:`pixels` (decode, resize, crop: a uint8 HxWxC array, a quarter of the floats) and
    :meth:`finish` (to a normalised tensor), which together are the model's own transform, exactly."""

    def __init__(self, model: nn.Module) -> None:
        from torchvision import transforms

        steps = make_transform(model).transforms
        self.resize, self.normalize = transforms.Compose(steps[:-2]), transforms.Compose(steps[-2:])
        self.min_side = min_image_side(model)

    def __call__(self, path: str) -> tuple[torch.Tensor | None, str | None]:
        image, error = self._read(path)
        return (self.normalize(self.resize(image)) if image is not None else None), error

    def pixels(self, path: str) -> tuple[np.ndarray | None, str | None]:
        image, error = self._read(path)
        return (np.asarray(self.resize(image)) if image is not None else None), error

    def finish(self, pixels: np.ndarray) -> torch.Tensor:
        from PIL import Image

        return self.normalize(Image.fromarray(pixels))

    def _read(self, path: str):
        """(the image, None), or (None, the one-line reason it is no input)."""
        try:
            if is_uri(path):
                return check_min_side(read_image(read_bytes(path), name=path), path, self.min_side), None
            return load_image(path, self.min_side), None
        except (EfficientViMError, OSError) as e:
            text = " ".join((str(e) or type(e).__name__).split())
            return None, text if path in text else f"{path}: {text}"


class Inference:
    """A batch of model inputs -> the task's columns, in the runtime and precision asked for."""

    def __init__(self, model: nn.Module, job: Job, runtime: str = "eager", precision: str = "fp32") -> None:
        from ..runtimes import inference_model

        self.job = job
        if job.task == "embed":  # the MSF head without classes returns its pooled features (pre_logits)
            model = copy.deepcopy(model)
            model.reset_classifier(0)
        self.names = class_names(model) if job.task == "predict" else []
        self.model = inference_model(model, runtime, precision)

    @torch.no_grad()
    def columns(self, batch: torch.Tensor) -> dict[str, list]:
        out = self.model(batch).float()
        if self.job.task == "embed":
            return {"embedding": list(out.cpu().numpy().astype(np.float32))}
        probs = out.softmax(-1)
        values, indices = probs.topk(self.job.topk, dim=-1)
        labels = [[self.names[i] for i in row] for row in indices.tolist()]
        return {"label": [row[0] for row in labels], "probability": values[:, 0].tolist(),
                "topk_labels": labels, "topk_probabilities": values.tolist()}


def rows_table(job: Job, paths: Sequence[str], inputs: Sequence[torch.Tensor | None], errors: Sequence[str | None],
               inference: Inference, batch_size: int) -> pa.Table:
    """The rows of ``paths`` (in order): the model's columns for those with an input, nulls and the error else."""
    good = [i for i, x in enumerate(inputs) if x is not None]
    columns: dict[str, list] = {name: [None] * len(paths) for name in schema(job.task, job.width).names}
    columns["path"], columns["error"] = list(paths), list(errors)
    for start in range(0, len(good), batch_size):
        chunk = good[start : start + batch_size]
        for name, values in inference.columns(torch.stack([inputs[i] for i in chunk])).items():
            for i, value in zip(chunk, values):
                columns[name][i] = value
    if job.task == "embed":  # a fixed-size list column is built from one flat array of the rows that have one
        width = job.width
        flat = np.concatenate([v if v is not None else np.zeros(width, np.float32) for v in columns["embedding"]]
                              ) if paths else np.zeros(0, np.float32)
        mask = pa.array([v is None for v in columns["embedding"]])
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), width, mask=mask)
    return pa.table(columns, schema=schema(job.task, job.width))
