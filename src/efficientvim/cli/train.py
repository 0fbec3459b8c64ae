"""``efficientvim train``: train or fine-tune a classifier, detector or segmenter; with no ``--data``,
on the embedded digits (``--task detection|segmentation``: digit canvases).

Settings come from the task's recipe (``--recipe``; dense ones in ``efficientvim.dense.RECIPES``),
then a YAML ``--config`` file, then these options. Running the
same command again in the same ``--output`` resumes from its ``last.pt``.
"""

from __future__ import annotations

import argparse
import os

from ..train.recipes import DEFAULT_RECIPE, ConfigError, TrainConfig, build_config, recipe_names
from .common import fraction, input_size, non_negative_float, non_negative_int, positive_int, writable_folder

DENSE_TASKS = ("detection", "segmentation")
# the named recipes, written out so that --help imports nothing (a test checks them against the package)
DENSE_RECIPE_NAMES = {"detection": ("digits-fcos", "digits-retinanet"), "segmentation": ("digits-semantic-fpn",)}
RECIPE_HELP = (
    f"hyper-parameter set: classification {', '.join(recipe_names())} (default {DEFAULT_RECIPE}); "
    + "; ".join(f"{task} {', '.join(names)} (default {names[0]})" for task, names in DENSE_RECIPE_NAMES.items())
)  # as efficientvim.dense.data.TASKS (not imported: keeps --help light)
# command-line option -> TrainConfig field (the options a run is usually tuned with; YAML has every key)
OPTIONS = {
    "data": (str, "dataset root with train/ and val/ class folders (default: scikit-learn's digits); "
             "detection: train/, val/ and annotations/instances_{train,val}.json; "
             "segmentation: {train,val}/{images,masks}"),
    "dataset": (str, "a timm create_dataset name read from --data (torch/cifar10, hfds/NAME, ...)"),
    "model": (str, "model name, e.g. efficientvim_m2 (default efficientvim_m1)"),
    "checkpoint": (str, "initial weights to fine-tune: the authors' .pth, timm's or ours"),
    "epochs": (positive_int, "cosine epochs (the recipe's cool-down epochs follow)"),
    "batch_size": (positive_int, "images per process and step"),
    "accum_steps": (positive_int, "micro-batches per optimiser step (gradient accumulation)"),
    "img_size": (input_size, "training and evaluation resolution (at least 64); "
                 "detection with --data: shorter side "
                 "(default 512); segmentation with --data: training crop (default 512)"),
    "lr": (non_negative_float, "peak learning rate (default: the recipe's; for classification scaled by total batch / "
           "base batch)"),
    "drop_path": (fraction, "stochastic depth rate"),
    "workers": (non_negative_int, "data loading processes per training process"),
    "output": (str, "run folder: checkpoints, metrics, curves (default runs/digits or runs/train; "
               "dense: runs/digits-TASK or runs/TASK)"),
    "seed": (int, "random seed"),
    "distillation": (str, "none, hard or soft (DeiT) knowledge distillation"),
    "teacher": (str, "timm teacher model name (default regnety_160)"),
    "teacher_checkpoint": (str, "local file with the teacher's weights"),
}
# options of detection and segmentation runs only
DENSE_OPTIONS = {
    "arch": (str, "detection: retinanet, fcos, fasterrcnn or maskrcnn (default fcos); segmentation: semantic_fpn"),
    "train_ann": (str, "detection: COCO instances JSON of the training images (default DATA/annotations/...)"),
    "val_ann": (str, "detection: COCO instances JSON of the val images (default DATA/annotations/...)"),
}
# what dense runs take from OPTIONS (the rest is classification's)
DENSE_SHARED = ("data", "model", "checkpoint", "epochs", "batch_size", "img_size", "lr", "workers", "output", "seed")
FLAGS = {
    "amp": "mixed precision: bfloat16 on CPU, float16 on CUDA",
    "strict_data": "stop at the first unreadable image instead of skipping it",
}


