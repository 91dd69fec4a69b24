"""Optimizers as optax GradientTransformations (compose them in any optax.chain), schedules and batch-size rules."""

from paperlab.optim.projection import *  # noqa: F401,F403
from paperlab.optim.sharpness import *  # noqa: F401,F403
from paperlab.optim.perturbation import *  # noqa: F401,F403
from paperlab.optim.adaptive import *  # noqa: F401,F403
from paperlab.optim.momentum import *  # noqa: F401,F403
from paperlab.optim.lowrank import *  # noqa: F401,F403
from paperlab.optim.conflict import *  # noqa: F401,F403
from paperlab.optim.curvature import *  # noqa: F401,F403
from paperlab.optim.kronecker import *  # noqa: F401,F403
from paperlab.optim.schedules import *  # noqa: F401,F403
from paperlab.optim.batch_size import *  # noqa: F401,F403
from paperlab.optim.independent_decay import *  # noqa: F401,F403

from paperlab.optim import projection, sharpness, perturbation, adaptive, momentum, lowrank, conflict, curvature, kronecker, schedules, batch_size, independent_decay  # noqa: E402

__all__ = sorted(set().union(*(m.__all__ for m in (projection, sharpness, perturbation, adaptive, momentum, lowrank, conflict, curvature, kronecker, schedules, batch_size, independent_decay,))))
