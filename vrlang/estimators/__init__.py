"""Runtime gradient estimators (equinox Modules), usable without the DSL."""

from vrlang.estimators.base import AbstractGradientEstimator, CompiledObjective
from vrlang.estimators.finite_sum import (FullGradient, LSVRGGradient, MinibatchGradient, PAGEGradient,
                                          SAGAGLMGradient, SAGAGradient, SARAHGradient, SPIDERGradient,
                                          STORMGradient, SVRGGradient)
from vrlang.estimators.sampling import FixedIndexSampler, ImportanceSampler, UniformSampler

__all__ = ["AbstractGradientEstimator", "CompiledObjective", "FixedIndexSampler", "FullGradient",
           "ImportanceSampler", "LSVRGGradient", "MinibatchGradient", "PAGEGradient", "SAGAGLMGradient",
           "SAGAGradient", "SARAHGradient", "SPIDERGradient", "STORMGradient", "SVRGGradient", "UniformSampler"]
