"""Runtime gradient estimators (equinox Modules), usable without the DSL."""

from vrlang.estimators.base import AbstractGradientEstimator, CompiledObjective
from vrlang.estimators.finite_sum import FullGradient, MinibatchGradient, SVRGGradient
from vrlang.estimators.sampling import UniformSampler

__all__ = ["AbstractGradientEstimator", "CompiledObjective", "FullGradient", "MinibatchGradient",
           "SVRGGradient", "UniformSampler"]
