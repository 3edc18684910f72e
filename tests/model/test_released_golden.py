"""This project's MSC against numbers recorded from the authors' released code.

tests/model/data/released_golden.pt was written by tools/released/record_golden.py running the
released code (admins97/MSC_PRVR, the commit stored in the file) on CPU in float32: its
initial weights, a small batch with OP-ToMe clip tokens and a padded video, eval-mode outputs,
loss terms, gradients and three BertAdam steps. Here the weights go through
`convert_authors_state_dict` into our MSC, and every number must agree to 1e-5 (float32,
relative and absolute).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.config import MSCConfig
from model.interop import convert_authors_state_dict
from model.losses import msc_loss, triplet_from_negatives
from model.merge import closure_ratio
from model.network import MSC, similarity
from model.optim import build_optimizer, warmup_linear_schedule
from tests.model.batch_factory import one_thread

pytestmark = pytest.mark.usefixtures(one_thread.__name__)

GOLDEN_PATH = Path(__file__).parent / "data" / "released_golden.pt"
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}
DETERMINISTIC_TERMS = ("nce_clip", "nce_frame", "tcp", "cbva")


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(GOLDEN_PATH, weights_only=True)


def golden_config(golden: dict) -> MSCConfig:
    """Our config for the recorded sizes and the released loss settings."""
    sizes, settings = golden["sizes"], golden["settings"]
    return MSCConfig(
        text_dim=sizes["text_dim"], video_dim=sizes["video_dim"], hidden=sizes["hidden"],
        heads=sizes["heads"], text_len=sizes["text_len"], frame_len=sizes["frame_len"],
        clip_len=sizes["clip_len"], dropout=settings["drop"], sft_factor=settings["sft_factor"],
        sim_thr=settings["sim_thr"], rkd_d_coef=settings["rkd_d_coef"],
        rkd_a_coef=settings["rkd_a_coef"], vl_coef=settings["vl_coef"],
        nce_clip=settings["loss_factor"][0], nce_frame=settings["loss_factor"][1],
        margin=settings["margin"], hard_pool=settings["hard_pool_size"]).validate()


def golden_model(golden: dict) -> MSC:
    """Our MSC holding the released model's initial weights, in eval mode (dropout off)."""
    model = MSC(golden_config(golden))
    model.load_state_dict(convert_authors_state_dict(golden["state_dict"]))
    return model.eval()


def golden_batch(golden: dict) -> dict:
    """The recorded inputs under this project's batch keys."""
    inputs = golden["inputs"]
    tokens, mask = inputs["text_feat"], inputs["text_mask"]
    last = mask.sum(dim=1).long() - 1  # [Q]
    return {
        "frames": inputs["frame_video_features"], "frame_mask": inputs["videos_mask"],
        "clips": inputs["clip_video_features"], "clip_sizes": inputs["merge_size"],
        "clip_labels": inputs["merged_frame_label"], "tokens": tokens, "token_mask": mask,
        "end_tokens": tokens[torch.arange(len(tokens)), last],
        "query_labels": torch.tensor(inputs["text_labels"], dtype=torch.int64),
    }


def assert_same_tensors(ours: dict, expected: dict, what: str) -> None:
    """Same names, and every tensor close; the message names the first tensor that is not."""
    assert sorted(ours) == sorted(expected), f"{what}: names differ"
    for name in sorted(expected):
        torch.testing.assert_close(ours[name], expected[name], **TOLERANCE,
                                   msg=lambda text, name=name: f"{what} {name}: {text}")


def test_golden_file_is_small_and_from_float32(golden):
    assert GOLDEN_PATH.stat().st_size < 2_000_000
    assert golden["dtype"] == "float32" and len(golden["released_commit"]) == 40
    assert golden["state_dict"]["weight_token"].dtype == torch.float32


