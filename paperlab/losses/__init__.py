"""Per-example losses in the optax.losses style, loss combinators and multi-task balancers."""

from paperlab.losses.classification import *  # noqa: F401,F403
from paperlab.losses.multilabel import *  # noqa: F401,F403
from paperlab.losses.metric import *  # noqa: F401,F403
from paperlab.losses.robust import *  # noqa: F401,F403
from paperlab.losses.regression import *  # noqa: F401,F403
from paperlab.losses.ranking import *  # noqa: F401,F403
from paperlab.losses.distillation import *  # noqa: F401,F403
from paperlab.losses.topkld import *  # noqa: F401,F403
from paperlab.losses.calibration import *  # noqa: F401,F403
from paperlab.losses.contrastive import *  # noqa: F401,F403
from paperlab.losses.sequence import *  # noqa: F401,F403
from paperlab.losses.regularizers import *  # noqa: F401,F403
from paperlab.losses.combinators import *  # noqa: F401,F403
from paperlab.losses.balancing import *  # noqa: F401,F403

from paperlab.losses import classification, multilabel, metric, robust, regression, ranking, distillation, topkld, calibration, contrastive, sequence, regularizers, combinators, balancing  # noqa: E402

__all__ = sorted(set().union(*(m.__all__ for m in (classification, multilabel, metric, robust, regression, ranking, distillation, topkld, calibration, contrastive, sequence, regularizers, combinators, balancing,))))
