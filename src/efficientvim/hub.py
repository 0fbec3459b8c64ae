"""Models as folders and Hugging Face Hub repos, in timm's hub layout:

    model.safetensors   the weights, in this package's one format (``save_weights``: architecture, classes,
                        preprocessing in the metadata; safetensors, so loading never runs code)
    config.json         timm's hub config: ``architecture`` (the family name both ports know, e.g.
                        ``efficientvim_m1``), ``num_classes``, ``model_args`` (a changed stage layout),
                        ``label_names`` and ``pretrained_cfg`` (preprocessing)
    README.md           a generated model card: architecture, parameters, multiply-adds, the speed and
                        accuracy the caller measured (each with its command), how to load it

``efficientvim.create_model`` (and ``from_pretrained``) reads such a folder, a hub repo (``hf-hub:USER/REPO``
or ``USER/REPO``) or one of timm's own EfficientViM repos; timm reads ours with its own port
(``timm.create_model("hf-hub:USER/REPO", pretrained=True)`` or ``local-dir:FOLDER``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from torch import nn

from .errors import CheckpointError
from .metadata import check_fields, check_model_args
from .weights import SSD_OPTIONS, STAGE_LAYOUT, model_layout, save_weights
from .writing import staging

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LEGACY_WEIGHTS_NAME = "pytorch_model.bin"  # timm's repos carry both; read with weights_only, never run
CARD_NAME = "README.md"
HUB_PREFIX = "hf-hub:"
# pretrained_cfg keys written to config.json: what timm's data pipeline and tools read
CFG_KEYS = ("input_size", "interpolation", "crop_pct", "mean", "std", "first_conv", "classifier", "num_classes",
            "fixed_input_size", "pool_size")


def is_source(name: str) -> bool:
    """Whether ``name`` names a folder or hub repo rather than a registered model."""
    return name.startswith(HUB_PREFIX) or "/" in name or os.sep in name or Path(name).is_dir()


def resolve(source: str, revision: str | None = None) -> tuple[dict, Path]:
    """(config.json contents, weights file) of a folder or hub repo, downloaded (and cached) if remote."""
    if not source.startswith(HUB_PREFIX) and Path(source).is_dir():
        folder = Path(source)
        config = folder / CONFIG_NAME
        if not config.is_file():
            raise CheckpointError(f"{folder} has no {CONFIG_NAME}: save it with efficientvim.save_pretrained, "
                                  "or pass a weights file as checkpoint=")
        weights = folder / WEIGHTS_NAME
        if not weights.is_file() and (folder / LEGACY_WEIGHTS_NAME).is_file():
            weights = folder / LEGACY_WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"{folder} has no {WEIGHTS_NAME}: the folder is incomplete")
        return _read_config(config), weights
    repo = source.removeprefix(HUB_PREFIX)
    if not source.startswith(HUB_PREFIX):
        if repo.count("/") != 1 or Path(repo).anchor or repo.startswith((".", "~")):
            raise CheckpointError(f"{source} is neither a folder here nor a hub repo id (USER/REPO): check the path")
        if Path(repo).parent.is_dir():  # runs/typo with a local runs/: a path, not a repo
            raise CheckpointError(f"no folder {source} here: check the path (for a hub repo write hf-hub:{repo})")
    try:
        config = fetch(repo, CONFIG_NAME, revision)
    except CheckpointError as e:
        if source.startswith(HUB_PREFIX):
            raise
        raise CheckpointError(f"no folder {source} here, and as a hub repo: {e}") from None
    try:
        weights = fetch(repo, WEIGHTS_NAME, revision)
    except CheckpointError:
        weights = fetch(repo, LEGACY_WEIGHTS_NAME, revision)
    return _read_config(config), weights


def fetch(repo: str, filename: str, revision: str | None = None) -> Path:
    """One file of a hub repo through huggingface_hub's cache, or a one-line error saying why not."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the hub logs every retry; the failure is reported below in one line
    offline = os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0")
    try:
        # without a network, said at once (huggingface_hub's own retries took 23 s to fail) unless the file is
        # cached; with one, huggingface_hub checks the cached copy against the hub as always
        unreachable = None if offline else _unreachable_hub()
        if unreachable:
            try:
                return Path(hf_hub_download(repo, filename, revision=revision, local_files_only=True))
            except Exception:
                raise ConnectionError(unreachable) from None
        return Path(hf_hub_download(repo, filename, revision=revision))
    except Exception as e:
        why = ("offline mode (HF_HUB_OFFLINE) is set" if offline else str(e) if isinstance(e, ConnectionError)
               else f"the download failed: {type(e).__name__}")
        where = f"https://huggingface.co/{repo}/resolve/main/{filename}"
        if filename == WEIGHTS_NAME and repo.startswith("timm/"):  # a published weights file alone will do
            then = f"fetch {where} on a machine with internet and pass it as checkpoint=PATH (--checkpoint PATH)"
        else:
            then = (f"download the repo's {CONFIG_NAME} and {WEIGHTS_NAME} into a folder on a machine with internet "
                    "and pass the folder instead")
        raise CheckpointError(f"no cached {filename} for hub repo {repo} and {why}; {then}") from None
    finally:
        hf_logging.set_verbosity(level)


