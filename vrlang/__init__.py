"""vrlang: a small language and compiler for stochastic optimisation.

Public API (LANGUAGE.md §6)::

    prog = vrlang.compile("examples/logreg.vr")
    res = prog.solve(key=0)
"""

from vrlang.errors import VrDataError, VrError, VrEstimatorError, VrSyntaxError, VrTypeError, VrWarning
from vrlang.program import Program, Result, compile
from vrlang.solvers.status import Status
from vrlang.trainable import Trainable, trainable

__version__ = "0.1.0"

__all__ = ["compile", "Program", "Result", "Status", "VrError", "VrSyntaxError", "VrTypeError",
           "VrEstimatorError", "VrDataError", "VrWarning", "trainable", "Trainable", "__version__"]
