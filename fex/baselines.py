"""Moved to :mod:`fex.methods` (one registry of every method); this path keeps old imports and old
``_target_: fex.baselines.<Method>`` configs working."""
from fex.methods import METHODS  # noqa: F401
from fex.methods.baselines import (Banzhaf, FeatureAblation, Fex, IntegratedGradients, KernelShap, Lime,  # noqa: F401
                                   Method, RandomAttribution, Rise, ShapleyValueSampling, _as_target, _Captum,
                                   msr_difference)
