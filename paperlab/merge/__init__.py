"""Weight averaging, model merging and re-basin on parameter pytrees."""

from paperlab.merge.averaging import *  # noqa: F401,F403
from paperlab.merge.soups import *  # noqa: F401,F403
from paperlab.merge.task_vectors import *  # noqa: F401,F403
from paperlab.merge.subspace import *  # noqa: F401,F403
from paperlab.merge.io import *  # noqa: F401,F403
from paperlab.merge.fisher import *  # noqa: F401,F403
from paperlab.merge.regmean import *  # noqa: F401,F403
from paperlab.merge.rebasin import *  # noqa: F401,F403
from paperlab.merge.connectivity import *  # noqa: F401,F403
from paperlab.merge.continual import *  # noqa: F401,F403
from paperlab.merge.evolve import *  # noqa: F401,F403
from paperlab.merge.federated import *  # noqa: F401,F403
from paperlab.merge.wemoe import *  # noqa: F401,F403
from paperlab.merge.taskpool import *  # noqa: F401,F403
from paperlab.merge.alignment import *  # noqa: F401,F403
from paperlab.merge.delta_analysis import *  # noqa: F401,F403
from paperlab.merge.signatures import *  # noqa: F401,F403
from paperlab.merge.dam import *  # noqa: F401,F403

from paperlab.merge import averaging, soups, task_vectors, subspace, io, fisher, regmean, rebasin, connectivity, continual, evolve, federated, wemoe, taskpool, alignment, delta_analysis, dam, signatures  # noqa: E402

__all__ = sorted(set().union(*(m.__all__ for m in (averaging, soups, task_vectors, subspace, io, fisher, regmean, rebasin, connectivity, continual, evolve, federated, wemoe, taskpool, alignment, delta_analysis, dam, signatures,))))

from paperlab.merge.checkpoint import *  # noqa: F401,F403,E402
from paperlab.merge import checkpoint  # noqa: E402

__all__ = sorted(set(__all__) | set(checkpoint.__all__))

from paperlab.merge.mergekit_config import *  # noqa: F401,F403,E402
from paperlab.merge.streaming import *  # noqa: F401,F403,E402
from paperlab.merge import mergekit_config, streaming  # noqa: E402

__all__ = sorted(set(__all__) | set(mergekit_config.__all__) | set(streaming.__all__))
