"""Parametrizations (SP, NTK, muP, u-muP, depth-muP), coordinate checks, and initializations / reparametrizations."""

from paperlab.param.parametrization import *  # noqa: F401,F403
from paperlab.param.coordinates import *  # noqa: F401,F403
from paperlab.param.inits import *  # noqa: F401,F403
from paperlab.param.reparam import *  # noqa: F401,F403

from paperlab.param import coordinates, inits, parametrization, reparam  # noqa: E402

__all__ = sorted(set().union(*(m.__all__ for m in (coordinates, inits, parametrization, reparam))))
