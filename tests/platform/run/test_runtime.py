"""keep_freed_memory: a training step's large freed blocks are reused, not faulted in again, in
the main thread, and in another thread (a Ray Tune trial's) when the process starts with
training_thread_env."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from msc_platform.run.runtime import ARENA_MAX_ENV, training_thread_env

PROBE = """
import resource, sys, threading, torch
from msc_platform.run.runtime import keep_freed_memory
if sys.argv[1] != "default":
    assert keep_freed_memory()
from model.losses import msc_loss
from model.network import MSC
from tests.model.batch_factory import make_batch, tiny_config
torch.set_num_threads(1)
torch.manual_seed(0)
model = MSC(tiny_config(hidden=64)).train()  # [8, 32, 128, 256] activations: 32 MiB each
batch = make_batch(videos=32, captions=2)

def step():
    model.zero_grad(set_to_none=True)
    msc_loss(model.cfg, model(batch), batch, model, hard_negatives=False)[0].backward()

def two_steps():
    step()
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)

if sys.argv[1] == "thread":
    worker = threading.Thread(target=two_steps)
    worker.start()
    worker.join()
else:
    two_steps()
"""


def _page_faults(mode: str, env: dict[str, str] | None = None) -> int:
    """Minor page faults of the second of two training steps, in a fresh interpreter whose
    environment is this one's without MALLOC_ARENA_MAX, plus `env`."""
    clean = {k: v for k, v in os.environ.items() if k != ARENA_MAX_ENV}
    result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                            check=True, env={**clean, **(env or {})})
    return int(result.stdout.strip())


@pytest.mark.slow
def test_a_steps_large_blocks_are_reused():
    default, kept = _page_faults("default"), _page_faults("keep")
    assert kept < default / 3, (default, kept)  # measured: 155-162k against 0-33k


@pytest.mark.slow
def test_a_step_in_another_thread_reuses_its_blocks_only_with_the_training_thread_env():
    plain = _page_faults("thread")
    with_env = _page_faults("thread", training_thread_env())
    assert with_env < plain / 3, (plain, with_env)  # measured: 45k against 8k


def test_the_training_thread_env_keeps_a_users_own_arena_count(monkeypatch):
    monkeypatch.delenv(ARENA_MAX_ENV, raising=False)
    assert training_thread_env() == {ARENA_MAX_ENV: "1"}
    monkeypatch.setenv(ARENA_MAX_ENV, "4")
    assert training_thread_env() == {ARENA_MAX_ENV: "4"}
