"""Pruning on parameter pytrees: magnitude and N:M masks, gradual schedules, GraNet prune-and-regrow, PERP, and an
optax transform that keeps pruned weights at zero."""

from paperlab.prune.masks import *  # noqa: F401,F403
from paperlab.prune.schedules import *  # noqa: F401,F403
from paperlab.prune.regrow import *  # noqa: F401,F403
from paperlab.prune.perp import *  # noqa: F401,F403
from paperlab.prune.regularizers import *  # noqa: F401,F403
from paperlab.prune.analysis import *  # noqa: F401,F403
from paperlab.prune.scores import *  # noqa: F401,F403
from paperlab.prune.isoflop import *  # noqa: F401,F403

from paperlab.prune import masks, schedules, regrow, perp, regularizers, analysis, scores, isoflop  # noqa: E402

__all__ = sorted(set().union(*(m.__all__ for m in (masks, schedules, regrow, perp, regularizers, analysis, scores, isoflop))))

from paperlab.prune.structured import *  # noqa: F401,F403,E402
from paperlab.prune.oracle import *  # noqa: F401,F403,E402
from paperlab.prune import structured, oracle  # noqa: E402

__all__ = sorted(set(__all__) | set(structured.__all__) | set(oracle.__all__))
