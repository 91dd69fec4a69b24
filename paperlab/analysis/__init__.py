"""Analysis tools on parameter pytrees: Hessian spectrum, loss landscapes, intrinsic dimension, landscape convergence
in the sample size, and the Softmax-Collapse tools of the grokking-stability paper (StableMax, the orthogonal gradient).

The linear-mode-connectivity barrier lives in :mod:`paperlab.merge` (``paperlab.merge.interpolation_curve``,
``paperlab.merge.loss_barrier``) and is not duplicated here.
"""

from paperlab.analysis.hessian import *  # noqa: F401,F403
from paperlab.analysis.landscape import *  # noqa: F401,F403
from paperlab.analysis.intrinsic_dim import *  # noqa: F401,F403
from paperlab.analysis.grokking import *  # noqa: F401,F403
from paperlab.analysis.convergence import *  # noqa: F401,F403

from paperlab.analysis import convergence, grokking, hessian, intrinsic_dim, landscape  # noqa: E402

__all__ = sorted(set().union(*(m.__all__ for m in (hessian, landscape, intrinsic_dim, grokking, convergence))))

# paperlab/analysis/sharpness.py exports a function of the same name, which is the package attribute `sharpness`
from paperlab.analysis.sharpness import *  # noqa: F401,F403,E402
from paperlab.analysis.sharpness import __all__ as _sharpness_all  # noqa: E402

__all__ = sorted(set(__all__) | set(_sharpness_all))

from paperlab.analysis.stability import *  # noqa: F401,F403,E402
from paperlab.analysis.stability import __all__ as _stability_all  # noqa: E402

__all__ = sorted(set(__all__) | set(_stability_all))
