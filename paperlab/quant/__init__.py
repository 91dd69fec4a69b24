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
from paperlab.quant.qat import *  # noqa: F401,F403
from paperlab.quant.qat_recipes import *  # noqa: F401,F403
from paperlab.quant.adaround import *  # noqa: F401,F403
from paperlab.quant.flexround import *  # noqa: F401,F403
from paperlab.quant.checkpoint import *  # noqa: F401,F403
from paperlab.quant.leanquant import *  # noqa: F401,F403
from paperlab.quant.billm import *  # noqa: F401,F403
from paperlab.quant.adaquant import *  # noqa: F401,F403
from paperlab.quant.bitalloc import *  # noqa: F401,F403
from paperlab.quant.bitmod import *  # noqa: F401,F403
from paperlab.quant.distill import *  # noqa: F401,F403
from paperlab.quant.nupes import *  # noqa: F401,F403
from paperlab.quant.rsq import *  # noqa: F401,F403
from paperlab.quant.guidedquant import *  # noqa: F401,F403
from paperlab.quant.sensitivity import *  # noqa: F401,F403
from paperlab.quant.pdquant import *  # noqa: F401,F403
from paperlab.quant.double_rounding import *  # noqa: F401,F403
from paperlab.quant.qllm import *  # noqa: F401,F403
from paperlab.quant.mambaquant import *  # noqa: F401,F403
from paperlab.quant.elastic import *  # noqa: F401,F403

# The submodules above, by name: ``paperlab.quant.dot`` / ``lorc`` are rebound to the functions of the same name by
# the star imports, so their modules are looked up in sys.modules rather than as attributes.
_MODULES = ("formats", "packing", "qarray", "dot", "dfloat", "rtn", "calibration", "gptq", "awq", "lorc",
            "smoothquant", "adaround", "flexround", "qat", "qat_recipes", "checkpoint", "leanquant", "billm", "distill",
            "bitmod", "adaquant", "bitalloc", "nupes", "rsq", "guidedquant", "sensitivity", "pdquant",
            "double_rounding", "qllm", "mambaquant", "elastic")
__all__ = sorted({name for _m in _MODULES for name in _sys.modules[f"{__name__}.{_m}"].__all__})
