"""Count what a piece of PyTorch code dispatches: every ATen op, and the host reads among them.

`DispatchCounter` is a context manager. Inside it, a TorchDispatchMode sees every ATen op that
reaches the dispatcher (forward, the autograd engine's backward ops, optimiser ops), and a
TorchFunctionMode sees the Python-level tensor conversions that dispatch nothing.

A host read is a point where the host must wait for a tensor's value (a device sync on a GPU):
- `aten._local_scalar_dense`: `.item()`, `float(t)`, `int(t)`, `bool(t)`, `f"{t:.3f}"`, `if t:`;
- `aten.nonzero`, `aten.masked_select`: outputs whose size depends on the data
  (`torch.where(mask)`, `t[mask]` through `nonzero` inside some kernels);
- `aten.index.Tensor` and `aten.index_put` with a boolean index (`t[mask]`, its backward): the
  output size is the mask's count;
- `aten._to_copy` from a non-CPU tensor to the CPU (`.cpu()`, `.to("cpu")`);
- `Tensor.tolist()`, `Tensor.numpy()` and `Tensor.__array__` (NumPy conversion), seen at the
  Python level because on the CPU they dispatch no copy op.
Host-to-device transfers (`torch.tensor(list)`, indexing with a NumPy array) are not reads.
"""
from __future__ import annotations

from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
VALUE_READS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default}
MASK_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
                 aten._index_put_impl_.default}
PYTHON_READS = {"tolist", "numpy", "__array__"}


def _has_bool_index(args: tuple) -> bool:
    """True when the index list (second argument) of an index op holds a boolean tensor."""
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)
               for index in indices or ())


def _is_device_to_host(args: tuple, kwargs: dict) -> bool:
    """True for an `aten._to_copy` that copies a non-CPU tensor to the CPU."""
    source = args[0] if args else None
    target = kwargs.get("device")
    return (isinstance(source, torch.Tensor) and source.device.type != "cpu"
            and target is not None and torch.device(target).type == "cpu")


def is_host_read(func, args: tuple, kwargs: dict) -> bool:
    """Whether the ATen op `func` called with `args, kwargs` reads a tensor back to the host."""
    if func in VALUE_READS:
        return True
    if func in MASK_INDEXING:
        return _has_bool_index(args)
    if func is aten._to_copy.default:
        return _is_device_to_host(args, kwargs)
    return False


class _AtenCounter(TorchDispatchMode):
    """Counts ATen ops, and host-reading ones by op name."""

    def __init__(self, owner: "DispatchCounter"):
        super().__init__()
        self.owner = owner

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.owner.aten_ops += 1
        if is_host_read(func, args, kwargs):
            self.owner.reads[str(func.overloadpacket.__name__)] += 1
        return func(*args, **kwargs)


class _ConversionCounter(TorchFunctionMode):
    """Counts Tensor.tolist / numpy / __array__ calls (no ATen copy op on the CPU)."""

    def __init__(self, owner: "DispatchCounter"):
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in PYTHON_READS:
            self.owner.reads[name] += 1
        return func(*args, **(kwargs or {}))


class DispatchCounter:
    """`with DispatchCounter() as counts:` -> counts.aten_ops, counts.host_reads, counts.reads.

    `reads` is a Counter of host reads by kind (op or method name). Nested use is not supported.
    """

    def __init__(self):
        self.aten_ops = 0
        self.reads: Counter = Counter()
        self._modes = (_ConversionCounter(self), _AtenCounter(self))

    @property
    def host_reads(self) -> int:
        """All host reads counted so far."""
        return sum(self.reads.values())

    def __enter__(self) -> "DispatchCounter":
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
