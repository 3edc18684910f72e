"""Import the authors' released MSC code on a CPU-only machine, without editing it.

The released code is admins97/MSC_PRVR at commit 0b3e3d108ee08eaa336e21d93ba44103f27f2efc,
fetched by the user (it is never copied into this repository). `prepare(src)`:
- puts `src` first on `sys.path`, so its packages (`Models`, `Losses`, `Opts`, ...) import;
- makes `Tensor.cuda` and `Module.cuda` return their object unchanged when no GPU is present,
  so its `.cuda()` calls run on CPU;
- registers small stand-ins for the third-party modules it imports but does not need here
  (`ipdb`, `seaborn`; `easydict` when it is not installed), so no extra package is required.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

RELEASED_REPO = "admins97/MSC_PRVR"
RELEASED_COMMIT = "0b3e3d108ee08eaa336e21d93ba44103f27f2efc"
MARKER_FILES = ("Models/MSC/model.py", "Losses/loss.py", "Opts/optimization.py", "main.py")


class AttributeDict(dict):
    """A dict whose items are also attributes (what the released code expects of EasyDict)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


def _debugger_stand_in(*_args, **_kwargs):
    raise RuntimeError("the ipdb stand-in of tools/released cannot open a debugger")


def _stand_in_modules() -> dict[str, types.ModuleType]:
    """Stand-ins for the released code's unused or missing third-party imports."""
    ipdb = types.ModuleType("ipdb")
    ipdb.set_trace = _debugger_stand_in
    seaborn = types.ModuleType("seaborn")
    easydict = types.ModuleType("easydict")
    easydict.EasyDict = AttributeDict
    return {"ipdb": ipdb, "seaborn": seaborn, "easydict": easydict}


def _register_stand_ins() -> list[str]:
    """Register a stand-in for each module that is not installed; returns their names."""
    registered = []
    for name, module in _stand_in_modules().items():
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            sys.modules[name] = module
            registered.append(name)
    return registered


def _keep_on_cpu(obj, *_args, **_kwargs):
    return obj


def neutralise_cuda() -> bool:
    """Make `.cuda()` a no-op on tensors and modules when CUDA is unavailable; True if patched."""
    import torch

    if torch.cuda.is_available():
        return False
    torch.Tensor.cuda = _keep_on_cpu
    torch.nn.Module.cuda = _keep_on_cpu
    return True


def check_source(src: str | Path) -> Path:
    """The released source folder as an absolute path.

    Raises FileNotFoundError naming the folder and the first expected file it lacks.
    """
    root = Path(src).expanduser().resolve()
    for relative in MARKER_FILES:
        if not (root / relative).is_file():
            raise FileNotFoundError(
                f"--released-src {root}: no {relative}; expected a checkout of {RELEASED_REPO} "
                f"at commit {RELEASED_COMMIT}")
    return root


def prepare(src: str | Path) -> Path:
    """Make the released code at `src` importable and runnable on CPU; returns its folder.

    Raises FileNotFoundError when `src` is not a checkout of the released code.
    """
    root = check_source(src)
    _register_stand_ins()
    neutralise_cuda()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root
