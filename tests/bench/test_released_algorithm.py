"""The released-algorithm baseline computes what this project computes: same network outputs,
same loss terms (deterministic negatives: hard mode with a pool of 1), to 1e-5."""
from __future__ import annotations

import pytest
import torch

from bench.bench_ops import batched_step, make_inputs, released_loops_step
from bench.bench_step import our_step
from bench.dispatch_count import DispatchCounter
from bench.released_algorithm import (
    build_reference,
    released_batch,
    released_forward,
    released_step,
)
from bench.released_losses import released_loss, segment_count
from bench.released_optim import build_loop_optimizer
from model.losses import msc_loss
from model.network import MSC, similarity
from model.optim import build_optimizer
from tests.model.batch_factory import make_batch, one_thread, tiny_config
from tests.model.released_reference import randomised

pytestmark = pytest.mark.usefixtures(one_thread.__name__)

TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}
COMPARED_TERMS = ("nce_clip", "nce_frame", "triplet_clip", "triplet_frame", "tcp", "cbva")


def _setup(videos: int = 8, seed: int = 0):
    """A randomised tiny MSC, its released-algorithm twin and a batch in both layouts."""
    torch.manual_seed(seed)
    cfg = tiny_config(hard_pool=1)
    model = randomised(MSC(cfg), seed=seed, scale=0.1).eval()
    reference = build_reference(model).eval()
    batch = make_batch(videos=videos, captions=[1 + v % 3 for v in range(videos)], seed=seed)
    return cfg, model, reference, batch


def test_released_forward_equals_msc():
    cfg, model, reference, batch = _setup()
    with torch.no_grad():
        ours = model(batch)
        theirs = released_forward(reference, cfg, released_batch(batch))
    cos = similarity(ours["query"], ours["clips"], ours["frames"], normalize=True)
    raw = similarity(ours["query"], ours["clips"], ours["frames"], normalize=False)
    torch.testing.assert_close(theirs["query"], ours["query"], **TOLERANCE)
    torch.testing.assert_close(theirs["cos_clip"], cos[0], **TOLERANCE)
    torch.testing.assert_close(theirs["cos_frame"], cos[1], **TOLERANCE)
    torch.testing.assert_close(theirs["raw_clip"], raw[0], **TOLERANCE)
    torch.testing.assert_close(theirs["raw_frame"], raw[1], **TOLERANCE)
    torch.testing.assert_close(theirs["aligned_frames"], model.align(ours["frames"]), **TOLERANCE)
    torch.testing.assert_close(theirs["end_tokens"], batch["end_tokens"], rtol=0, atol=0)


def test_released_loss_terms_equal_msc_loss():
    cfg, model, reference, batch = _setup()
    with torch.no_grad():
        _, ours = msc_loss(cfg, model(batch), batch, model, hard_negatives=True)
        _, theirs = released_loss(cfg, released_forward(reference, cfg, released_batch(batch)),
                                  hard=True)
    for term in COMPARED_TERMS:
        torch.testing.assert_close(theirs[term], ours[term], **TOLERANCE, msg=term)
    assert theirs["segments"] == pytest.approx(float(ours["segments"]), abs=1e-6)
    torch.testing.assert_close(theirs["total"], ours["total"], **TOLERANCE)


def test_the_test_batch_spreads_the_segment_counts():
    cfg, _, reference, batch = _setup()
    ratios = released_forward(reference, cfg, released_batch(batch))["ratios"]
    assert len({segment_count(ratio) for ratio in ratios.values()}) >= 3


def test_released_step_trains_the_reference():
    cfg, _, reference, batch = _setup(videos=4)
    reference.train()
    before = [p.detach().clone() for p in reference.parameters()]
    terms = released_step(reference, cfg, build_loop_optimizer(reference, lr=1e-3),
                          released_batch(batch))
    assert torch.isfinite(terms["total"])
    assert all(not torch.equal(old, new)
               for old, new in zip(before, reference.parameters(), strict=True))


def test_released_ops_loops_equal_the_batched_ops():
    inputs = make_inputs(12, seed=3)
    torch.testing.assert_close(released_loops_step(inputs), batched_step(inputs), **TOLERANCE)


def test_our_step_reads_the_host_never_and_the_released_step_often():
    cfg, model, reference, batch = _setup(videos=4)
    model.train(), reference.train()
    optimizer = build_optimizer(model, lr=1e-3)
    loop_optimizer = build_loop_optimizer(reference, lr=1e-3)
    loop_batch = released_batch(batch)
    with DispatchCounter() as our_counts:
        our_step(model, optimizer, batch)
    with DispatchCounter() as released_counts:
        released_step(reference, cfg, loop_optimizer, loop_batch)
    assert our_counts.host_reads == 0, dict(our_counts.reads)
    assert released_counts.host_reads > 100
    assert released_counts.aten_ops > our_counts.aten_ops
