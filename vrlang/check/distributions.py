"""Typing of the distributions usable after ``~`` (numpyro classes by name).

For each supported class: the names of its positional parameters (in numpyro's order),
the sample's base type, and how many trailing axes of the first parameter form one
event (0 for scalar families, 1 for Dirichlet, MultivariateNormal, Categorical's probs).
"""

from __future__ import annotations

from dataclasses import dataclass

from vrlang.errors import Span, VrTypeError
from vrlang.ir.types import VType, broadcast, shape_str


@dataclass(frozen=True)
class DistInfo:
    params: tuple[str, ...]  # positional order
    alternatives: tuple[tuple[str, ...], ...] = ()  # groups of which exactly one is given
    base: str = "real"
    event_from: str | None = None  # parameter whose last axis is the event axis
    drop_last: bool = False  # sample drops the last axis of event_from (Categorical)
    reparam: bool = True
    discrete_support: bool = False


DISTRIBUTIONS: dict[str, DistInfo] = {
    "Normal": DistInfo(("loc", "scale")),
    "LogNormal": DistInfo(("loc", "scale")),
    "Laplace": DistInfo(("loc", "scale")),
    "Cauchy": DistInfo(("loc", "scale")),
    "Gumbel": DistInfo(("loc", "scale")),
    "Logistic": DistInfo(("loc", "scale")),
    "StudentT": DistInfo(("df", "loc", "scale")),
    "HalfNormal": DistInfo(("scale",)),
    "HalfCauchy": DistInfo(("scale",)),
    "Uniform": DistInfo(("low", "high")),
    "Exponential": DistInfo(("rate",)),
    "Beta": DistInfo(("concentration1", "concentration0")),
    "Gamma": DistInfo(("concentration", "rate")),
    "Dirichlet": DistInfo(("concentration",), event_from="concentration"),
    "MultivariateNormal": DistInfo(("loc", "covariance_matrix"), event_from="loc",
                                   alternatives=(("covariance_matrix", "scale_tril", "precision_matrix"),)),
    "Bernoulli": DistInfo(("probs",), alternatives=(("probs", "logits"),), base="int", reparam=False,
                          discrete_support=True),
    "Categorical": DistInfo(("probs",), alternatives=(("probs", "logits"),), base="int", reparam=False,
                            event_from="probs", drop_last=True, discrete_support=True),
    "Binomial": DistInfo(("total_count", "probs"), alternatives=(("probs", "logits"),), base="int",
                         reparam=False, discrete_support=True),
    "Poisson": DistInfo(("rate",), base="int", reparam=False),
    "Geometric": DistInfo(("probs",), alternatives=(("probs", "logits"),), base="int", reparam=False),
}


def type_distribution(name: str, args: list[VType], kwargs: dict[str, VType], span: Span | None,
                      kw_spans: dict[str, Span | None]) -> tuple[VType, tuple[str, ...]]:
    """The sample type of ``name(*args, **kwargs)`` and the parameter names in order."""
    info = DISTRIBUTIONS[name]
    names = list(info.params)
    if len(args) > len(names):
        raise VrTypeError("E220", f"`{name}` takes at most {len(names)} positional arguments "
                          f"({', '.join(names)}), got {len(args)}", span)
    given: dict[str, VType] = dict(zip(names, args))
    allowed = set(names) | {a for g in info.alternatives for a in g}
    for k, t in kwargs.items():
        if k not in allowed:
            raise VrTypeError("E221", f"`{name}` has no parameter `{k}`", kw_spans.get(k),
                              f"its parameters are: {', '.join(sorted(allowed))}")
        if k in given:
            raise VrTypeError("E221", f"parameter `{k}` of `{name}` given twice", kw_spans.get(k))
        given[k] = t
    for group in info.alternatives:
        present = [g for g in group if g in given]
        if len(present) != 1:
            raise VrTypeError("E222", f"`{name}` needs exactly one of {', '.join(group)}", span)
    required = [p for p in info.params if not any(p in g for g in info.alternatives)]
    missing = [p for p in required if p not in given]
    if missing:
        raise VrTypeError("E222", f"`{name}` is missing {', '.join(missing)}", span)
    for k, t in given.items():
        if t.base == "bool":
            raise VrTypeError("E210", f"parameter `{k}` of `{name}` must be a number, got {t}", span)
    event_param = info.event_from
    if event_param is not None and event_param not in given:
        event_param = next(g for grp in info.alternatives for g in grp if g in given and event_param in grp)
    if event_param is not None:
        t = given[event_param]
        if t.rank == 0:
            raise VrTypeError("E223", f"`{event_param}` of `{name}` must be a vector, got a scalar", span)
        shape = t.shape[:-1] if info.drop_last else t.shape
    else:
        shape = broadcast(*(t.shape for t in given.values()))
        if shape is None:
            raise VrTypeError("E211", f"the parameters of `{name}` do not broadcast: "
                              + ", ".join(f"{k} {shape_str(t.shape)}" for k, t in given.items()), span)
    return VType(info.base, shape), tuple(given)
