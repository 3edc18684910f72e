"""Record golden vectors from the authors' released MSC code for tests/model/test_released_golden.py.

Released code: admins97/MSC_PRVR at commit 0b3e3d108ee08eaa336e21d93ba44103f27f2efc, fetched by
you and passed with --released-src (it is imported from there, never copied or edited; see
released_env.py for how it runs on CPU). Everything runs in float32 on CPU, one thread, seeded:

1. inputs: raw frames of 4 videos -> the released data provider's fixed-length frames and OP-ToMe
   clip tokens (merge sizes, frame labels); one video gets padded frames (mask 0); 2-3 captions
   per video of varying token counts;
2. the released MSC_PRVR_Net built as its Models/builder.py does, with its own initialisation, at a
   tiny size; eval-mode outputs (clip/frame scores, cosine and raw, pooled queries, clip and
   frame features before and after vproj_clip, closure ratios);
3. its loss terms (Losses/loss.py): clip_nce, frame_nce, txt_rkd, vidlvlctl, clip_num, and the
   two triplet terms with the negatives its sampler drew;
4. the gradients of clip_nce + frame_nce + txt_rkd + vidlvlctl for every parameter;
5. the parameters after 3 steps of its BertAdam (Opts/builder.py, t_total 10, warm-up 0.1,
   lr 0.1, large enough that weight decay shows) driven by scaled copies of those gradients
   (some scaled up so that clipping matters).

The result is one dict of tensors, lists and numbers, loadable with torch.load(weights_only=True).

    python tools/released/record_golden.py --released-src /path/to/MSC_PRVR
"""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import numpy as np
import torch
from released_env import RELEASED_COMMIT, prepare

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "tests" / "model" / "data" / "released_golden.pt"

SIZES = {"video_dim": 48, "text_dim": 40, "hidden": 16, "heads": 4, "text_len": 77,
         "frame_len": 128, "clip_len": 32}
LOSS_SETTINGS = {"loss_factor": [0.05, 0.04, 8e-5, 0.09], "rkd_d_coef": 10.0, "rkd_a_coef": 20.0,
                 "vl_coef": 0.1, "margin": 0.1, "hard_pool_size": 20, "sim_thr": 0.5,
                 "sft_factor": 0.09, "drop": 0.2, "input_drop": 0.2, "initializer_range": 0.02}
OPTIMISER = {"lr": 0.1, "warmup": 0.1, "t_total": 10, "weight_decay": 0.01, "steps": 3}
# (raw frame count, scenes, noise) per video: fewer and more raw frames than 128, closure ratios
# spread over several segment counts
VIDEOS = ((256, 1, 0.05), (200, 3, 0.1), (90, 2, 0.15), (300, 12, 0.2))
CAPTIONS = ((2, 3), (3, 9), (2, 5), (3, 11))  # (captions, max tokens) per video
PADDED_VIDEO, VALID_FRAMES = 2, 100


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--released-src", required=True,
                        help=f"checkout of the released code (commit {RELEASED_COMMIT})")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="where to write the .pt file")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def raw_videos(rng: np.random.Generator) -> list[np.ndarray]:
    """Raw frames [n, Dv] per video: constant scenes of equal length plus Gaussian noise."""
    videos = []
    for count, scenes, noise in VIDEOS:
        centres = rng.normal(size=(scenes, SIZES["video_dim"]))
        scene_of_frame = np.arange(count) * scenes // count
        frames = centres[scene_of_frame] + noise * rng.normal(size=(count, SIZES["video_dim"]))
        videos.append(frames.astype(np.float32))
    return videos


def raw_captions(rng: np.random.Generator) -> list[list[np.ndarray]]:
    """Raw text tokens [m, Dt] of each caption of each video (the last caption the longest)."""
    captions = []
    for count, longest in CAPTIONS:
        lengths = list(rng.integers(2, longest, size=count - 1)) + [longest]
        captions.append([rng.normal(size=(int(m), SIZES["text_dim"])).astype(np.float32)
                         for m in lengths])
    return captions


