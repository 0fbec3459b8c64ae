"""The benchmark's pictures: speed against published top-1, and speed against resolution."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ..registry import list_models, model_config
from ..writing import write_figure
from .models import FUSE_SUFFIX, TIMM_PREFIX, model_family
from .results import Result

# Published ImageNet-1k top-1 (%), for the speed-accuracy plot only: EfficientViM's from the registry
# (450-epoch weights), the peers' as quoted in the EfficientViM paper.
PEER_TOP1 = {
    "shvit_s1": 72.8, "shvit_s2": 75.2, "shvit_s3": 77.4, "shvit_s4": 79.4,
    "mobilenetv3_large_100": 75.2, "efficientvit_m2": 70.8, "efficientvit_m4": 74.3, "efficientvit_m5": 77.1,
}  # fmt: skip


PUBLISHED_TOP1 = {**{name: model_config(name)["top1"] for name in list_models("*m?")}, **PEER_TOP1}


def _family_label(name: str) -> str:
    """``efficientvim_m2+fuse`` -> ``efficientvim fused``, ``timm:shvit_s2`` -> ``shvit (timm)``."""
    family = re.sub(r"_[a-z]?\d+(_\d+)?$", "", model_family(name))
    return _label(name.replace(model_family(name), family))


def _label(name: str) -> str:
    if name.startswith(TIMM_PREFIX):
        return name.removeprefix(TIMM_PREFIX) + " (timm)"
    return name.replace(FUSE_SUFFIX, " fused")


def plot_speed_accuracy(results: Sequence[Result], path: str | Path, title: str) -> Path | None:
    """Published top-1 against measured throughput at the largest batch; our models as a connected front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.error is None and model_family(r.model) in PUBLISHED_TOP1]
    if not ok:
        return None
    batch = max(r.batch_size for r in ok)
    ok = [r for r in ok if r.batch_size == batch]
    fig, ax = plt.subplots(figsize=(7, 5))
    groups: dict[str, list[Result]] = {}
    for r in ok:
        groups.setdefault(f"{_family_label(r.model)} {r.runtime}", []).append(r)
    for key, rs in sorted(groups.items()):
        rs.sort(key=lambda r: PUBLISHED_TOP1[model_family(r.model)])
        xs = [r.images_per_s for r in rs]
        ys = [PUBLISHED_TOP1[model_family(r.model)] for r in rs]
        ours = not rs[0].model.startswith(TIMM_PREFIX)
        ax.plot(xs, ys, "o-" if ours or len(rs) > 1 else "o", lw=2.5 if ours else 1, label=key, zorder=3 if ours else 2)
        for r, x, y in zip(rs, xs, ys):
            ax.annotate(model_family(r.model).split("_")[-1], (x, y), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
    ax.set_xlabel(f"throughput (images/s, batch {batch})")
    ax.set_ylabel("published ImageNet-1k top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    write_figure(fig, path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_resolution_scaling(results: Sequence[Result], path: str | Path, title: str) -> Path | None:
    """Time per image against pixels per image (log-log), one line per model and runtime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.error is None]
    lines: dict[tuple[str, str, int], list[Result]] = {}
    for r in ok:
        lines.setdefault((r.model, r.runtime, r.batch_size), []).append(r)
    lines = {k: sorted(v, key=lambda r: r.resolution) for k, v in lines.items() if len({r.resolution for r in v}) > 1}
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(7, 5))
    for (model, runtime, batch), rs in sorted(lines.items()):
        pixels = [r.resolution**2 for r in rs]
        ax.plot(pixels, [r.ms_per_image for r in rs], "o-", lw=2.5 if not model.startswith(TIMM_PREFIX) else 1,
                label=f"{_label(model)} {runtime} b{batch}")  # fmt: skip
    first = min(lines.values(), key=lambda rs: rs[0].ms_per_image)
    p0, t0 = first[0].resolution ** 2, first[0].ms_per_image
    p1 = max(r.resolution for rs in lines.values() for r in rs) ** 2
    ax.plot([p0, p1], [t0, t0 * p1 / p0], "k:", lw=1, label="linear in pixels")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("pixels per image")
    ax.set_ylabel("ms per image")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6)
    fig.tight_layout()
    write_figure(fig, path, dpi=120)
    plt.close(fig)
    return Path(path)