HUB_CONNECT_TIMEOUT = 3.0  # seconds to open a connection to the hub before calling it unreachable


def _unreachable_hub() -> str | None:
    """Why the hub cannot be reached (no connection within ``HUB_CONNECT_TIMEOUT``), or None. Behind a proxy
    the hub itself is not dialled, so no verdict is given there."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_CONNECT_TIMEOUT).close()
    except OSError as e:
        return f"{url.hostname} is unreachable ({type(e).__name__}: {e.strerror or e})"
    return None


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not readable JSON ({type(e).__name__}): the download may be broken") from None
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise CheckpointError(f"{path} does not name an architecture: not a timm or efficientvim model config")
    check_fields(config, str(path))
    check_model_args(config.get("model_args"), str(path))
    cfg = config.get("pretrained_cfg")
    if cfg is not None and not isinstance(cfg, dict):
        raise CheckpointError(f"{path} records pretrained_cfg = {str(cfg)[:40]!r}, which should be a mapping")
    check_fields(cfg or {}, f"{path} pretrained_cfg")
    return config


def source_settings(config: Mapping) -> tuple[str, dict, dict]:
    """(registered model name, create_model arguments, preprocessing metadata) of a config.json, ours or
    timm's: the architecture without a weights tag or the ``_ev`` suffix of our timm registration."""
    name = config["architecture"].partition(".")[0].removesuffix("_ev")
    args = {k: tuple(v) if k in STAGE_LAYOUT or k in SSD_OPTIONS else v
            for k, v in (config.get("model_args") or {}).items()}
    cfg = config.get("pretrained_cfg") or {}
    meta = {k: cfg[k] for k in ("input_size", "crop_pct", "interpolation", "mean", "std") if cfg.get(k) is not None}
    labels = config.get("label_names") or cfg.get("label_names")
    if isinstance(labels, list) and all(isinstance(n, str) for n in labels):
        meta["class_names"] = labels
    return name, args, meta


def hub_config(model: nn.Module, class_names: Sequence[str] | None = None) -> dict:
    """config.json for ``model`` in timm's hub layout (what ``timm.create_model("hf-hub:...")`` reads). The
    stage layout is always written, so a narrowed or deepened variant rebuilds in either port (the HSM-SSD
    variants, which timm's port does not have, only when used). ``class_names``: instead of the model's own."""
    cfg = dict(model.pretrained_cfg)
    if class_names is not None:
        cfg["label_names"] = list(class_names)
    args = model_layout(model)
    if model.in_chans != 3:
        args["in_chans"] = model.in_chans
    return {
        "architecture": model.model_name,
        "num_classes": model.num_classes,
        "num_features": model.num_features,
        "global_pool": "avg",
        **({"label_names": list(cfg["label_names"])} if cfg.get("label_names") else {}),
        "model_args": args,
        "pretrained_cfg": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items() if k in CFG_KEYS},
    }


