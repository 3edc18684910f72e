"""model.interop: the batched MSC equals a plain per-branch network with the released names;
conversion round trips; released checkpoints load; bad checkpoints get clear errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.config import MSCConfig
from model.interop import (
    CheckpointFormatError,
    authors_config,
    config_from_authors,
    convert_authors_state_dict,
    load_authors_checkpoint,
    released_names,
    to_authors_state_dict,
)
from model.network import MSC, fused_scores, similarity
from tests.model.batch_factory import one_thread
from tests.model.released_reference import ReferenceMSC, randomised

pytestmark = pytest.mark.usefixtures(one_thread.__name__)

SIZES = dict(text_dim=24, video_dim=20, hidden=16, heads=4, text_len=12, frame_len=128)
SFT_FACTOR = 0.3


def _reference(seed: int = 0) -> ReferenceMSC:
    torch.manual_seed(seed)
    return randomised(ReferenceMSC(**SIZES, sft_factor=SFT_FACTOR), seed=seed + 1).eval()


def _config(**overrides) -> MSCConfig:
    return MSCConfig(text_dim=24, video_dim=20, hidden=16, heads=4, text_len=12,
                     sft_factor=SFT_FACTOR, **overrides).validate()


def _loaded(reference: ReferenceMSC) -> MSC:
    model = MSC(_config())
    model.load_state_dict(convert_authors_state_dict(reference.state_dict()))
    return model.eval()


def _inputs(seed: int = 3) -> dict:
    """Two queries padded, three videos with padded frames, clip sizes from 1 to 7."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(5, 12, 24, generator=generator)
    token_mask = torch.ones(5, 12)
    token_mask[0, 4:] = 0
    token_mask[3, 9:] = 0
    frame_mask = torch.ones(3, 128)
    frame_mask[1, 90:] = 0
    frame_mask[2, 40:] = 0
    return {"tokens": tokens, "token_mask": token_mask,
            "clips": torch.randn(3, 32, 20, generator=generator),
            "clip_sizes": torch.randint(1, 8, (3, 32), generator=generator).float(),
            "frames": torch.randn(3, 128, 20, generator=generator), "frame_mask": frame_mask}


def test_batched_msc_scores_equal_the_plain_released_structure():
    reference = _reference()
    batch = _inputs()
    with torch.no_grad():
        want = reference.scores(batch["tokens"], batch["token_mask"], batch["clips"],
                                batch["clip_sizes"], batch["frames"], batch["frame_mask"])
        out = _loaded(reference)(batch)
        clip, frame = similarity(out["query"], out["clips"], out["frames"], normalize=True)
        clip_raw, frame_raw = similarity(out["query"], out["clips"], out["frames"], normalize=False)
    got = {"clip": clip, "frame": frame, "clip_raw": clip_raw, "frame_raw": frame_raw,
           "fused": fused_scores(clip, frame, _config())}
    assert bool((clip_raw.abs() > 1).any())  # raw scores are not trivially small
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-5, msg=name)
    assert not torch.allclose(got["clip"], got["frame"], atol=1e-3)


def test_encoded_frames_equal_the_reference_including_padding():
    reference = _reference(seed=5)
    batch = _inputs(seed=6)
    with torch.no_grad():
        want = reference.encode_frames(batch["frames"], batch["frame_mask"])
        got = _loaded(reference).encode_frames(batch["frames"], batch["frame_mask"])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert bool((got[2, 40:] == 0).all())


def test_table_names_are_the_reference_names_and_cover_the_project_parameters():
    reference_names = set(_reference().state_dict())
    table = released_names()
    assert {name for names in table.values() for name in names} == reference_names
    assert set(table) == set(MSC(_config()).state_dict())
    assert table["clip_block.branches.qkv.weight"][:4] == [
        "clip_encoder.attn0.self.query.weight", "clip_encoder.attn0.self.key.weight",
        "clip_encoder.attn0.self.value.weight", "clip_encoder.attn1.self.query.weight"]
    assert table["frame_block.cross_attention.key_value.bias"] == [
        "frame_encoder_1.ca.self.key.bias", "frame_encoder_1.ca.self.value.bias"]


def test_round_trip_is_exact_both_ways():
    released = _reference(seed=7).state_dict()
    model = _loaded(_reference(seed=7))
    back = to_authors_state_dict(model)
    assert set(back) == set(released)
    for name, tensor in released.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
        assert back[name].is_contiguous(), name
    again = convert_authors_state_dict(back)
    for name, tensor in model.state_dict().items():
        assert torch.equal(again[name], tensor), name


def test_conversion_works_on_gradients_too():
    reference = _reference()
    generator = torch.Generator().manual_seed(9)
    grads = {name: torch.randn(p.shape, generator=generator)
             for name, p in reference.named_parameters()}
    stored = convert_authors_state_dict(grads)
    k = 5
    qkv = stored["frame_block.branches.qkv.weight"]  # [8, D, 3D]: branch k is [Wq; Wk; Wv]^T
    torch.testing.assert_close(qkv[k, :, 16:32], grads[f"frame_encoder_1.attn{k}.self.key.weight"].t(),
                               rtol=0, atol=0)
    torch.testing.assert_close(stored["clip_block.branches.norm_attn.weight"][k],
                               grads[f"clip_encoder.attn{k}.norm1.weight"], rtol=0, atol=0)


def test_config_round_trip_and_released_keys():
    cfg = _config(input_dropout=0.15, dropout=0.25, sim_thr=0.5, rkd_d_coef=10.0,
                  rkd_a_coef=20.0, nce_clip=0.02)
    released = authors_config(cfg, collection="tvr", lr=3e-4)
    assert released["drop"] == 0.25 and released["input_drop"] == 0.15
    assert released["loss_factor"] == [0.02, 0.04] and released["max_ctx_l"] == 128
    assert released["visual_feat_dim"] == 20 and released["q_feat_size"] == 24
    assert released["collection"] == "tvr" and released["map_size"] == 128
    assert config_from_authors(released) == cfg
    assert authors_config(_config())["input_drop"] == _config().dropout


