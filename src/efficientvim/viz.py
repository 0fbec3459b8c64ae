"""Pictures of where EfficientViM's hidden states gather information.

In each HSM-SSD layer, hidden state n reads the tokens with the softmax weights A_n over the
H x W token grid (``HSMSSD.state_weights``). For the last block of every stage this module
captures those maps on one image and draws them over it: per stage the "owner" of every token
(the state that weights it most), the states with the most concentrated maps, the learned
multi-stage fusion weights softmax(w) of the MSF head, and the top predictions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .predict import FULL_RESOLUTION, class_names, make_transform, top_k
from .writing import write_figure

STATES_SHOWN = 8  # most concentrated states drawn per stage
# fewer tokens than this (a 64 px input gives stage 3 one token, stage 2 four): every state reads the same few
# tokens, so its panels would be near copies; the stage gets one line saying so instead
MIN_TOKENS_TO_DRAW = 9
OWNER_MIN_RATIO = 1.5  # a token has an owner if some state weights it at least 1.5x the uniform 1/(H W)
FIGURE_INCHES = (16.0, 10.0)
FIGURE_DPI = 100
FIGURE_SIZE_PX = (int(FIGURE_INCHES[0] * FIGURE_DPI), int(FIGURE_INCHES[1] * FIGURE_DPI))  # (width, height)


@torch.no_grad()
def hidden_state_maps(model: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Softmax weights A of the last block's HSM-SSD in each stage, (B, N_i, H_i, W_i), and the logits of x.

    Each map A[b, n] sums to 1 over the H_i x W_i tokens: how hidden state n weights the tokens
    it gathers from. The maps are recomputed from the exact input the mixer saw in the forward pass.
    """
    mixer_inputs: dict[int, torch.Tensor] = {}
    mixers = [stage.blocks[-1].mixer for stage in model.stages]
    hooks = [
        mixer.register_forward_pre_hook(lambda _m, args, i=i: mixer_inputs.__setitem__(i, args[0]))
        for i, mixer in enumerate(mixers)
    ]
    try:
        logits = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return [mixer.state_weights(mixer_inputs[i]) for i, mixer in enumerate(mixers)], logits


def fusion_weights(model: nn.Module) -> dict[str, list[float]]:
    """softmax(w) of the MSF head: how much each stage's hidden state (and the final map) counts in the logits."""
    out = {"heads": model.weights.detach().softmax(-1).tolist()}
    if getattr(model, "distilled", False):
        out["distillation heads"] = model.weights_dist.detach().softmax(-1).tolist()
    return out


