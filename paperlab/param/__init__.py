"""Parametrizations (SP, NTK, muP, u-muP, depth-muP), coordinate checks, and initializations / reparametrizations."""

from paperlab.param.parametrization import *  # noqa: F401,F403
from paperlab.param.coordinates import *  # noqa: F401,F403

from paperlab.param import coordinates, parametrization  # noqa: E402

__all__ = sorted(set().union(*(m.__all__ for m in (coordinates, parametrization))))
