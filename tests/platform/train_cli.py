"""`msc train/eval/export` run in-process, and one torch thread, for the checkpoint CLI tests."""
from __future__ import annotations

import argparse

import pytest
import torch

from msc_platform.commands.train import register


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as the tiny config asks (the CPU is shared); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def msc(argv: list[str]) -> int:
    """`msc <argv>` with only the train/eval/export commands registered (no Ray import)."""
    parser = argparse.ArgumentParser(prog="msc")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)
