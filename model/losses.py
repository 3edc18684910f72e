"""MSC losses (docs/model.md, Losses): base (video NCE + triplet), TCP (RKD), CBVA, and their sum.

Every function works on whole-batch tensors, reads nothing back to the host and returns 0-d
tensors. Random triplet negatives come from torch's global RNG, so a seed fixes them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from model.cbva import cbva_loss
from model.config import MSCConfig
from model.merge import closure_ratio, segment_count
from model.network import similarity

__all__ = ["video_nce", "triplet_loss", "rkd_distance", "rkd_angle", "cbva_loss", "msc_loss",
           "sample_t2v_negatives", "sample_v2t_negatives", "triplet_from_negatives"]

FIXED_SEGMENTS = 32
ANGLE_ZERO_RATIO = 1e-12
ANGLE_CHUNKS = 8


def _check_scores(name: str, scores: torch.Tensor, labels: torch.Tensor) -> None:
    """Raise ValueError unless scores is [Q, B] and labels is [Q]."""
    if scores.dim() != 2 or labels.dim() != 1 or labels.shape[0] != scores.shape[0]:
        raise ValueError(f"{name}: expected scores [Q, B] and labels [Q], got "
                         f"{tuple(scores.shape)} and {tuple(labels.shape)}")


def _positive_mask(labels: torch.Tensor, videos: int) -> torch.Tensor:
    """Bool [Q, B]: True where query q belongs to video v."""
    return labels.unsqueeze(1) == torch.arange(videos, device=labels.device)


def video_nce(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Video-level NCE (docs/model.md, Base loss) on unnormalised scores [Q, B]: t2v + v2t.

    t2v averages over queries; v2t averages over the videos that have at least one query.
    Raises ValueError for mismatched shapes.
    """
    _check_scores("video_nce", scores, labels)
    positive = _positive_mask(labels, scores.shape[1])  # [Q, B]
    own = scores.gather(1, labels.unsqueeze(1)).squeeze(1)  # [Q]
    t2v = (torch.logsumexp(scores, dim=1) - own).mean()
    has_query = positive.any(dim=0)  # [B]
    positive_lse = torch.logsumexp(scores.masked_fill(~positive, float("-inf")), dim=0)  # [B]
    per_video = torch.logsumexp(scores, dim=0) - positive_lse  # [B]
    per_video = torch.where(has_query, per_video, torch.zeros_like(per_video))
    v2t = per_video.sum() / has_query.sum().clamp(min=1)
    return t2v + v2t


def sample_t2v_negatives(cos: torch.Tensor, labels: torch.Tensor, hard: bool,
                         hard_pool: int) -> torch.Tensor:
    """One negative video per query, long [Q].

    Uniform over the B-1 other videos, or with `hard` uniform over the min(hard_pool, B-1)
    highest-scoring other videos. Needs B >= 2.
    """
    queries, videos = cos.shape
    if hard:
        pool = min(hard_pool, videos - 1)
        masked = cos.detach().masked_fill(_positive_mask(labels, videos), float("-inf"))
        candidates = masked.topk(pool, dim=1).indices  # [Q, pool]
        pick = torch.randint(pool, (queries, 1), device=cos.device)
        return candidates.gather(1, pick).squeeze(1)
    offset = torch.randint(videos - 1, (queries,), device=cos.device)
    return offset + (offset >= labels).long()


def sample_v2t_negatives(cos: torch.Tensor, labels: torch.Tensor, hard: bool) -> torch.Tensor:
    """One negative query per video, long [B].

    Uniform over the queries of other videos, or with `hard` the highest-scoring one.
    Needs every video to have at least one query of another video.
    """
    positive = _positive_mask(labels, cos.shape[1]).t()  # [B, Q]
    if hard:
        return cos.detach().t().masked_fill(positive, float("-inf")).argmax(dim=1)
    negatives_first = torch.sort(positive.to(torch.uint8), dim=1, stable=True).indices  # [B, Q]
    available = (~positive).sum(dim=1)  # [B]
    uniform = torch.rand(cos.shape[1], device=cos.device)
    slot = torch.minimum((uniform * available).long(), available - 1)  # [B]
    return negatives_first.gather(1, slot.unsqueeze(1)).squeeze(1)


