"""Losses against loop oracles written from docs/model.md, and msc_loss's switches."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from model import cbva
from model.losses import (
    cbva_loss,
    msc_loss,
    rkd_angle,
    rkd_distance,
    sample_t2v_negatives,
    sample_v2t_negatives,
    triplet_from_negatives,
    triplet_loss,
    video_nce,
)
from model.merge import closure_ratio, segment_count
from model.network import MSC
from tests.model.batch_factory import make_batch, one_thread, tiny_config
from tests.model.loss_oracles import rkd_angle_loop, rkd_distance_loop, triplet_loop, video_nce_loop

pytestmark = pytest.mark.usefixtures(one_thread.__name__)
TERMS = {"nce_clip", "nce_frame", "triplet_clip", "triplet_frame", "rkd_distance", "rkd_angle",
         "tcp", "cbva", "segments", "base", "total"}


def _scores(queries=9, videos=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor([q % videos for q in range(queries)])
    return 3 * torch.randn(queries, videos, generator=generator), labels


def test_cbva_loss_is_the_cbva_module_function():
    assert cbva_loss is cbva.cbva_loss


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_video_nce_matches_loop(seed):
    scores, labels = _scores(seed=seed)
    expected = video_nce_loop(scores, labels.tolist())
    assert float(video_nce(scores, labels)) == pytest.approx(expected, rel=1e-5)


def test_video_nce_skips_videos_without_queries_in_v2t():
    scores, _ = _scores(queries=6, videos=4)
    labels = torch.tensor([0, 0, 1, 1, 3, 3])
    assert float(video_nce(scores, labels)) == pytest.approx(
        video_nce_loop(scores, labels.tolist()), rel=1e-5)


def test_video_nce_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="video_nce"):
        video_nce(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))


@pytest.mark.parametrize("hard", [False, True])
def test_triplet_matches_loop_for_the_sampled_negatives(hard):
    cos, labels = _scores(queries=12, videos=5, seed=3)
    cos = torch.tanh(cos)
    torch.manual_seed(0)
    t2v = sample_t2v_negatives(cos, labels, hard, hard_pool=2)
    v2t = sample_v2t_negatives(cos, labels, hard)
    expected = triplet_loop(cos, labels.tolist(), t2v.tolist(), v2t.tolist(), margin=0.2)
    got = triplet_from_negatives(cos, labels, t2v, v2t, margin=0.2)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    torch.manual_seed(0)
    assert float(triplet_loss(cos, labels, 0.2, hard, 2)) == pytest.approx(expected, rel=1e-5)


def test_random_negatives_are_other_videos_and_cover_them_uniformly():
    cos, labels = _scores(queries=4, videos=4)
    torch.manual_seed(0)
    draws = torch.stack([sample_t2v_negatives(cos, labels, False, 20) for _ in range(3000)])
    assert not bool((draws == labels).any())
    counts = torch.stack([(draws[:, 0] == v).sum() for v in range(1, 4)]).float()
    assert bool(((counts / 3000 - 1 / 3).abs() < 0.04).all())


def test_hard_t2v_negatives_come_from_the_top_pool():
    cos, labels = _scores(queries=10, videos=8, seed=4)
    torch.manual_seed(1)
    draws = torch.stack([sample_t2v_negatives(cos, labels, True, 3) for _ in range(400)])
    for q in range(10):
        others = [v for v in range(8) if v != labels[q]]
        top = set(sorted(others, key=lambda v: -float(cos[q, v]))[:3])
        assert set(draws[:, q].tolist()) == top


def test_v2t_negatives_random_uniform_and_hard_is_the_best_other_query():
    cos, labels = _scores(queries=6, videos=3, seed=5)
    torch.manual_seed(2)
    draws = torch.stack([sample_v2t_negatives(cos, labels, False) for _ in range(3000)])
    for v in range(3):
        others = [q for q in range(6) if labels[q] != v]
        assert set(draws[:, v].tolist()) == set(others)
        share = torch.tensor([(draws[:, v] == q).float().mean() for q in others])
        assert bool(((share - 1 / len(others)).abs() < 0.04).all())
    hard = sample_v2t_negatives(cos, labels, True)
    for v in range(3):
        others = [q for q in range(6) if labels[q] != v]
        assert int(hard[v]) == max(others, key=lambda q: float(cos[q, v]))


def test_triplet_with_one_video_is_zero_and_a_seed_fixes_it():
    assert float(triplet_loss(torch.rand(3, 1), torch.zeros(3, dtype=torch.long), 0.1, False, 20)) == 0
    cos, labels = _scores(queries=30, videos=10, seed=6)
    torch.manual_seed(7)
    first = triplet_loss(torch.tanh(cos), labels, 0.5, False, 20)
    torch.manual_seed(7)
    assert torch.equal(first, triplet_loss(torch.tanh(cos), labels, 0.5, False, 20))


@pytest.mark.parametrize("seed", [0, 1])
def test_rkd_distance_and_angle_match_loops(seed):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(6, 5, generator=generator)
    teacher = torch.randn(6, 7, generator=generator)
    teacher[3] = teacher[1]  # a zero difference vector: its angles stay 0
    assert float(rkd_distance(student, teacher)) == pytest.approx(
        rkd_distance_loop(student, teacher), rel=1e-4, abs=1e-6)
    assert float(rkd_angle(student, teacher)) == pytest.approx(
        rkd_angle_loop(student, teacher), rel=1e-4, abs=1e-6)


def test_rkd_gives_no_gradient_to_the_teacher_and_finite_ones_for_duplicates():
    student = torch.randn(5, 4)
    student[4] = student[0]  # duplicate queries: zero distance, zero difference vector
    student.requires_grad_()
    teacher = torch.randn(5, 6, requires_grad=True)
    (rkd_distance(student, teacher) + rkd_angle(student, teacher)).backward()
    assert teacher.grad is None
    assert bool(torch.isfinite(student.grad).all()) and bool(student.grad.abs().sum() > 0)
    student, teacher = student.detach(), teacher.detach()
    assert float(rkd_angle(student, teacher)) == pytest.approx(rkd_angle_loop(student, teacher), rel=1e-4)


def test_rkd_rejects_mismatched_query_counts():
    with pytest.raises(ValueError, match="rkd_angle"):
        rkd_angle(torch.zeros(4, 3), torch.zeros(5, 3))


def _run_loss(cfg, batch, hard=False, seed=0):
    torch.manual_seed(seed)
    model = MSC(cfg)
    out = model(batch)
    return model, msc_loss(cfg, out, batch, model, hard_negatives=hard)


@pytest.mark.parametrize(("tcp", "mode", "clips", "hard"),
                         list(itertools.product([False, True], ["off", "fixed", "adaptive"],
                                                ["optome", "uniform"], [False, True])))
def test_every_switch_combination_runs(tcp, mode, clips, hard):
    cfg = tiny_config(tcp=tcp, cbva=mode, clip_tokens=clips)
    batch = make_batch(videos=4, captions=[2, 3, 1, 2], clip_tokens=clips, seed=1)
    _, (total, terms) = _run_loss(cfg, batch, hard=hard)
    assert set(terms) == TERMS
    assert all(t.dim() == 0 and bool(torch.isfinite(t)) for t in terms.values())
    assert (float(terms["tcp"].detach()) == 0) == (not tcp)
    assert (float(terms["cbva"].detach()) == 0) == (mode == "off")
    base = terms["nce_clip"] + terms["nce_frame"] + terms["triplet_clip"] + terms["triplet_frame"]
    torch.testing.assert_close(terms["base"], base)
    torch.testing.assert_close(total, terms["base"] + terms["tcp"] + terms["cbva"])
    total.backward()


def test_terms_follow_their_definitions():
    cfg = tiny_config(cbva="adaptive", sim_thr=0.8)
    batch = make_batch(videos=6, captions=2, seed=2)
    _, (_, terms) = _run_loss(cfg, batch)
    tcp = cfg.rkd_d_coef * terms["rkd_distance"] + cfg.rkd_a_coef * terms["rkd_angle"]
    torch.testing.assert_close(terms["tcp"], tcp)
    counts = segment_count(closure_ratio(batch["clips"], cfg.sim_thr))
    assert float(terms["segments"]) == pytest.approx(float(counts.float().mean()))
    _, (_, fixed) = _run_loss(tiny_config(cbva="fixed"), batch)
    assert float(fixed["segments"]) == 32


def test_msc_loss_cbva_term_is_vl_coef_times_cbva_loss_of_aligned_features():
    cfg = tiny_config(cbva="fixed", vl_coef=0.3)
    batch = make_batch(videos=3, captions=2, seed=3)
    torch.manual_seed(0)
    model = MSC(cfg).eval()
    out = model(batch)
    _, terms = msc_loss(cfg, out, batch, model, hard_negatives=False)
    loss, _ = cbva_loss(model.align(out["frames"]), model.align(out["clips"]), batch["clip_labels"],
                        batch["clip_sizes"], batch["clips"], torch.full((3,), 32))
    torch.testing.assert_close(terms["cbva"], 0.3 * loss)


def test_msc_loss_names_a_missing_batch_key():
    cfg = tiny_config()
    batch = make_batch(videos=2, captions=1)
    model = MSC(cfg)
    out = model(batch)
    del batch["end_tokens"]
    with pytest.raises(KeyError, match="end_tokens"):
        msc_loss(cfg, out, batch, model, hard_negatives=False)


def _angle_loss_unchunked(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD angle with the whole [Q, Q, Q] cosine tensor (the formula of docs/model.md, TCP)."""
    def cosines(x):
        diff = x.unsqueeze(0) - x.unsqueeze(1)  # [a, b, D] = x_b - x_a
        unit = F.normalize(diff, dim=-1)
        return unit @ unit.transpose(1, 2)  # [a, b, c]
    with torch.no_grad():
        target = cosines(teacher.double())
    return F.smooth_l1_loss(cosines(student.double()), target, beta=1.0)


