"""Chunked evaluation equals the plain full-matrix computation; `msc eval` on a checkpoint."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from model.config import MSCConfig
from model.metrics import recall_at_k
from model.network import MSC, fused_scores, similarity
from msc_platform.run.checkpoint import save_checkpoint
from msc_platform.run.config import to_dict
from msc_platform.run.data import prepare_data
from msc_platform.run.evaluate import (
    EncodedQueries,
    EncodedVideos,
    encode_queries,
    encode_videos,
    evaluate,
    evaluate_loaders,
    rank_chunks,
)
from tests.platform.train_cli import msc, one_thread  # noqa: F401 (autouse fixture)


@pytest.fixture
def tiny_model(tiny_config):
    torch.manual_seed(0)
    return MSC(tiny_config.model).eval()


@pytest.fixture
def tiny_data(tiny_config):
    return prepare_data(tiny_config)


def _full_matrix_metrics(model, data, cfg) -> dict[str, float]:
    """The oracle: one [Q, V] score matrix per branch, recall_at_k on it."""
    videos = encode_videos(model, data.val_videos, torch.device("cpu"))
    queries = encode_queries(model, data.val_queries, torch.device("cpu"))
    clip, frame = similarity(queries.query, videos.clips, videos.frames, normalize=True)
    expected = recall_at_k(fused_scores(clip, frame, cfg.model), queries.video_index)
    expected |= {f"clip/{k}": v for k, v in recall_at_k(clip, queries.video_index).items()}
    expected |= {f"frame/{k}": v for k, v in recall_at_k(frame, queries.video_index).items()}
    return expected


@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_chunked_scores_equal_the_full_matrix(tiny_model, tiny_data, tiny_config, chunk):
    result = evaluate_loaders(tiny_model, tiny_data.val_videos, tiny_data.val_queries,
                              tiny_config.model, chunk=chunk)
    expected = _full_matrix_metrics(tiny_model, tiny_data, tiny_config)
    for key, value in expected.items():
        assert result["metrics"][key] == pytest.approx(value), key
    for key in ("diffnorm_text", "diffnorm_video", "spearman"):
        assert -100 <= result["metrics"][key] <= 100


def test_ranks_table_names_every_query_and_its_video(tiny_model, tiny_data, tiny_config):
    result = evaluate(tiny_model, tiny_data, tiny_config)
    ranks = result["ranks"]
    assert list(ranks.columns) == ["cap_id", "video_id", "rank_fused", "rank_clip", "rank_frame"]
    assert len(ranks) == len(tiny_data.val_queries.dataset) == ranks["cap_id"].nunique()
    assert (ranks["cap_id"].str.split("#").str[0] == ranks["video_id"]).all()
    n_videos = len(tiny_data.val_videos.dataset)
    assert ranks[["rank_fused", "rank_clip", "rank_frame"]].isin(range(1, n_videos + 1)).all().all()
    sumr = sum(100 * (ranks["rank_fused"] <= k).mean() for k in (1, 5, 10, 100))
    assert result["metrics"]["SumR"] == pytest.approx(sumr)


def test_a_query_pointing_outside_the_videos_is_rejected():
    videos = EncodedVideos(torch.zeros(2, 32, 8), torch.zeros(2, 128, 8), ["a", "b"])
    queries = EncodedQueries(torch.ones(1, 8), torch.ones(1, 8), torch.tensor([2]), ["c#0"])
    with pytest.raises(ValueError, match=r"video_index out of range \[0, 2\)"):
        rank_chunks(queries, videos, MSCConfig(), chunk=4)


def test_msc_eval_reports_the_checkpoint_metrics(tiny_model, tiny_data, tiny_config, mlflow_uri,
                                                 tmp_path, capsys):
    path = save_checkpoint({"model": tiny_model.state_dict(), "config": to_dict(tiny_config),
                            "epoch": 3}, tmp_path / "best.pt")
    code = msc(["eval", "--checkpoint", str(path), "--out", str(tmp_path / "m.json"),
                 "--ranks", str(tmp_path / "r.parquet"), "train.eval_query_chunk=5"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "m.json").read_text())
    assert printed["epoch"] == 3 and printed["collection"] == "synthetic"
    expected = evaluate(tiny_model, tiny_data, tiny_config)["metrics"]
    assert printed["metrics"] == pytest.approx(expected)
    assert len(pd.read_parquet(tmp_path / "r.parquet")) == len(tiny_data.val_queries.dataset)


def test_msc_eval_names_a_broken_checkpoint(tmp_path, capsys):
    broken = tmp_path / "best.pt"
    broken.write_bytes(b"not a checkpoint")
    assert msc(["eval", "--checkpoint", str(broken)]) == 2
    assert f"{broken}: cannot read checkpoint" in capsys.readouterr().err
