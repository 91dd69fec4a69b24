"""Parameter-efficient fine-tuning as pytree transforms: LoRA, DoRA, LoHa / FedPara, Bone, asymmetric LoRA, FLoRA,
Hydra, MoS and PELA;
adapters saved and loaded in Hugging Face ``peft``'s format."""

from paperlab.peft.adapters import *  # noqa: F401,F403
from paperlab.peft.training import *  # noqa: F401,F403
from paperlab.peft.io import *  # noqa: F401,F403
from paperlab.peft.adalora import *  # noqa: F401,F403
from paperlab.peft.unified import *  # noqa: F401,F403
from paperlab.peft.eva import *  # noqa: F401,F403
from paperlab.peft.dynamic_rank import *  # noqa: F401,F403
from paperlab.peft.flora import *  # noqa: F401,F403
from paperlab.peft.hydra import *  # noqa: F401,F403
from paperlab.peft.mos import *  # noqa: F401,F403
from paperlab.peft.pela import *  # noqa: F401,F403

from paperlab.peft import adapters, training, io, adalora, unified, eva, dynamic_rank  # noqa: E402
from paperlab.peft import flora, hydra, mos, pela  # noqa: E402

__all__ = sorted(set().union(*(m.__all__ for m in (adapters, training, io, adalora, unified, eva, dynamic_rank,
                                                   flora, hydra, mos, pela))))
