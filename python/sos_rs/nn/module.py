"""`Module`, `Parameter` and `Buffer`: a tree of trainable parameters and non-trainable state
(buffers) with PyTorch-style dotted names, which are also the names used in safetensors files,
checkpoints and HF exports. `state_dict()` holds both, so checkpoints, exports and the trainer's
rollback snapshots carry a model's buffers without knowing its family."""

from __future__ import annotations

from typing import Dict, Iterator, Mapping, Tuple, Union

import numpy as np

from .. import _core
from ..autograd import Tensor
from ..errors import ShapeError


class Parameter(Tensor):
    """A leaf tensor that requires grad; weight decay applies unless `no_decay` is set."""

    __slots__ = ("no_decay",)

    def __init__(self, array: Union[np.ndarray, _core.Tensor], no_decay: bool = False):
        # a Rust tensor is taken as is (sos import builds with untouched zero pages, then fills)
        data = array if isinstance(array, _core.Tensor) else _core.Tensor(np.ascontiguousarray(array, dtype=np.float32))
        super().__init__(data, requires_grad=True)
        self.no_decay = no_decay


class Buffer(Tensor):
    """Non-trainable model state that is saved with the weights (checkpoints, exports) but gets
    no gradient and no optimizer update, e.g. SAGI's EMA agent states. A model changes it in
    place with `assign`."""

    __slots__ = ()

    def __init__(self, array: np.ndarray):
        super().__init__(_core.Tensor(np.ascontiguousarray(array, dtype=np.float32)), requires_grad=False)

    def assign(self, array: np.ndarray) -> None:
        """Overwrites the value (same shape) with `array` converted to float32."""
        arr = np.ascontiguousarray(array, dtype=np.float32)
        if tuple(arr.shape) != tuple(self.shape):
            raise ShapeError(f"Buffer.assign: shape {tuple(arr.shape)} does not match {tuple(self.shape)}")
        self.data.copy_(_core.Tensor(arr))


class Module:
    """Registers Parameter, Buffer and Module attributes in assignment order."""

    _params: Dict[str, Parameter]
    _buffers: Dict[str, Buffer]
    _modules: Dict[str, "Module"]

    def __init__(self) -> None:
        object.__setattr__(self, "_params", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_modules", {})

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, Parameter):
            self._params[name] = value
        elif isinstance(value, Buffer):
            self._buffers[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def named_parameters(self, prefix: str = "") -> Iterator[Tuple[str, Parameter]]:
        seen: set[int] = set()
        for name, p in self._named(prefix):
            if id(p) not in seen:  # tied weights appear once, under their first name
                seen.add(id(p))
                yield name, p

    def _named(self, prefix: str):
        for name, p in self._params.items():
            yield prefix + name, p
        for name, m in self._modules.items():
            yield from m._named(prefix + name + ".")

    def named_buffers(self, prefix: str = "") -> Iterator[Tuple[str, Buffer]]:
        """Non-trainable state, dotted names as parameters' (empty for most families)."""
        for name, b in self._buffers.items():
            yield prefix + name, b
        for name, m in self._modules.items():
            yield from m.named_buffers(prefix + name + ".")

    def parameters(self) -> list:
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        return sum(p.data.numel() for p in self.parameters())

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def state_dict(self) -> Dict[str, np.ndarray]:
        """Parameters, then buffers, by dotted name (a family without buffers: parameters only)."""
        out = {name: p.numpy() for name, p in self.named_parameters()}
        out.update((name, b.numpy()) for name, b in self.named_buffers())
        return out

    def lazy_state_dict(self) -> Mapping[str, np.ndarray]:
        """What `state_dict` holds, but each array is copied out of its Rust buffer only when read
        (a checkpoint writes them one at a time instead of holding a second copy of the model)."""
        from ..train.checkpoint import LazyArrays

        own: Dict[str, Tensor] = dict(self.named_parameters())
        own.update(self.named_buffers())
        return LazyArrays({n: tuple(t.shape) for n, t in own.items()}, lambda n: own[n].numpy())

    def load_state_dict(self, state: Dict[str, np.ndarray], strict: bool = True) -> None:
        """Copies arrays into the parameters and buffers by name; shapes must match exactly."""
        own: Dict[str, Tensor] = dict(self.named_parameters())
        own.update(self.named_buffers())
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing {missing}, unexpected {unexpected}")
        for name, p in own.items():
            if name not in state:
                continue
            arr = np.asarray(state[name])
            if tuple(arr.shape) != tuple(p.shape):
                raise ShapeError(
                    f"load_state_dict: {name} has shape {tuple(arr.shape)}, the model expects {tuple(p.shape)}"
                )
            p.data.copy_(_core.Tensor(np.ascontiguousarray(arr, dtype=np.float32)))


class ModuleList(Module):
    """Submodules named 0, 1, 2, ... (as in `layers.3.mlp`)."""

    def __init__(self, modules) -> None:
        super().__init__()
        self._items = []
        for i, m in enumerate(modules):
            setattr(self, str(i), m)
            self._items.append(m)

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> Module:
        return self._items[i]