@pytest.mark.parametrize("queries", [3, 8, 37])
def test_rkd_angle_in_anchor_chunks_equals_the_whole_tensor(queries):
    generator = torch.Generator().manual_seed(queries)
    student = torch.randn(queries, 16, generator=generator, requires_grad=True)
    teacher = torch.randn(queries, 24, generator=generator)
    loss = rkd_angle(student, teacher)
    loss.backward()
    expected_student = student.detach().clone().requires_grad_()
    expected = _angle_loss_unchunked(expected_student, teacher)
    expected.backward()
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    torch.testing.assert_close(student.grad, expected_student.grad.float(), rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("queries", [3, 37])
def test_rkd_angle_under_torch_compile_equals_the_chunked_eager_loss(queries, backend):
    generator = torch.Generator().manual_seed(queries)
    student = torch.randn(queries, 16, generator=generator, requires_grad=True)
    teacher = torch.randn(queries, 24, generator=generator)
    compiled_student = student.detach().clone().requires_grad_()
    compiled = torch.compile(rkd_angle, fullgraph=True, backend=backend)(compiled_student, teacher)
    compiled.backward()
    eager = rkd_angle(student, teacher)
    eager.backward()
    torch.testing.assert_close(compiled.detach(), eager.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(compiled_student.grad, student.grad, rtol=1e-4, atol=1e-8)
