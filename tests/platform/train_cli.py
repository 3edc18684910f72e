"""`msc train/eval/export` run in-process, and one torch thread, for the checkpoint CLI tests."""
from __future__ import annotations

import pytest
import torch

from msc_platform.cli.main import main


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as the tiny config asks (the CPU is shared); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def msc(argv: list[str]) -> int:
    """`msc <argv>` in this process, through the real entry point (which imports only the chosen
    command's module, so no Ray for train/eval/export)."""
    return main(argv)
