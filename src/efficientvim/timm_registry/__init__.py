"""``import efficientvim.timm_registry`` registers our models in timm's registry as ``efficientvim_m1_ev`` ..
``efficientvim_m4_dist_ev`` (see :mod:`efficientvim.timm_registry.efficientvim`)."""

from . import efficientvim  # noqa: F401 (registers on import)