def effective_tokens(maps: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of each map (..., H, W): the number of tokens a state effectively reads (1 = one token)."""
    p = maps.flatten(-2).double()
    entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)
    return entropy.exp().float()


@dataclass
class StateReport:
    """Everything the picture shows, computed from one image."""

    image: np.ndarray  # the model's input crop, (H, W, 3) in [0, 1]
    maps: list[torch.Tensor]  # per stage (N_i, H_i, W_i), each map summing to 1
    fusion: dict[str, list[float]]
    predictions: list[dict]


@torch.no_grad()
def state_report(model: nn.Module, image: Image.Image, k: int = 5, full_resolution: bool = False) -> StateReport:
    """Run ``model`` on ``image`` with its own preprocessing (or, ``full_resolution``, at the image's own size)
    and collect the hidden-state maps."""
    model.eval()
    param = next(model.parameters())
    x = make_transform(model, FULL_RESOLUTION if full_resolution else None)(image).unsqueeze(0)
    x = x.to(param.device, param.dtype)
    maps, logits = hidden_state_maps(model, x)
    predictions = top_k(logits, k, class_names(model))[0]
    cfg = model.pretrained_cfg
    mean = torch.tensor(cfg["mean"]).view(-1, 1, 1)
    std = torch.tensor(cfg["std"]).view(-1, 1, 1)
    crop = (x[0].float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    return StateReport(crop, [m[0].float().cpu() for m in maps], fusion_weights(model), predictions)


def _upsample(maps: torch.Tensor, size: tuple[int, int], mode: str) -> np.ndarray:
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(maps[None], size=size, mode=mode, **kwargs)[0].numpy()


def _short_label(label: str, width: int = 28) -> str:
    first = label.split(",")[0]
    return first if len(first) <= width else first[: width - 1] + "…"


def crowded_stages(report: StateReport) -> list[str]:
    """The stages whose maps have too few tokens to draw (``MIN_TOKENS_TO_DRAW``), as "stage 3 (1x1)"."""
    return [f"stage {s} ({m.shape[1]}x{m.shape[2]})" for s, m in enumerate(report.maps, start=1)
            if m.shape[1] * m.shape[2] < MIN_TOKENS_TO_DRAW]


def draw(report: StateReport, path: str | os.PathLike, title: str = "", note: str = "") -> Path:
    """Render ``report`` as one PNG of ``FIGURE_SIZE_PX`` pixels."""
    return write_figure(render(report, title, note), path, dpi=FIGURE_DPI)


def render(report: StateReport, title: str = "", note: str = ""):
    """``report`` as a matplotlib ``Figure`` of ``FIGURE_SIZE_PX`` pixels at ``FIGURE_DPI`` (not written)."""
    # a bare Figure renders with Agg and leaves pyplot's global state (and the user's backend) alone
    import matplotlib
    from matplotlib.figure import Figure

    image = report.image
    size = image.shape[:2]
    gray = image.mean(-1, keepdims=True)
    muted = 0.35 * image + 0.35 * gray + 0.15  # a pale copy the overlays sit on

    fig = Figure(figsize=FIGURE_INCHES, dpi=FIGURE_DPI, facecolor="white")
    grid = fig.add_gridspec(
        1 + len(report.maps), 1 + STATES_SHOWN, height_ratios=[1.3] + [1.0] * len(report.maps),
        width_ratios=[1.35] + [1.0] * STATES_SHOWN, left=0.01, right=0.99, top=0.91, bottom=0.04,
        wspace=0.1, hspace=0.3,
    )
    fig.suptitle(title, x=0.02, ha="left", fontsize=15, fontweight="bold")
    if note:
        fig.text(0.99, 0.965, note, ha="right", va="center", fontsize=10, color="#b03030")

    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(image)
    ax.set_title("model input", fontsize=10)
    ax.axis("off")

    ax = fig.add_subplot(grid[0, 2:5])
    series = list(report.fusion.items())
    names = [f"stage {i + 1} h" for i in range(len(series[0][1]) - 1)] + ["final map"]
    width = 0.8 / len(series)
    for j, (name, weights) in enumerate(series):
        pos = np.arange(len(weights)) + (j - (len(series) - 1) / 2) * width
        bars = ax.bar(pos, weights, width, label=name, color=["#4c72b0", "#dd8452"][j % 2])
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(np.arange(len(names)), names, fontsize=9)
    ax.set_ylim(0, max(max(w) for _, w in series) * (1.25 if len(series) == 1 else 1.45))
    ax.set_title("MSF head: fusion weights softmax(w)", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(axis="y", labelsize=8)
    if len(series) > 1:
        ax.legend(fontsize=8, frameon=False, ncol=len(series), loc="upper center")

    ax = fig.add_subplot(grid[0, 6:9])
    preds = report.predictions[::-1]
    probs = [p["probability"] for p in preds]
    bars = ax.barh(np.arange(len(preds)), probs, color="#55a868")
    ax.set_yticks(np.arange(len(preds)), [_short_label(p["label"]) for p in preds], fontsize=9)
    ax.bar_label(bars, labels=[f"{100 * p:.1f}%" for p in probs], fontsize=8, padding=2)
    ax.set_xlim(0, min(1.0, max(probs) * 1.3 + 1e-6))
    ax.set_title("top predictions", fontsize=10)
    ax.spines[["top", "right", "bottom"]].set_visible(False)
    ax.set_xticks([])

    palette = sum((matplotlib.colormaps[name].colors for name in ("tab20", "tab20b", "tab20c")), ())
    for s, maps in enumerate(report.maps, start=1):
        n, h, w = maps.shape
        if h * w < MIN_TOKENS_TO_DRAW:
            ax = fig.add_subplot(grid[s, :])
            ax.axis("off")
            ax.text(0.0, 0.5, f"stage {s}: {n} states over {h}x{w} tokens, too few for their maps to differ: a "
                    "larger input (--img-size, --full-resolution) gives them room", fontsize=11, va="center")
            continue
        eff = effective_tokens(maps)
        order = eff.argsort()  # most concentrated first

        # owner of each token: the state whose map weights it most, coloured by that state's rank;
        # left uncoloured where even that weight is near uniform, since the argmax of noise means nothing
        owner = maps.argmax(0)
        owned = maps.amax(0) * (h * w) >= OWNER_MIN_RATIO
        rank_of = torch.empty(n, dtype=torch.long)
        rank_of[order] = torch.arange(n)
        up = _upsample(rank_of[owner].float()[None], size, "nearest")[0].astype(int)
        up_owned = _upsample(owned.float()[None], size, "nearest")[0][..., None]
        colours = np.array(palette * (n // len(palette) + 1))[:n]
        ax = fig.add_subplot(grid[s, 0])
        ax.imshow(muted + up_owned * 0.55 * (colours[up] - muted))
        owners = len(torch.unique(owner[owned]))
        ownership = f"tokens owned by {owners} states" if owners else "no owners: every map near uniform"
        ax.set_title(f"stage {s}: {n} states, {h}x{w} tokens\n{ownership}", fontsize=9)
        ax.axis("off")

        # brightness relative to each map's peak, the peak taken as at least twice the uniform weight
        # 1 / (h w): a near-uniform map then looks evenly half-lit instead of amplifying its noise
        spot = _upsample(maps[order[:STATES_SHOWN]], size, "bilinear") * (h * w)
        for j, state in enumerate(order[:STATES_SHOWN].tolist()):
            ax = fig.add_subplot(grid[s, 1 + j])
            light = spot[j] / max(float(spot[j].max()), 2.0)
            ax.imshow(np.clip(image * (0.08 + 0.92 * light[..., None]), 0, 1))
            ax.set_title(f"state {state}: reads {eff[state]:.1f} tokens", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colours[rank_of[state]])
                spine.set_linewidth(3)
    fig.text(
        0.01, 0.004,
        "Each map: one hidden state's softmax weights A over the tokens (sums to 1) in the stage's last block; states "
        "sorted by the number of tokens they effectively read, exp(entropy).\nA token's owner is the state that "
        f"weights it most, shown where that weight is at least {OWNER_MIN_RATIO}x uniform; frame colours match owners.",
        fontsize=8, color="#555555",
    )
    return fig
