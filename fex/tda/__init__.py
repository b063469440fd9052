"""Training-data attribution: which training examples made this prediction (influence functions).

:class:`LossModel` (the parameter subset), :class:`Influence` (streamed scores), the IHVP solvers
(:class:`ExactSolver`, dattri's LiSSA in :class:`LissaSolver`) and the Hessian subset samplers.
"""
from fex.tda.ihvp import ExactSolver, LissaSolver
from fex.tda.influence import Influence, top_k
from fex.tda.model import LossModel
from fex.tda.samplers import FeatureSampler, FullSampler, LogitSampler, UniformSampler

__all__ = ["ExactSolver", "FeatureSampler", "FullSampler", "Influence", "LissaSolver", "LogitSampler", "LossModel",
           "UniformSampler", "top_k"]
