"""Moved to :mod:`fex.cost` (the explainer measures its own cost too); this path keeps old imports working."""
from fex.cost import PassCounter, PeakMemory, method_modules  # noqa: F401
