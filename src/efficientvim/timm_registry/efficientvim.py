"""This package's models in timm's registry, in the same family as timm's own port:

    import efficientvim.timm_registry      # one line, then anywhere that builds models through timm:
    timm.create_model("efficientvim_m2_ev", num_classes=10)
    timm.create_model("efficientvim_m2_ev.e450_in1k", pretrained=True, features_only=True)

Each of our names gets the suffix ``_ev`` (timm's ``efficientvim_*`` stay timm's). timm files a model under
the name of the module that registers it (its port: ``timm.models.efficientvim``), so this module is called
``efficientvim`` too: ``timm.list_models(module="efficientvim")`` lists both ports, and tools (timm's own
test suite among them) that treat the family by module or by the pattern ``efficientvim*`` treat ours
alike. The entrypoints build
through :func:`efficientvim.create_model`, so every keyword timm passes (``num_classes``, ``features_only``,
``out_indices``, ``drop_path_rate``, ``global_pool``, ``device``, ``dtype``, ``pretrained_cfg_overlay`` ...)
means what it means there; the pretrained tags are timm's published weights, which our models load as they are.
"""

from __future__ import annotations

from collections.abc import Callable

from timm.models import generate_default_cfgs, register_model
from torch import nn

from ..registry import PRETRAINED_TAGS, create_model, list_models

SUFFIX = "_ev"


def _cfg(name: str) -> dict:
    # the registry's own pretrained-config fields, for timm's tools (data config, classifier, first conv)
    cfg = create_model(name, device="meta").pretrained_cfg
    keep = ("input_size", "pool_size", "crop_pct", "interpolation", "mean", "std", "first_conv", "classifier",
            "fixed_input_size", "num_classes")
    return {k: cfg[k] for k in keep}


default_cfgs = generate_default_cfgs({
    f"{name}{SUFFIX}.{tag}": {**_cfg(name), "hf_hub_id": f"timm/{name}.{tag}"}
    for name in list_models() for tag in PRETRAINED_TAGS["_dist" if name.endswith("_dist") else ""]
})


def _entrypoint(name: str) -> Callable[..., nn.Module]:
    def build(pretrained: bool = False, pretrained_cfg=None, cache_dir=None, **kwargs) -> nn.Module:
        # timm hands over the tag of NAME.TAG (as a string, a dict or a PretrainedCfg) and its cache folder;
        # our create_model fetches the same published file
        tag = pretrained_cfg if isinstance(pretrained_cfg, str) else (
            pretrained_cfg.get("tag") if isinstance(pretrained_cfg, dict) else getattr(pretrained_cfg, "tag", None))
        tag = tag if pretrained else None
        return create_model(f"{name}.{tag}" if tag else name, pretrained=pretrained, **kwargs)

    build.__name__ = build.__qualname__ = name + SUFFIX
    build.__module__ = __name__
    build.__doc__ = f"EfficientViM {name} from the efficientvim package (see efficientvim.create_model)."
    return build


for _name in list_models():
    globals()[_name + SUFFIX] = register_model(_entrypoint(_name))
