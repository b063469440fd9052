"""Training-data attribution: which training examples made this prediction.

:class:`LossModel` (the parameter subset), :class:`Influence` (streamed scores), the IHVP solvers
(:class:`ExactSolver`, :class:`IdentitySolver` (no curvature), dattri's LiSSA in :class:`LissaSolver`),
the Hessian subset samplers, and :class:`InformationAttributor` (Bayesian information-theoretic
attribution on tangent features, with greedy subset selection). :mod:`fex.tda.clean` is the poisoned-data cleaning experiment.
"""
from fex.tda.ihvp import ExactSolver, IdentitySolver, LissaSolver
from fex.tda.influence import Influence, top_k
from fex.tda.information import InformationAttributor
from fex.tda.model import LossModel
from fex.tda.samplers import FeatureSampler, FullSampler, LogitSampler, UniformSampler

__all__ = ["ExactSolver", "FeatureSampler", "FullSampler", "IdentitySolver", "Influence", "InformationAttributor",
           "LissaSolver", "LogitSampler", "LossModel", "UniformSampler", "top_k"]