def video_inputs(provider, videos: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """The released data provider's clip tokens, merge sizes, frame labels and frames."""
    clips, sizes, labels, frames = [], [], [], []
    for raw in videos:
        clip, size, label = provider.average_to_fixed_length(raw, SIZES["frame_len"], clip=True)
        clips.append(torch.from_numpy(provider.l2_normalize_np_array(clip)))
        sizes.append(torch.from_numpy(size))
        labels.append(torch.from_numpy(label).long())
        fixed = provider.average_to_fixed_length(raw, SIZES["frame_len"], clip=None)
        frames.append(torch.from_numpy(provider.l2_normalize_np_array(fixed)))
    frames = torch.stack(frames).float()  # [B, 128, Dv]
    mask = torch.ones(frames.shape[:2])  # [B, 128]
    frames[PADDED_VIDEO, VALID_FRAMES:] = 0.0
    mask[PADDED_VIDEO, VALID_FRAMES:] = 0.0
    return {"clip_video_features": torch.stack(clips).float(), "merge_size": torch.stack(sizes).float(),
            "merged_frame_label": torch.stack(labels), "frame_video_features": frames,
            "videos_mask": mask}


def text_inputs(provider, captions: list[list[np.ndarray]]) -> dict:
    """Normalised, zero-padded caption tokens [Q, M, Dt], their mask [Q, M] and video labels."""
    flat = [provider.l2_normalize_np_array(c) for video in captions for c in video]
    longest = max(len(c) for c in flat)
    tokens = torch.zeros(len(flat), longest, SIZES["text_dim"])
    mask = torch.zeros(len(flat), longest)
    for q, rows in enumerate(flat):
        tokens[q, :len(rows)] = torch.from_numpy(rows)
        mask[q, :len(rows)] = 1.0
    labels = [v for v, video in enumerate(captions) for _ in video]
    return {"text_feat": tokens, "text_mask": mask, "text_labels": labels}


def released_config() -> dict:
    """The config dict the released builders read, at the tiny size."""
    return {"visual_feat_dim": SIZES["video_dim"], "q_feat_size": SIZES["text_dim"],
            "hidden_size": SIZES["hidden"], "n_heads": SIZES["heads"],
            "max_ctx_l": SIZES["frame_len"], "max_desc_l": SIZES["text_len"], "map_size": 128,
            "use_hard_negative": False, **LOSS_SETTINGS,
            "lr": OPTIMISER["lr"], "wd": OPTIMISER["weight_decay"],
            "lr_warmup_proportion": OPTIMISER["warmup"], "n_epoch": 1}


@contextlib.contextmanager
def recorded_randint(draws: list):
    """Record every torch.randint result drawn inside the block (the triplet sampler's draws)."""
    original = torch.randint

    def recording(*args, **kwargs):
        value = original(*args, **kwargs)
        draws.append(value.clone())
        return value

    torch.randint = recording
    try:
        yield
    finally:
        torch.randint = original


def triplet_negatives(scores: torch.Tensor, labels: list[int], draws: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Translate the sampler's draws for one triplet term into negative indices.

    The released sampler draws, for each video v, a position in the descending-sorted scores of
    the other videos' queries, then, for all queries at once, a position in each query's
    descending-sorted video scores (its own video masked to the top). Returns
    (t2v video index [Q], v2t query index [B]).
    """
    videos = scores.shape[1]
    label_array = np.asarray(labels)
    v2t = []
    for v in range(videos):
        others = np.where(label_array != v)[0]
        order = torch.sort(scores.t()[v][others], descending=True).indices
        v2t.append(int(others[int(order[int(draws[v])])]))
    masked = scores.detach().clone()
    masked[torch.arange(len(labels)), labels] = 999
    ranked = torch.sort(masked, descending=True, dim=1).indices  # [Q, B]
    t2v = ranked[torch.arange(len(labels)), draws[videos]]
    return t2v.long(), torch.tensor(v2t, dtype=torch.long)


def eval_outputs(model, outputs: list, batch: dict) -> dict[str, torch.Tensor]:
    """The released forward's outputs by name (see MSC_PRVR_Net.forward's return list), plus the
    encoded clip tokens and frames before vproj_clip (from its encode_context)."""
    names = ("clip_scores", "clip_scores_raw", None, "frame_scores", "frame_scores_raw", "query",
             "end_tokens", "clips_aligned", "frames_aligned")
    recorded = {name: value.detach().clone()
                for name, value in zip(names, outputs[:len(names)], strict=True) if name}
    closure = outputs[9]
    recorded["closure_ratio"] = torch.tensor([closure[i] for i in range(len(closure))])
    with torch.no_grad():
        frames, clips = model.encode_context(
            batch["clip_video_features"], batch["frame_video_features"], batch["videos_mask"],
            merge_size=batch["merge_size"].unsqueeze(-1))
    recorded["clips"], recorded["frames"] = clips, frames
    return recorded


def loss_terms(criterion, outputs: list, batch: dict, seed: int) -> tuple[dict, dict, torch.Tensor]:
    """The released loss terms (floats), the triplet negatives, and the differentiable sum of the
    deterministic terms (clip_nce + frame_nce + txt_rkd + vidlvlctl)."""
    draws: list = []
    torch.manual_seed(seed)
    with recorded_randint(draws):
        _, terms = criterion(outputs, batch)
    videos = len(batch["merge_size"])
    clip_t2v, clip_v2t = triplet_negatives(outputs[0], batch["text_labels"], draws[:videos + 1])
    frame_t2v, frame_v2t = triplet_negatives(outputs[3], batch["text_labels"], draws[videos + 1:])
    negatives = {"clip_t2v": clip_t2v, "clip_v2t": clip_v2t,
                 "frame_t2v": frame_t2v, "frame_v2t": frame_v2t}
    differentiable = terms["clip_nce"] + terms["frame_nce"] + terms["txt_rkd"] + terms["vidlvlctl"]
    values = {key: float(terms[key]) for key in ("clip_nce", "frame_nce", "txt_rkd", "vidlvlctl",
                                                 "clip_trip", "frame_trip", "clip_num")}
    return values, negatives, differentiable


def gradient_scales(names: list[str]) -> torch.Tensor:
    """Per-step, per-parameter gradient multipliers [steps, P]: uneven, some large enough that
    per-tensor clipping at norm 1 bites on some tensors and not on others."""
    steps = OPTIMISER["steps"]
    scales = torch.ones(steps, len(names))
    big = torch.arange(len(names)) % 3 == 0
    scales[:, big] = 300.0
    scales[1] *= 40.0
    scales[2] *= 0.25
    return scales


def optimiser_steps(get_opts, model, config: dict, grads: dict, scales: torch.Tensor) -> dict:
    """Run the released BertAdam for len(scales) steps on scaled gradients; returns the parameters."""
    names = list(grads)
    optimizer = get_opts(config, model, range(OPTIMISER["t_total"]))
    params = dict(model.named_parameters())
    for step_scales in scales:
        optimizer.zero_grad()
        for name, scale in zip(names, step_scales.tolist(), strict=True):
            params[name].grad = grads[name] * scale
        optimizer.step()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def record(src: str, seed: int) -> dict:
    """Run the released code as described in the module docstring; returns the golden dict."""
    prepare(src)
    from Datasets import data_provider as provider
    from Losses.loss import loss as released_loss
    from Models.builder import get_models
    from Opts.builder import get_opts

    rng = np.random.default_rng(seed)
    raw = raw_videos(rng)
    captions = raw_captions(rng)
    batch = {**video_inputs(provider, raw), **text_inputs(provider, captions)}
    config = released_config()
    torch.manual_seed(seed)
    model = get_models(config).eval()
    state = {name: t.detach().clone() for name, t in model.state_dict().items()}
    outputs = model(batch)
    recorded_outputs = eval_outputs(model, outputs, batch)
    terms, negatives, differentiable = loss_terms(released_loss(config), outputs, batch, seed)
    differentiable.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    scales = gradient_scales(list(grads))
    stepped = optimiser_steps(get_opts, model, config, grads, scales)
    return {
        "released_commit": RELEASED_COMMIT, "dtype": "float32", "sizes": dict(SIZES),
        "settings": {**LOSS_SETTINGS, "loss_factor": list(LOSS_SETTINGS["loss_factor"])},
        "optimiser": dict(OPTIMISER),
        "raw_videos": [torch.from_numpy(v) for v in raw],
        "inputs": {key: value for key, value in batch.items()},
        "state_dict": state, "outputs": recorded_outputs, "loss_terms": terms,
        "triplet_negatives": negatives, "grads": grads, "param_names": list(grads),
        "grad_scales": scales, "params_after_steps": stepped,
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    golden = record(args.released_src, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(golden, out)
    torch.load(out, weights_only=True)
    ratios = [round(r, 3) for r in golden["outputs"]["closure_ratio"].tolist()]
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB); closure ratios {ratios}, "
          f"clip_num {golden['loss_terms']['clip_num']}, terms "
          + ", ".join(f"{k}={v:.6g}" for k, v in golden["loss_terms"].items()))


if __name__ == "__main__":
    main()
