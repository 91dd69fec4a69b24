"""Parametrizations (SP, NTK, muP, u-muP, depth-muP), coordinate checks, initializations / reparametrizations, and
the magnitude-invariant parametrization of hypernetworks."""

from paperlab.param.parametrization import *  # noqa: F401,F403
from paperlab.param.coordinates import *  # noqa: F401,F403
from paperlab.param.inits import *  # noqa: F401,F403
from paperlab.param.reparam import *  # noqa: F401,F403
from paperlab.param.norm_constraints import *  # noqa: F401,F403

from paperlab.param import coordinates, inits, norm_constraints, parametrization, reparam  # noqa: E402

__all__ = sorted(set().union(*(m.__all__ for m in (coordinates, inits, norm_constraints, parametrization, reparam))))

from paperlab.param.subcloning import *  # noqa: F401,F403,E402
from paperlab.param import subcloning  # noqa: E402

__all__ = sorted(set(__all__) | set(subcloning.__all__))

from paperlab.param.second_order import *  # noqa: F401,F403,E402
from paperlab.param import second_order  # noqa: E402

__all__ = sorted(set(__all__) | set(second_order.__all__))

# the module paperlab/param/abc.py exports a function of the same name, which is the package attribute `abc`
from paperlab.param.abc import *  # noqa: F401,F403,E402
from paperlab.param.abc import __all__ as _abc_all  # noqa: E402

__all__ = sorted(set(__all__) | set(_abc_all))

from paperlab.param.spectral_reg import *  # noqa: F401,F403,E402
from paperlab.param.spectral_reg import __all__ as _spectral_reg_all  # noqa: E402

__all__ = sorted(set(__all__) | set(_spectral_reg_all))

from paperlab.param.presets import *  # noqa: F401,F403,E402
from paperlab.param.presets import __all__ as _presets_all  # noqa: E402

__all__ = sorted(set(__all__) | set(_presets_all))

from paperlab.param.hypernet import *  # noqa: F401,F403,E402
from paperlab.param.hypernet import __all__ as _hypernet_all  # noqa: E402

__all__ = sorted(set(__all__) | set(_hypernet_all))
