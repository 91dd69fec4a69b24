"""Scaling laws: law forms (Kaplan, Chinchilla, power law), robust fits with bootstrap intervals, compute-optimal
allocation, the learning-rate-annealing law and the hyperparameter (Step) law."""

from paperlab.scaling.laws import *  # noqa: F401,F403
from paperlab.scaling.fit import *  # noqa: F401,F403
from paperlab.scaling.lr_annealing import *  # noqa: F401,F403
from paperlab.scaling.hparams import *  # noqa: F401,F403
from paperlab.scaling.ladder import *  # noqa: F401,F403
from paperlab.scaling.transfer import *  # noqa: F401,F403
from paperlab.scaling.enc_dec import *  # noqa: F401,F403
from paperlab.scaling.learning_curves import *  # noqa: F401,F403

from paperlab.scaling import laws, fit, lr_annealing, hparams, ladder  # noqa: E402
from paperlab.scaling import transfer  # noqa: E402
from paperlab.scaling import enc_dec, learning_curves  # noqa: E402

__all__ = sorted(set().union(*(m.__all__ for m in (laws, fit, lr_annealing, hparams, ladder, transfer, enc_dec,
                                                     learning_curves))))

from paperlab.scaling.muscaling import *  # noqa: F401,F403,E402
from paperlab.scaling import muscaling  # noqa: E402

__all__ = sorted(set(__all__) | set(muscaling.__all__))

from paperlab.scaling.plrf import *  # noqa: F401,F403,E402
from paperlab.scaling import plrf  # noqa: E402

__all__ = sorted(set(__all__) | set(plrf.__all__))

from paperlab.scaling.time_budget import *  # noqa: F401,F403,E402
from paperlab.scaling import time_budget  # noqa: E402

__all__ = sorted(set(__all__) | set(time_budget.__all__))