def test_released_weights_convert_into_every_parameter(golden):
    model = MSC(golden_config(golden))
    converted = convert_authors_state_dict(golden["state_dict"])
    assert sorted(converted) == sorted(model.state_dict())
    assert sum(t.numel() for t in converted.values()) == \
        sum(t.numel() for t in golden["state_dict"].values())


def test_eval_outputs_equal_the_released_forward(golden):
    expected = golden["outputs"]
    model, batch = golden_model(golden), golden_batch(golden)
    with torch.no_grad():
        out = model(batch)
        clip_cos, frame_cos = similarity(out["query"], out["clips"], out["frames"], normalize=True)
        clip_raw, frame_raw = similarity(out["query"], out["clips"], out["frames"], normalize=False)
        ours = {"query": out["query"], "clips": out["clips"], "frames": out["frames"],
                "clips_aligned": model.align(out["clips"]), "frames_aligned": model.align(out["frames"]),
                "clip_scores": clip_cos, "frame_scores": frame_cos,
                "clip_scores_raw": clip_raw, "frame_scores_raw": frame_raw,
                "end_tokens": batch["end_tokens"],
                "closure_ratio": closure_ratio(batch["clips"], golden["settings"]["sim_thr"])}
    assert_same_tensors(ours, expected, "output")


def test_loss_terms_equal_the_released_loss(golden):
    expected = golden["loss_terms"]
    model, batch = golden_model(golden), golden_batch(golden)
    with torch.no_grad():
        out = model(batch)
        _, terms = msc_loss(model.cfg, out, batch, model, hard_negatives=False)
    ours = {"clip_nce": terms["nce_clip"], "frame_nce": terms["nce_frame"],
            "txt_rkd": terms["tcp"], "vidlvlctl": terms["cbva"], "clip_num": terms["segments"]}
    assert_same_tensors(ours, {k: torch.tensor(expected[k]) for k in ours}, "loss term")


def test_triplet_terms_equal_the_released_loss_for_its_negatives(golden):
    negatives, expected = golden["triplet_negatives"], golden["loss_terms"]
    model, batch = golden_model(golden), golden_batch(golden)
    margin, labels = model.cfg.margin, batch["query_labels"]
    with torch.no_grad():
        out = model(batch)
        clip_cos, frame_cos = similarity(out["query"], out["clips"], out["frames"], normalize=True)
    ours = {
        "clip_trip": triplet_from_negatives(clip_cos, labels, negatives["clip_t2v"],
                                            negatives["clip_v2t"], margin),
        "frame_trip": triplet_from_negatives(frame_cos, labels, negatives["frame_t2v"],
                                             negatives["frame_v2t"], margin),
    }
    assert_same_tensors(ours, {k: torch.tensor(expected[k]) for k in ours}, "triplet term")


def test_gradients_equal_the_released_gradients(golden):
    model, batch = golden_model(golden), golden_batch(golden)
    _, terms = msc_loss(model.cfg, model(batch), batch, model, hard_negatives=False)
    sum(terms[name] for name in DETERMINISTIC_TERMS).backward()
    ours = {name: p.grad for name, p in model.named_parameters()}
    assert_same_tensors(ours, convert_authors_state_dict(golden["grads"]), "gradient of")


def test_three_optimiser_steps_equal_the_released_bertadam(golden):
    settings = golden["optimiser"]
    model = golden_model(golden)
    optimizer = build_optimizer(model, settings["lr"], settings["weight_decay"])
    schedule = warmup_linear_schedule(optimizer, settings["t_total"], settings["warmup"])
    params = dict(model.named_parameters())
    for step_scales in golden["grad_scales"]:
        scaled = {name: golden["grads"][name] * scale
                  for name, scale in zip(golden["param_names"], step_scales.tolist(), strict=True)}
        for name, grad in convert_authors_state_dict(scaled).items():
            params[name].grad = grad
        optimizer.step()
        schedule.step()
    ours = {name: p.detach() for name, p in params.items()}
    assert_same_tensors(ours, convert_authors_state_dict(golden["params_after_steps"]),
                        "parameter after 3 steps:")