HELP = "train a classifier, detector or segmenter (default: digits, minutes on CPU)"
DESCRIPTION = (
    "Train or fine-tune an EfficientViM classifier (or, with --task, a detector or segmenter); with no "
    "--data, on scikit-learn's digits. Settings come from the recipe (--recipe; each task has its own), "
    "then the YAML --config file, then these options. Running the same "
    "command again with the same --output and settings resumes from its last.pt (--resume: with changed ones)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=("classification", *DENSE_TASKS), default="classification",
                   help="what to train (default classification)")
    p.add_argument("--recipe", help=RECIPE_HELP)
    p.add_argument("--config", metavar="YAML", help="YAML file of TrainConfig keys; options given here win")
    for field, (kind, text) in (*OPTIONS.items(), *DENSE_OPTIONS.items()):
        p.add_argument("--" + field.replace("_", "-"), dest=field, type=kind, help=text)
    for field, text in FLAGS.items():
        p.add_argument("--" + field.replace("_", "-"), dest=field, action="store_true", default=None, help=text)
    p.add_argument("--model-arg", dest="model_args", action="append", metavar="KEY=VALUE",
                   help="model constructor override, e.g. embed_dim=64,96,128 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --output even though "
                   "its settings differ from these (a rerun with the same settings resumes without it)")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration as YAML and exit")


def parse_model_args(items: list[str] | None) -> dict | None:
    """``["embed_dim=64,96,128", "mlp_ratio=2"]`` -> ``{"embed_dim": [64, 96, 128], "mlp_ratio": 2}``."""
    if not items:
        return None
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--model-arg takes KEY=VALUE, got {item!r}")
        parts = [yaml.safe_load(v) for v in value.split(",")]
        out[key.strip()] = parts if "," in value else parts[0]
    return out


def resolve(args: argparse.Namespace) -> TrainConfig:
    overrides = {f: getattr(args, f) for f in (*OPTIONS, *FLAGS)}
    overrides["model_args"] = parse_model_args(args.model_args)
    return build_config(args.recipe, args.config, overrides)


def _given(args: argparse.Namespace, fields) -> list[str]:
    return ["--" + f.replace("_", "-") for f in fields if getattr(args, f) not in (None, False)]


def resolve_dense(args: argparse.Namespace):
    from ..train.dense import DenseTrainConfig
    from ..train.recipes import read_yaml

    classification_only = [f for f in (*OPTIONS, *FLAGS) if f not in DENSE_SHARED]
    wrong = _given(args, classification_only)
    if wrong:
        raise ConfigError(f"{', '.join(wrong)} applies to classification only, not --task {args.task}")
    values = {f: getattr(args, f) for f in (*DENSE_SHARED, *DENSE_OPTIONS) if getattr(args, f) is not None}
    changes = read_yaml(args.config) if args.config else {}
    recipe = args.recipe or changes.pop("recipe", None)  # as for classification, a YAML file may name its recipe
    return DenseTrainConfig(task=args.task, model_args=parse_model_args(args.model_args) or {},
                            recipe_changes=changes, recipe=recipe, **values)


def run(args: argparse.Namespace) -> int:
    # OpenMP threads sleep instead of spinning between parallel regions: a training run sharing its
    # cores with another process otherwise slows down many times. Read when torch loads OpenMP, which
    # parsing has not done yet; a value the user set wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.task != "classification":
        from ..train.dense import train_dense

        cfg = resolve_dense(args)
        if args.print_config:
            import yaml

            from ..train.dense import dense_recipe

            print(yaml.safe_dump(dense_recipe(cfg).to_dict(), sort_keys=False), end="")
            return 0
        writable_folder(cfg.default_output())
        return _exit_code(train_dense(cfg, resume_changed=args.resume).fit)
    wrong = _given(args, DENSE_OPTIONS)
    if wrong:
        raise ConfigError(f"{', '.join(wrong)} applies to --task detection|segmentation only")
    cfg = resolve(args)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    writable_folder(cfg.output)
    from ..train import train

    return _exit_code(train(cfg, resume_changed=args.resume).fit)


def _exit_code(fit) -> int:
    # a run stopped by a signal exits as the shell expects (128 + signal number); rerunning resumes it
    return 128 + fit.stopped_by if fit.stopped_by is not None else 0
