"""The MSC network: config checks, shapes, masking, scores, init, gradients, determinism."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model.config import MSCConfig
from model.layers import StackedLayerNorm, StackedLinear
from model.losses import msc_loss
from model.network import MSC, fused_scores, similarity
from tests.model.batch_factory import make_batch, one_thread, tiny_config

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


def test_default_config_is_the_paper_tvr_setting():
    cfg = MSCConfig().validate()
    assert (cfg.hidden, cfg.heads, cfg.sft_factor, cfg.sim_thr) == (384, 4, 0.09, 0.8)
    assert cfg.gauss_widths == (None, 0.5, 1.0, 5.0, 10.0, 3.0, 0.1, 8.0)
    assert (cfg.rkd_d_coef, cfg.rkd_a_coef, cfg.vl_coef, cfg.hard_pool) == (15.0, 30.0, 0.1, 20)


@pytest.mark.parametrize(("field", "value"), [
    ("sim_thr", 1.5), ("sim_thr", -0.1), ("clip_tokens", "tome"), ("cbva", "on"),
    ("heads", 5), ("rkd_a_coef", -1.0), ("vl_coef", float("nan")), ("dropout", 1.0),
    ("sft_factor", 0.0), ("hidden", 0), ("tcp", "yes"), ("hard_pool", 0),
    ("gauss_widths", (None, -1.0)), ("margin", -0.1), ("text_dim", 7.5),
    ("input_dropout", 1.0), ("input_dropout", "0.1"),
])
def test_validate_names_the_bad_field(field, value):
    expected = "heads: must divide hidden (384)" if field == "heads" else f"MSCConfig.{field}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        MSCConfig(**{field: value}).validate()


def test_validate_lists_every_bad_field_one_line_each():
    cfg = MSCConfig(sim_thr=1.5, cbva="on", tcp=1, gauss_widths=[None, 0.0], hidden=30, heads=4,
                    input_dropout=None, dropout=0)
    with pytest.raises(ValueError) as caught:
        cfg.validate()
    assert str(caught.value).splitlines() == [
        "MSCConfig.heads: must divide hidden (30) without remainder, got 4",
        "MSCConfig.gauss_widths[1]: must be > 0.0, got 0.0",
        "MSCConfig.tcp: expected true or false, got 1",
        "MSCConfig.cbva: expected 'off', 'fixed' or 'adaptive', got 'on'",
        "MSCConfig.sim_thr: must be <= 1.0, got 1.5"]
    checked = MSCConfig(gauss_widths=[None, 2], dropout=0, rkd_d_coef=10).validate()
    assert checked.gauss_widths == (None, 2.0) and type(checked.gauss_widths[1]) is float
    assert type(checked.dropout) is float and type(checked.rkd_d_coef) is float
    assert checked == MSCConfig(gauss_widths=(None, 2.0), dropout=0.0, rkd_d_coef=10.0)


def test_network_rejects_an_invalid_config():
    with pytest.raises(ValueError, match="cbva"):
        MSC(MSCConfig(cbva="always"))


def test_forward_shapes_and_masked_frames_are_zero():
    batch = make_batch(videos=3, captions=[1, 2, 2])
    batch["frame_mask"][1, 100:] = 0
    out = MSC(tiny_config()).eval()(batch)
    assert out["query"].shape == (5, 32)
    assert out["clips"].shape == (3, 32, 32) and out["frames"].shape == (3, 128, 32)
    assert bool((out["frames"][1, 100:] == 0).all()) and bool((out["frames"][1, :100] != 0).any())


def test_padded_query_tokens_change_nothing():
    batch = make_batch(videos=2, captions=3, seed=4)
    model = MSC(tiny_config()).eval()
    reference = model.encode_queries(batch["tokens"], batch["token_mask"])
    longest = int(batch["token_mask"].sum(1).max())
    padding = (1 - batch["token_mask"]).unsqueeze(-1)  # [Q, M, 1]
    garbage = batch["tokens"] + 2.0 * torch.randn_like(batch["tokens"]) * padding
    torch.testing.assert_close(model.encode_queries(garbage, batch["token_mask"]), reference)
    short = model.encode_queries(batch["tokens"][:, :longest], batch["token_mask"][:, :longest])
    torch.testing.assert_close(short, reference, rtol=1e-5, atol=1e-6)


def test_similarity_is_the_max_over_tokens_and_fused_is_weighted():
    generator = torch.Generator().manual_seed(0)
    query, clips, frames = (torch.randn(*s, generator=generator) for s in [(4, 8), (3, 5, 8), (3, 7, 8)])
    clip_raw, frame_raw = similarity(query, clips, frames, normalize=False)
    clip_cos, frame_cos = similarity(query, clips, frames, normalize=True)
    for q in range(4):
        for v in range(3):
            best_dot = max(float(query[q] @ c) for c in clips[v])
            assert float(clip_raw[q, v]) == pytest.approx(best_dot, rel=1e-5)
            assert float(frame_cos[q, v]) == pytest.approx(
                max(float(F.cosine_similarity(query[q], f, dim=0)) for f in frames[v]), rel=1e-5)
    assert frame_raw.shape == clip_cos.shape == (4, 3)
    cfg = MSCConfig()
    torch.testing.assert_close(fused_scores(clip_cos, frame_cos, cfg), 0.4 * clip_cos + 0.6 * frame_cos)


def test_initialisation():
    model = MSC(tiny_config())
    weights = []
    for module in model.modules():
        if isinstance(module, (nn.LayerNorm, StackedLayerNorm)):
            assert bool((module.weight == 1).all()) and bool((module.bias == 0).all())
        if isinstance(module, (nn.Linear, StackedLinear, nn.Embedding)):
            weights.append(module.weight.detach().flatten())
            if getattr(module, "bias", None) is not None:
                assert bool((module.bias == 0).all())
    std = torch.cat(weights).std()
    assert 0.019 < float(std) < 0.021


def test_weight_token_starts_from_a_standard_normal():
    token = MSC(tiny_config(hidden=512, heads=2)).weight_token.detach()
    assert token.shape == (1, 1, 512)
    assert 0.85 < float(token.std()) < 1.15 and abs(float(token.mean())) < 0.15


def test_parameter_count_at_paper_size_is_the_released_models():
    with torch.device("meta"):
        model = MSC(MSCConfig())
    assert sum(p.numel() for p in model.parameters()) == 30_660_640


def test_input_dropout_rate_is_separate_from_the_attention_dropout():
    model = MSC(tiny_config(dropout=0.3, input_dropout=0.05))
    assert model.query_proj.dropout.p == model.frame_pos.dropout.p == 0.05
    assert model.clip_block.branches.dropout.p == model.clip_block.fuse_dropout.p == 0.3
    assert MSC(tiny_config(dropout=0.3)).clip_pos.dropout.p == 0.3


def _loss_and_grads(cfg, batch, seed):
    torch.manual_seed(seed)
    model = MSC(cfg).train()
    total, terms = msc_loss(cfg, model(batch), batch, model, hard_negatives=False)
    total.backward()
    return total, terms, model


def test_gradients_reach_every_trainable_parameter_of_full_msc():
    cfg = tiny_config(tcp=True, cbva="adaptive")
    batch = make_batch(videos=4, captions=2, seed=5)
    _, terms, model = _loss_and_grads(cfg, batch, seed=0)
    assert float(terms["segments"]) < 32
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert bool(torch.isfinite(param.grad).all()), name
        stacked = ".branches." in name and name.startswith(("clip_block", "frame_block"))
        per_branch = param.grad.flatten(1).abs().sum(1) if stacked else param.grad.abs().sum()
        assert bool((per_branch > 0).all()), name


def test_the_same_seed_gives_the_same_loss_and_gradients():
    cfg = tiny_config()
    batch = make_batch(videos=4, captions=[1, 2, 3, 2], seed=6)
    first_total, _, first = _loss_and_grads(cfg, batch, seed=11)
    second_total, _, second = _loss_and_grads(cfg, batch, seed=11)
    assert torch.equal(first_total, second_total)
    for (name, a), (_, b) in zip(first.named_parameters(), second.named_parameters(),
                                 strict=True):
        assert torch.equal(a.grad, b.grad), name
    third_total, _, _ = _loss_and_grads(cfg, batch, seed=12)
    assert not torch.equal(first_total, third_total)


def test_paper_size_forward_and_backward():
    cfg = MSCConfig(hidden=384, heads=4)
    batch = make_batch(videos=4, captions=2, video_dim=768, text_dim=768, seed=7)
    total, terms, model = _loss_and_grads(cfg, batch, seed=0)
    assert bool(torch.isfinite(total))
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    assert model.clip_block.branches.qkv.weight.shape == (8, 384, 3 * 384)