def save_pretrained(
    model: nn.Module,
    folder: str | os.PathLike,
    speed: Sequence[Mapping] | None = None,
    accuracy: Sequence[Mapping] | None = None,
    name: str | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write ``model`` as a loadable folder: model.safetensors, config.json and a model card README.md.

    ``class_names`` (one per class) are recorded in the weights and config.json, as ``save_weights`` records
    them; without it, the model's own (``pretrained_cfg["label_names"]``) if it has them.

    ``speed``: rows of ``efficientvim bench`` (its results.json, or ``run_benchmark`` results as dicts),
    each with ``command`` and ``machine`` added by the caller when known; ``accuracy``: rows with
    ``dataset``, ``top1`` (percent) and ``command``. The card reports only what is given, and says so
    when nothing was measured. Returns the folder.
    """
    from .model import EfficientViM

    if not isinstance(model, EfficientViM) or not hasattr(model, "model_name"):
        raise TypeError("save_pretrained takes a classifier made by efficientvim.create_model")
    folder = Path(folder)
    names = list(class_names) if class_names is not None else None
    # the three files are written together: weights and config of one model, or the folder as it was
    with staging(folder, folder / WEIGHTS_NAME) as new:
        save_weights(model, new / WEIGHTS_NAME, class_names=names)  # checks one string per class
        config = hub_config(model, names)
        (new / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        card = model_card(model, config, name or folder.name, speed, accuracy, on_hub=bool(name))
        (new / CARD_NAME).write_text(card)
    return folder


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    speed: Sequence[Mapping] | None = None,
    accuracy: Sequence[Mapping] | None = None,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str = "Upload EfficientViM model",
    class_names: Sequence[str] | None = None,
):
    """``save_pretrained`` into a temporary folder and upload it to the hub repo ``repo_id`` (created if
    missing). An existing README.md in the repo is kept. Returns huggingface_hub's commit info."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    keep_card = api.file_exists(repo_id, CARD_NAME, revision=revision)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(model, Path(tmp) / "model", speed, accuracy, name=repo_id, class_names=class_names)
        if keep_card:
            (folder / CARD_NAME).unlink()
        return api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision, create_pr=create_pr,
                                 commit_message=commit_message)


def model_card(
    model: nn.Module,
    config: Mapping,
    name: str,
    speed: Sequence[Mapping] | None,
    accuracy: Sequence[Mapping] | None,
    on_hub: bool = True,
) -> str:
    """The README.md of a saved model: hub metadata, what the model is, how to load it, what was measured."""
    from . import __version__
    from .flops import count_flops

    cfg = config["pretrained_cfg"]
    size = tuple(cfg["input_size"][1:])
    params = sum(p.numel() for p in model.parameters())
    macs = count_flops(model, size)
    labels = config.get("label_names")
    classes = f"{model.num_classes}" + (f" ({', '.join(labels[:5])}{', ...' if len(labels) > 5 else ''})"
                                        if labels else "")
    layout = ", ".join(f"{k} {'/'.join(map(str, getattr(model, k)))}" for k in STAGE_LAYOUT)
    lines = [
        "---",
        "tags:",
        "- image-classification",
        "- timm",
        "- efficientvim",
        "library_name: timm",
        "pipeline_tag: image-classification",
        "license: mit",  # the package's licence, as the authors' code (MIT)
        "---",
        f"# {name}",
        "",
        "EfficientViM (Efficient Vision Mamba with Hidden State Mixer based State Space Duality, CVPR 2025), "
        f"written by efficientvim {__version__}.",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | `{config['architecture']}` ({layout}{', distilled' if model.distilled else ''}) |",
        f"| classes | {classes} |",
        f"| parameters | {params / 1e6:.2f} M |",
        f"| multiply-adds | {macs / 1e6:.0f} M at {size[0]}x{size[1]} |",
        f"| input | {cfg['input_size'][0]} channels, {size[0]}x{size[1]}, {cfg['interpolation']}, crop "
        f"{cfg['crop_pct']}, mean {_fmt(cfg['mean'])}, std {_fmt(cfg['std'])} |",
        "",
        "## Use",
        "",
        "```python",
        "import efficientvim",
        f'model = efficientvim.from_pretrained("{name}").eval()',
        "# or with timm alone (its own EfficientViM port reads the same files):",
        "import timm",
        f'model = timm.create_model("{"hf-hub" if on_hub else "local-dir"}:{name}", pretrained=True).eval()',
        "```",
        "",
        "## Speed",
        "",
    ]
    if speed:
        lines += ["| model | runtime | precision | batch | resolution | threads | images/s | ms/image | machine |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in speed:
            lines.append(f"| {r['model']} | {r['runtime']} | {r['precision']} | {r['batch_size']} | "
                         f"{r['resolution']} | {r['threads']} | {r['images_per_s']:.1f} | {r['ms_per_image']:.2f} | "
                         f"{r.get('machine', 'not recorded')} |")
        lines += ["", *sorted({f"Command: `{r['command']}`" for r in speed if r.get("command")})]
    else:
        lines.append(f"Not measured for this upload. `efficientvim bench --models {model.model_name}+fuse` times "
                     f"the registered {model.model_name} layout (weights do not change the time).")
    lines += ["", "## Accuracy", ""]
    if accuracy:
        lines += ["| data | top-1 (%) | command |", "|---|---|---|"]
        lines += [f"| {a['dataset']} | {a['top1']:.2f} | `{a.get('command', 'not recorded')}` |" for a in accuracy]
    else:
        lines.append("Not measured for this upload.")
    return "\n".join(lines) + "\n"


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"
