"""Our video inputs against the released data provider's, on the videos recorded in
tests/model/data/released_golden.pt (see tools/released/record_golden.py).

The released provider resamples every video to 128 frames, merges them into 32 OP-ToMe clip
tokens (sizes, frame labels) and L2-normalises both; `data_tools.features.video_inputs` must give
the same numbers from the same raw frames.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_tools.features import video_inputs

GOLDEN_PATH = Path(__file__).resolve().parents[1] / "model" / "data" / "released_golden.pt"


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(GOLDEN_PATH, weights_only=True)


def test_video_inputs_equal_the_released_data_provider(golden):
    raw = [video.numpy() for video in golden["raw_videos"]]
    ours = {key: torch.from_numpy(value) for key, value in video_inputs(raw, "optome").items()}
    released = golden["inputs"]
    torch.testing.assert_close(ours["clip_labels"], released["merged_frame_label"], rtol=0, atol=0)
    torch.testing.assert_close(ours["clip_sizes"], released["merge_size"], rtol=0, atol=0)
    torch.testing.assert_close(ours["clips"], released["clip_video_features"], rtol=1e-6, atol=1e-6)
    valid = released["videos_mask"].bool()  # one recorded video has padded (zeroed) frames
    torch.testing.assert_close(ours["frames"][valid], released["frame_video_features"][valid],
                               rtol=1e-6, atol=1e-6)
    assert not valid.all()