def triplet_from_negatives(cos: torch.Tensor, labels: torch.Tensor, t2v_negatives: torch.Tensor,
                           v2t_negatives: torch.Tensor, margin: float) -> torch.Tensor:
    """Triplet loss (docs/model.md, Base loss) for given negatives: mean_q hinge + mean_v hinge.

    t2v positive C[q, label q]; v2t positive = mean of C[q, v] over v's queries (videos
    without queries are left out of the v2t mean).
    """
    positive = _positive_mask(labels, cos.shape[1]).to(cos.dtype)  # [Q, B]
    own = cos.gather(1, labels.unsqueeze(1)).squeeze(1)  # [Q]
    other = cos.gather(1, t2v_negatives.unsqueeze(1)).squeeze(1)  # [Q]
    t2v = F.relu(margin + other - own).mean()
    counts = positive.sum(dim=0)  # [B]
    video_pos = (cos * positive).sum(dim=0) / counts.clamp(min=1)  # [B]
    video_neg = cos.t().gather(1, v2t_negatives.unsqueeze(1)).squeeze(1)  # [B]
    hinge = F.relu(margin + video_neg - video_pos) * (counts > 0)
    return t2v + hinge.sum() / (counts > 0).sum().clamp(min=1)


def triplet_loss(cos: torch.Tensor, labels: torch.Tensor, margin: float, hard: bool,
                 hard_pool: int) -> torch.Tensor:
    """Triplet loss (docs/model.md, Base loss) on cosines [Q, B], sampled negatives (t2v + v2t).

    With fewer than 2 videos no negative exists and the loss is 0. Raises ValueError for
    mismatched shapes or hard_pool < 1.
    """
    _check_scores("triplet_loss", cos, labels)
    if hard_pool < 1:
        raise ValueError(f"triplet_loss: hard_pool must be >= 1, got {hard_pool}")
    if cos.shape[1] < 2:
        return cos.sum() * 0.0
    t2v_negatives = sample_t2v_negatives(cos, labels, hard, hard_pool)
    v2t_negatives = sample_v2t_negatives(cos, labels, hard)
    return triplet_from_negatives(cos, labels, t2v_negatives, v2t_negatives, margin)


