"""sos_rs: a CPU-native FP32 engine for training small language models.

The compiled core (`sos_rs._core`) owns tensors and kernels; this package holds autograd,
modules, model families and optimizers.
"""

from . import _core, functional, nn, optim
from ._core import detected_isa, isa, num_threads, set_num_threads, thread_info
from .autograd import Tensor, no_grad, tensor
from .errors import DTypeError, InvalidValueError, ShapeError, SosError
from .models.dense import DenseConfig, DenseLM
from .models.discoverlm import DiscoverLM, DiscoverLMConfig
from .models.moa import MoAConfig, MoALM

__version__ = _core.__version__

__all__ = [
    "DTypeError",
    "DenseConfig",
    "DenseLM",
    "DiscoverLM",
    "DiscoverLMConfig",
    "InvalidValueError",
    "MoAConfig",
    "MoALM",
    "ShapeError",
    "SosError",
    "Tensor",
    "detected_isa",
    "functional",
    "isa",
    "nn",
    "no_grad",
    "num_threads",
    "optim",
    "set_num_threads",
    "thread_info",
    "tensor",
]
