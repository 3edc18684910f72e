"""The training loop's step: host reads per window, torch.compile and bf16 against the eager fp32 step."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from bench.dispatch_count import DispatchCounter
from msc_platform.run.config import apply_overrides
from msc_platform.run.data import prepare_data
from msc_platform.run.runtime import seed_everything
from msc_platform.run.train import Trainer

CPU = torch.device("cpu")


def _trainer(cfg) -> Trainer:
    """A seeded trainer whose training loader is a fixed list of batches (no loader work)."""
    seed_everything(cfg.train.seed)
    data = prepare_data(cfg)
    trainer = Trainer(cfg, replace(data, train=list(data.train)), CPU)
    seed_everything(cfg.train.seed)
    return trainer


def _host_reads(cfg) -> tuple[int, int]:
    """(host reads during one epoch, steps in it)."""
    trainer = _trainer(cfg)
    with DispatchCounter() as counter:
        trainer.train_epoch(0)
    return counter.host_reads, len(trainer.data.train)


@pytest.mark.slow
def test_the_loop_reads_the_host_once_per_log_window(tiny_config):
    cfg = apply_overrides(tiny_config, {"train.batch_size": 2, "tracking.enabled": False,
                                        "train.log_every": 3})
    reads, steps = _host_reads(cfg)
    assert steps >= 9
    assert reads <= steps // 3 + 2  # one per window, the last partial window, the epoch means
    per_step, _ = _host_reads(apply_overrides(cfg, {"train.log_every": 1}))
    assert per_step >= steps  # the counter sees each window's read


def _three_steps(cfg) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Total loss of three training steps and the weights after them."""
    trainer = _trainer(cfg)
    losses = [float(trainer.train_step(batch, epoch=0)["total"])
              for batch in trainer.data.train[:3]]
    return losses, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _assert_same_training(got, want, rtol: float, atol: float) -> None:
    torch.testing.assert_close(torch.tensor(got[0]), torch.tensor(want[0]), rtol=rtol, atol=atol)
    for key in want[1]:
        torch.testing.assert_close(got[1][key], want[1][key], rtol=rtol, atol=atol, msg=key)


def _deterministic(tiny_config, **overrides):
    values = {"tracking.enabled": False, "model.dropout": 0.0, "train.lr": 1e-3,
              "train.warmup": 0.0, **overrides}
    return apply_overrides(tiny_config, values)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])  # inductor: its C++ CPU code
def test_compiled_step_equals_the_eager_step(tiny_config, backend):
    eager = _three_steps(_deterministic(tiny_config))
    torch._dynamo.reset()
    cfg = _deterministic(tiny_config, **{"train.compile": True, "train.compile_backend": backend})
    # inductor draws random numbers (the triplet loss's random negatives) from its own generator
    # unless told to call torch's, which the eager step uses
    with torch._inductor.config.patch(fallback_random=True):
        compiled = _three_steps(cfg)
    _assert_same_training(compiled, eager, rtol=1e-4, atol=1e-5)


def _without_queries(batch: dict, count: int) -> dict:
    """The batch less `count` queries, taken from videos that keep at least one."""
    labels = batch["query_labels"].tolist()
    left = {video: labels.count(video) for video in set(labels)}
    dropped = set()
    for index, video in enumerate(labels):
        if len(dropped) < count and left[video] > 1:
            dropped.add(index)
            left[video] -= 1
    assert len(dropped) == count
    keep = torch.tensor([i for i in range(len(labels)) if i not in dropped])
    out = {**batch, "cap_ids": [batch["cap_ids"][i] for i in keep.tolist()]}
    out.update({key: batch[key][keep] for key in ("tokens", "token_mask", "end_tokens",
                                                  "query_labels")})
    return out


@pytest.mark.slow
def test_compiled_step_does_not_recompile_per_batch(tiny_config):
    cfg = _deterministic(tiny_config, **{"train.compile": True, "train.compile_backend": "eager",
                                         "train.batch_size": 6})
    trainer = _trainer(cfg)
    first = trainer.data.train[0]
    batches = [_without_queries(first, count) for count in range(5)]  # 5 caption counts
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for batch in batches:
        trainer.train_step(batch, epoch=0)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs <= 3  # the first compile and at most 2 recompilations (then dynamic shapes)


def _update_cosine(got: dict, want: dict, start: dict) -> float:
    """Cosine between the two runs' weight changes from `start`, over all parameters."""
    deltas = [torch.cat([(run[key] - start[key]).flatten().double() for key in start])
              for run in (got, want)]
    return float(torch.nn.functional.cosine_similarity(deltas[0], deltas[1], dim=0))


@pytest.mark.slow
def test_bf16_step_stays_close_to_fp32(tiny_config):
    cfg = _deterministic(tiny_config)
    start = {k: v.detach().clone() for k, v in _trainer(cfg).model.state_dict().items()}
    fp32 = _three_steps(cfg)
    bf16 = _three_steps(_deterministic(tiny_config, **{"train.bf16": True}))
    # bf16 matmuls round to 8 bits of mantissa: the losses agree to ~1%, and the three updates
    # point the same way (an update of Adam is about lr per weight whatever the gradient's
    # size, so small gradients whose sign flips under rounding move single weights apart)
    torch.testing.assert_close(torch.tensor(bf16[0]), torch.tensor(fp32[0]), rtol=3e-2, atol=0)
    assert _update_cosine(bf16[1], fp32[1], start) > 0.9
