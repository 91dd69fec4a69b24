"""Quantization: number formats (int-k, FP8/FP6/FP4, OCP MX, NF4), packed ``QArray`` tensors, post-training
quantization and lossless compression, as pure functions over arrays and parameter pytrees."""

import sys as _sys

from paperlab.quant.formats import *  # noqa: F401,F403
from paperlab.quant.packing import *  # noqa: F401,F403
from paperlab.quant.qarray import *  # noqa: F401,F403
from paperlab.quant.dot import *  # noqa: F401,F403  (binds paperlab.quant.dot to the function)
from paperlab.quant.dfloat import *  # noqa: F401,F403
from paperlab.quant.rtn import *  # noqa: F401,F403
from paperlab.quant.calibration import *  # noqa: F401,F403
from paperlab.quant.gptq import *  # noqa: F401,F403
from paperlab.quant.awq import *  # noqa: F401,F403
from paperlab.quant.lorc import *  # noqa: F401,F403
from paperlab.quant.smoothquant import *  # noqa: F401,F403

# Every paperlab.quant submodule imported above contributes its __all__ (one import line per module, so modules
# can be added independently).
__all__ = sorted({name for _mod_name, _mod in list(_sys.modules.items())
                  if _mod_name.startswith(__name__ + ".") and hasattr(_mod, "__all__")
                  for name in _mod.__all__})
