"""Runtime gradient estimators (equinox Modules), usable without the DSL."""

from vrlang.estimators.base import AbstractGradientEstimator, CompiledObjective
from vrlang.estimators.finite_sum import (FullGradient, GLMControl, LSVRGGLMGradient, LSVRGGradient,
                                          MinibatchGradient, PAGEGradient, SAGAGLMGradient, SAGAGradient,
                                          SARAHGradient, SPIDERGradient, STORMGradient, SVRGGLMGradient, SVRGGradient)
from vrlang.estimators.sampling import FixedIndexSampler, ImportanceSampler, UniformSampler

__all__ = ["AbstractGradientEstimator", "CompiledObjective", "FixedIndexSampler", "FullGradient", "GLMControl",
           "ImportanceSampler", "LSVRGGLMGradient", "LSVRGGradient", "SVRGGLMGradient", "MinibatchGradient", "PAGEGradient", "SAGAGLMGradient",
           "SAGAGradient", "SARAHGradient", "SPIDERGradient", "STORMGradient", "SVRGGradient", "UniformSampler"]