def _released_checkpoint(path: Path, reference: ReferenceMSC, **changes) -> Path:
    config = authors_config(_config(input_dropout=0.1, dropout=0.1), collection="tvr")
    checkpoint = {"config": config, "epoch": 4, "model_val": [1.0, 2.0, 3.0, 4.0, 10.0],
                  "state_dict": reference.state_dict(), "optimizer": {"state": {}, "param_groups": []}}
    checkpoint.update(changes)
    torch.save(checkpoint, path)
    return path


def test_load_authors_checkpoint_gives_the_model_and_config(tmp_path):
    reference = _reference(seed=11)
    model, cfg = load_authors_checkpoint(_released_checkpoint(tmp_path / "best.ckpt", reference))
    assert not model.training
    assert (cfg.hidden, cfg.heads, cfg.text_len, cfg.video_dim, cfg.sft_factor) == (16, 4, 12, 20, 0.3)
    released = reference.state_dict()
    for name, tensor in to_authors_state_dict(model).items():
        assert torch.equal(tensor, released[name]), name


def test_a_checkpoint_with_the_released_optimiser_schedule_and_data_parallel_keys_loads(
        tmp_path, released_schedule):
    """The released optimizer state pickles its schedule object (Opts.optimization classes)."""
    schedule = released_schedule
    reference = _reference(seed=12)
    optimizer = {"state": {}, "param_groups": [{"lr": 3e-4, "schedule": schedule,
                                                "params": [0, 1]}]}
    state = {f"module.{name}": tensor for name, tensor in reference.state_dict().items()}
    path = _released_checkpoint(tmp_path / "best.ckpt", reference, optimizer=optimizer,
                                state_dict=state)
    with pytest.raises(Exception, match="WarmupLinearSchedule"):
        torch.load(path, weights_only=True)  # why the loader allow-lists the schedule classes
    model, _ = load_authors_checkpoint(path)
    torch.testing.assert_close(model.weight_token, reference.weight_token, rtol=0, atol=0)


def _bad_state(reference: ReferenceMSC, change: str) -> dict:
    state = dict(reference.state_dict())
    if change == "missing":
        del state["clip_encoder.attn3.self.key.bias"]
    elif change == "extra":
        state["clip_encoder.attn8.self.query.weight"] = torch.zeros(16, 16)
    elif change == "shape":
        state["vproj_clip.weight"] = torch.zeros(16, 15)
    return state


@pytest.mark.parametrize(("change", "match"), [
    ("missing", r"missing key\(s\) 'clip_encoder\.attn3\.self\.key\.bias'"),
    ("extra", r"unexpected key\(s\) 'clip_encoder\.attn8\.self\.query\.weight'"),
    ("shape", r"vproj_clip\.weight: shape \(16, 15\) in the file, \(16, 16\) expected"),
])
def test_bad_state_dicts_name_the_file_and_the_key(tmp_path, change, match):
    path = _released_checkpoint(tmp_path / "bad.ckpt", _reference(),
                                state_dict=_bad_state(_reference(), change))
    with pytest.raises(CheckpointFormatError, match=match) as err:
        load_authors_checkpoint(path)
    assert str(path) in str(err.value)


def test_files_that_are_not_released_checkpoints(tmp_path):
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    good = _released_checkpoint(tmp_path / "good.ckpt", _reference())
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for path in (text, truncated):
        with pytest.raises(CheckpointFormatError, match="not a readable torch checkpoint") as err:
            load_authors_checkpoint(path)
        assert str(path) in str(err.value)
    listing = tmp_path / "list.ckpt"
    torch.save([1, 2], listing)
    with pytest.raises(CheckpointFormatError, match=r"list.ckpt: expected a checkpoint dict"):
        load_authors_checkpoint(listing)
    weights_only = tmp_path / "weights.ckpt"
    torch.save(_reference().state_dict(), weights_only)
    with pytest.raises(CheckpointFormatError, match=r"weights.ckpt: config: missing or not a dict"):
        load_authors_checkpoint(weights_only)
    with pytest.raises(FileNotFoundError):
        load_authors_checkpoint(tmp_path / "absent.ckpt")


def test_config_without_a_network_key_or_with_a_bad_value(tmp_path):
    config = authors_config(_config())
    del config["hidden_size"]
    path = _released_checkpoint(tmp_path / "a.ckpt", _reference(), config=config)
    with pytest.raises(CheckpointFormatError, match=r"a.ckpt: config: missing key\(s\) 'hidden_size'"):
        load_authors_checkpoint(path)
    config = authors_config(_config(), drop=1.5)
    path = _released_checkpoint(tmp_path / "b.ckpt", _reference(), config=config)
    with pytest.raises(CheckpointFormatError, match=r"b.ckpt: config: drop \(MSCConfig.dropout"):
        load_authors_checkpoint(path)


def test_convert_without_a_file_names_the_key():
    state = _bad_state(_reference(), "missing")
    with pytest.raises(CheckpointFormatError, match=r"state_dict: missing key\(s\) 'clip_encoder"):
        convert_authors_state_dict(state)
    state = dict(_reference().state_dict())
    state["clip_encoder.attn2.self.value.weight"] = torch.zeros(16, 15)
    with pytest.raises(CheckpointFormatError, match=r"clip_encoder\.attn2\.self\.value\.weight: "
                                                    r"shape \(16, 15\) differs"):
        convert_authors_state_dict(state)