def _check_pair(name: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    """Raise ValueError unless student [Q, D] and teacher [Q, Dt] agree on Q."""
    if student.dim() != 2 or teacher.dim() != 2 or student.shape[0] != teacher.shape[0]:
        raise ValueError(f"{name}: expected student [Q, D] and teacher [Q, Dt], got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")


def _normalised_distances(x: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances [Q, Q] (squared clamped at 1e-12, diagonal 0), divided by
    the mean of the positive entries. Computed in float64: the Gram-matrix form of the squared
    distance loses the 1e-12 clamp to rounding noise in float32."""
    x = x.double()
    squared = x.pow(2).sum(dim=1)  # [Q]
    dist = (squared.unsqueeze(1) + squared.unsqueeze(0) - 2 * x @ x.t()).clamp(min=1e-12).sqrt()
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    dist = dist.masked_fill(eye, 0.0)
    positive = dist > 0
    mean = (dist * positive).sum() / positive.sum().clamp(min=1)
    return dist / mean.clamp(min=1e-12)


def rkd_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD distance loss (docs/model.md, TCP): smooth-L1 (beta 1) between normalised distances,
    mean over Q^2 entries; no gradient to the teacher. Raises ValueError for mismatched shapes."""
    _check_pair("rkd_distance", student, teacher)
    with torch.no_grad():
        target = _normalised_distances(teacher)
    loss = F.smooth_l1_loss(_normalised_distances(student), target, beta=1.0)
    return loss.to(student.dtype)


def _angle_parts(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The [Q, Q] and [Q] parts of every triple's angle cosine, in x's dtype: the Gram matrix G of
    the centred points, its diagonal (squared norms) and inverse [a, b] = 1 / |x_b - x_a| (0 for
    a difference vector shorter than 1e-6 of the points' norms, whose cosines are then 0).

    Angles do not change under translation; the parts are computed in float64, where the
    Gram-matrix form of |x_b - x_a|^2 keeps its precision.
    """
    centred = (x - x.mean(dim=0, keepdim=True)).double()
    gram = centred @ centred.t()  # [Q, Q]
    # [Q] squared norms; not gram.diagonal(): inductor (torch 2.13) gets the gradient of a
    # diagonal view wrong (its diagonal_scatter, pytorch/pytorch#182765)
    norms = (centred * centred).sum(dim=1)
    scale = norms.unsqueeze(1) + norms.unsqueeze(0)  # [a, b]
    squared = (scale - 2 * gram).clamp(min=0.0)  # [a, b], |x_b - x_a|^2
    zero = squared <= ANGLE_ZERO_RATIO * scale
    inverse = torch.where(zero, torch.zeros_like(squared), squared.clamp(min=1e-300).rsqrt())
    return gram.to(x.dtype), norms.to(x.dtype), inverse.to(x.dtype)


class _AngleLoss(torch.autograd.Function):
    """Sum over all triples of smooth-L1 (beta 1) between the student's and the teacher's angle
    cosines, from their _angle_parts, without holding a [Q, Q, Q] tensor: the anchors run in
    ANGLE_CHUNKS chunks (a fixed count, so the number of ops does not grow with Q), and each
    chunk's gradient with respect to the [Q, Q] parts is accumulated in the forward pass (the
    loss is a scalar, so the backward pass only scales it). With S = D * I_ab * I_ac,
    D = G_bc - G_ab - G_ac + G_aa and dS = clamp(S - T, -1, 1), symmetric in b and c:
    dG_bc += sum_a dD, dG_ab -= 2 sum_c dD, dG_aa += sum_bc dD, dI_ab = 2 sum_c dS D I_ac,
    where dD = dS I_ab I_ac.
    """

    @staticmethod
    def forward(ctx, gram, norms, inverse, teacher_gram, teacher_norms, teacher_inverse):
        grad_gram, grad_inverse = torch.zeros_like(gram), torch.zeros_like(inverse)
        grad_norms, total = torch.zeros_like(norms), gram.new_zeros(())
        for first in range(ANGLE_CHUNKS):
            index = slice(first, None, ANGLE_CHUNKS)  # every ANGLE_CHUNKS-th anchor
            rows, rows_norms, rows_inverse, t_rows, t_norms, t_inverse = (part[index] for part in (
                gram, norms, inverse, teacher_gram, teacher_norms, teacher_inverse))
            dots = _anchor_dots(gram, rows, rows_norms)  # [A, Q, Q]; A may be 0 when Q < 8
            pair = rows_inverse.unsqueeze(2) * rows_inverse.unsqueeze(1)  # [A, Q, Q]
            target = _anchor_dots(teacher_gram, t_rows, t_norms)
            target = (target * t_inverse.unsqueeze(2) * t_inverse.unsqueeze(1)).to(gram.dtype)
            error = dots * pair - target
            slope = error.clamp(-1.0, 1.0)  # d loss / d S
            # smooth-L1 (beta 1) of e is c (e - c / 2) with c = clamp(e, -1, 1)
            total = total + (slope * error.sub_(slope, alpha=0.5)).sum()  # pairwise sum
            grad_inverse[index] = 2 * ((slope * dots) @ rows_inverse.unsqueeze(2))[:, :, 0]
            grad_dots = slope.mul_(pair)  # d loss / d D
            grad_gram += grad_dots.sum(dim=0)
            grad_gram[index] -= 2 * grad_dots.sum(dim=2)
            grad_norms[index] = grad_dots.sum(dim=(1, 2))
        ctx.save_for_backward(grad_gram, grad_norms, grad_inverse)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_gram, grad_norms, grad_inverse = ctx.saved_tensors
        return grad_gram * grad_total, grad_norms * grad_total, grad_inverse * grad_total, \
            None, None, None


def _anchor_dots(gram: torch.Tensor, rows: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """<x_b - x_a, x_c - x_a> = G_bc - G_ab - G_ac + G_aa for the anchors a whose Gram rows are
    `rows` [A, Q] and squared norms `norms` [A]: [A, Q, Q] (a, b, c)."""
    return gram.unsqueeze(0) - rows.unsqueeze(2) - rows.unsqueeze(1) + norms[:, None, None]


def rkd_angle(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD angle loss (docs/model.md, TCP): smooth-L1 (beta 1) between triple angle cosines, mean of
    Q^3 entries; no gradient to the teacher. Raises ValueError for mismatched shapes.

    The cosine of the angle at a between b and c is <x_b - x_a, x_c - x_a> / (|x_b - x_a|
    |x_c - x_a|), from the Gram matrix of the points (_angle_parts): no [Q, Q, D] difference
    tensor, and (_AngleLoss) no [Q, Q, Q] tensor either, only [Q / 8, Q, Q] chunks.
    """
    _check_pair("rkd_angle", student, teacher)
    with torch.no_grad():
        teacher_parts = _angle_parts(teacher.float())  # the target cosines in float32
    if torch.compiler.is_compiling():
        return _whole_angle_loss(_angle_parts(student), teacher_parts)
    total = _AngleLoss.apply(*_angle_parts(student), *teacher_parts)
    return total / student.shape[0] ** 3


def _whole_angle_loss(parts: tuple, teacher_parts: tuple) -> torch.Tensor:
    """The same loss from the whole [Q, Q, Q] cosine tensors, for torch.compile: the compiler
    fuses the elementwise chain into its reduction, and the anchor chunks' strided slices would
    make it specialise the graph to small caption counts (one recompile per count)."""
    gram, norms, inverse = parts
    target = _all_cosines(*teacher_parts).to(gram.dtype)
    return F.smooth_l1_loss(_all_cosines(gram, norms, inverse), target, beta=1.0)


def _all_cosines(gram: torch.Tensor, norms: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """cos of the angle at a between b and c for every triple: [Q, Q, Q] (a, b, c)."""
    dots = _anchor_dots(gram, gram, norms)  # [a, b, c]
    return dots * inverse.unsqueeze(2) * inverse.unsqueeze(1)


def _zero(like: torch.Tensor) -> torch.Tensor:
    """A 0-d zero on like's device and dtype."""
    return like.new_zeros(())


def _base_terms(cfg: MSCConfig, out: dict, labels: torch.Tensor, hard: bool) -> dict:
    """NCE (weighted by nce_clip / nce_frame) and triplet terms of the base loss."""
    raw_clip, raw_frame = similarity(out["query"], out["clips"], out["frames"], normalize=False)
    cos_clip, cos_frame = similarity(out["query"], out["clips"], out["frames"], normalize=True)
    return {
        "nce_clip": cfg.nce_clip * video_nce(raw_clip, labels),
        "nce_frame": cfg.nce_frame * video_nce(raw_frame, labels),
        "triplet_clip": triplet_loss(cos_clip, labels, cfg.margin, hard, cfg.hard_pool),
        "triplet_frame": triplet_loss(cos_frame, labels, cfg.margin, hard, cfg.hard_pool),
    }


def _tcp_terms(cfg: MSCConfig, out: dict, batch: dict) -> dict:
    """Raw RKD distance/angle and the weighted TCP term (zeros when cfg.tcp is off)."""
    if not cfg.tcp:
        zero = _zero(out["query"])
        return {"rkd_distance": zero, "rkd_angle": zero, "tcp": zero}
    teacher = batch["end_tokens"].detach()
    distance = rkd_distance(out["query"], teacher)
    angle = rkd_angle(out["query"], teacher)
    return {"rkd_distance": distance, "rkd_angle": angle,
            "tcp": cfg.rkd_d_coef * distance + cfg.rkd_a_coef * angle}


def _segment_counts(cfg: MSCConfig, clip_feats: torch.Tensor) -> torch.Tensor:
    """Segments per video, long [B]: 32 for fixed CBVA, adaptive from the diversity ratio."""
    if cfg.cbva == "fixed":
        return torch.full(clip_feats.shape[:1], FIXED_SEGMENTS, dtype=torch.long,
                          device=clip_feats.device)
    return segment_count(closure_ratio(clip_feats, cfg.sim_thr))


def _cbva_terms(cfg: MSCConfig, out: dict, batch: dict, model) -> dict:
    """Weighted CBVA term and mean segment count (zeros when cfg.cbva is off)."""
    if cfg.cbva == "off":
        zero = _zero(out["query"])
        return {"cbva": zero, "segments": zero}
    clip_feats = batch["clips"].detach()
    loss, segments = cbva_loss(model.align(out["frames"]), model.align(out["clips"]),
                               batch["clip_labels"], batch["clip_sizes"], clip_feats,
                               _segment_counts(cfg, clip_feats))
    return {"cbva": cfg.vl_coef * loss, "segments": segments.to(loss.dtype)}


def msc_loss(cfg: MSCConfig, out: dict, batch: dict, model,
             hard_negatives: bool) -> tuple[torch.Tensor, dict]:
    """Total MSC loss = base + TCP + CBVA (docs/model.md, Losses) and its terms.

    `out` is MSC.forward(batch); `model` gives the alignment projection. Terms (0-d tensors):
    nce_clip, nce_frame (weighted), triplet_clip, triplet_frame, rkd_distance, rkd_angle (raw),
    tcp (weighted sum of the two), cbva (times vl_coef), segments (mean K), base, total.
    Switched-off terms are 0. Raises KeyError naming a missing batch or output key.
    """
    _require_keys("msc_loss: out", out, ("query", "clips", "frames"))
    _require_keys("msc_loss: batch", batch, _needed_batch_keys(cfg))
    terms = _base_terms(cfg, out, batch["query_labels"], hard_negatives)
    terms["base"] = terms["nce_clip"] + terms["nce_frame"] + terms["triplet_clip"] \
        + terms["triplet_frame"]
    terms.update(_tcp_terms(cfg, out, batch))
    terms.update(_cbva_terms(cfg, out, batch, model))
    terms["total"] = terms["base"] + terms["tcp"] + terms["cbva"]
    return terms["total"], terms


def _needed_batch_keys(cfg: MSCConfig) -> tuple:
    """Batch keys msc_loss reads under cfg's switches."""
    keys = ("query_labels",)
    if cfg.tcp:
        keys += ("end_tokens",)
    if cfg.cbva != "off":
        keys += ("clips", "clip_sizes", "clip_labels")
    return keys


def _require_keys(where: str, mapping: dict, keys: tuple) -> None:
    """Raise KeyError naming the first key of `keys` missing from `mapping`."""
    for key in keys:
        if key not in mapping:
            raise KeyError(f"{where} has no key {key!r}")
