"""The HSM-SSD ablation on the bundled digits: each variant trained with one short budget, several seeds.

    python benchmarks/ablation.py --epochs 5 --seeds 0 1 2 -o ablation/      # the table of docs/research.md

Rows: the digits model (EfficientViM-M1 at half width, as `efficientvim train` builds it) as the paper has
it, with twice the hidden states, with 2 and 4 selection heads, with recursive hidden-state mixing of depth 1
and 2, with hidden-state passing; then torchvision's ResNet-18 and timm's MobileNetV3-Small without and with
HSM-SSD blocks inserted (``efficientvim.insert_hsmssd``) after their stride-16 and stride-32 stages.

Every row is trained by the package's training engine (``efficientvim.train.loop.fit``) with the same
protocol: the `small` recipe's AdamW, cosine schedule and augmentation at the digits' 64 x 64 input, the
same epochs and batch size, no EMA; top-1 is the last epoch's on the 360 val digits. Also reported: params,
multiply-adds at 64 x 64 and eval throughput (batch 64, 2 threads; EfficientViM rows fused).
Results go to ``OUT/ablation.json`` and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import efficientvim as ev
from efficientvim.data import build_datasets
from efficientvim.flops import count_flops
from efficientvim.train.classification import build_optimizer, train_transform
from efficientvim.train.distributed import ResumableSampler, init_distributed
from efficientvim.train.evaluation import eval_loader, eval_transform, evaluate
from efficientvim.train.loop import Loop, fit, seed_all
from efficientvim.train.recipes import TrainConfig

DIGITS = dict(embed_dim=(64, 96, 160))  # the digits model's widths (efficientvim.train.recipes.DIGITS_DEFAULTS)
SIZE = 64
VARIANTS = {
    "baseline (paper)": dict(),
    "state_dim x2": dict(state_dim=(98, 50, 18)),
    "2 heads": dict(num_heads=2),
    "4 heads": dict(num_heads=4),
    "recursive depth 1": dict(mixer_depth=1),
    "recursive depth 2": dict(mixer_depth=2),
    "hidden-state passing": dict(state_passing=True),
}
CNNS = {  # name -> (builder, modules after which HSM-SSD blocks go)
    "ResNet-18": ("torchvision:resnet18", ["layer3", "layer4"]),
    "MobileNetV3-Small": ("timm:mobilenetv3_small_100", ["blocks.3", "blocks.5"]),
}


def build(row: str, num_classes: int) -> nn.Module:
    if row in VARIANTS:
        return ev.create_model("efficientvim_m1", num_classes=num_classes, **{**DIGITS, **VARIANTS[row]})
    name, _, hsm = row.partition(" + ")
    source, insert_after = CNNS[name]
    library, _, arch = source.partition(":")
    if library == "torchvision":
        import torchvision

        model = getattr(torchvision.models, arch)(num_classes=num_classes)
    else:
        import timm

        model = timm.create_model(arch, num_classes=num_classes)
    if hsm:
        ev.insert_hsmssd(model, insert_after, input_size=(SIZE, SIZE))
    return model


def train_row(row: str, seed: int, epochs: int, out: Path) -> dict:
    cfg = TrainConfig(epochs=epochs, img_size=SIZE, seed=seed, workers=0, output=str(out), ema=False,
                      scale=(0.6, 1.0), hflip=0.0, crop_pct=1.0, **{k: v for k, v in _small().items()})
    d = init_distributed("cpu")
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    preprocess = dict(interpolation=cfg.interpolation, mean=mean, std=std, crop_pct=cfg.crop_pct)
    train_ds, val_ds, classes = build_datasets(None, "", train_transform(cfg, mean, std),
                                               eval_transform(SIZE, preprocess))
    seed_all(seed)
    model = build(row, len(classes))
    sampler = ResumableSampler(train_ds, d, seed)
    loader = torch.utils.data.DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, drop_last=True)
    val_loader = eval_loader(val_ds, 64, 0, d)
    optimizer, scheduler, total = build_optimizer(model, cfg, 1, len(loader))
    criterion = nn.CrossEntropyLoss()

    def loss_fn(m: nn.Module, batch, epoch: int):
        x, y = batch
        return criterion(m(x), y), len(y)

    loop = Loop(model=model, optimizer=optimizer, scheduler=scheduler, train_loader=loader, loss_fn=loss_fn,
                evaluate=lambda: evaluate(model, val_loader, d), score=lambda m: m["top1"],
                save_best=lambda m, e: None, metadata=dict, settings={}, epochs=total, output=out, seed=seed,
                log=lambda *a: None)
    start = time.time()
    result = fit(loop, d)
    return dict(top1=result.last_metrics["top1"], seconds=time.time() - start, model=model.eval())


def _small() -> dict:
    from efficientvim.train.recipes import RECIPES

    keep = ("batch_size", "lr_base", "lr_base_batch", "warmup_lr_base", "min_lr_base", "lr_scaling", "warmup_epochs",
            "cooldown_epochs", "auto_augment", "color_jitter", "reprob", "mixup", "cutmix")
    return {k: v for k, v in RECIPES["small"].items() if k in keep}


@torch.inference_mode()
def throughput(model: nn.Module, rounds: int = 15) -> float:
    """Images per second at batch 64 (median of ``rounds`` timed calls after 3 untimed)."""
    x = torch.randn(64, 3, SIZE, SIZE)
    times = []
    for i in range(rounds + 3):
        start = time.perf_counter()
        model(x)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return 64 / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rows", nargs="*", help="rows to run (default: all)")
    p.add_argument("-o", "--output", default="ablation")
    args = p.parse_args()
    torch.set_num_threads(2)
    rows = args.rows or [*VARIANTS, *[f"{n}{s}" for n in CNNS for s in ("", " + HSM-SSD")]]
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    results = json.loads((out / "ablation.json").read_text()) if (out / "ablation.json").exists() else {}
    for row in rows:
        runs = []
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                run = train_row(row, seed, args.epochs, Path(tmp))
            runs.append(run)
            print(f"{row} seed {seed}: top-1 {run['top1']:.2f}% in {run['seconds']:.0f} s", flush=True)
        model = runs[0]["model"]
        fast = ev.fuse(model) if row in VARIANTS else model
        tops = [r["top1"] for r in runs]
        results[row] = dict(
            top1_mean=statistics.mean(tops), top1_std=statistics.stdev(tops) if len(tops) > 1 else 0.0, top1=tops,
            params=sum(p.numel() for p in model.parameters()), macs=count_flops(model, SIZE),
            img_per_s=throughput(fast), train_seconds=statistics.mean(r["seconds"] for r in runs),
            epochs=args.epochs, seeds=args.seeds)
        (out / "ablation.json").write_text(json.dumps(results, indent=1))
    print(f"\n| variant | top-1 % (mean ± std, {len(args.seeds)} seeds) | params | MACs at {SIZE}² | img/s (b64) |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        r = results[row]
        print(f"| {row} | {r['top1_mean']:.2f} ± {r['top1_std']:.2f} | {r['params'] / 1e6:.2f}M | "
              f"{r['macs'] / 1e6:.1f}M | {r['img_per_s']:.0f} |")


if __name__ == "__main__":
    main()
