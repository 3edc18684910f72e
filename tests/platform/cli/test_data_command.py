"""`msc data synth|validate|cache` (platform/msc_platform/cli/data.py)."""
from __future__ import annotations

import argparse

import h5py

from msc_platform.cli import data


def main(argv: list[str]) -> int:
    """`msc` with only the data command registered (the full CLI imports Ray and MLflow)."""
    parser = argparse.ArgumentParser(prog="msc")
    data.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def test_synth_validate_cache_from_the_command_line(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path), "--preset", "tiny", "--train-videos", "4",
                 "--val-videos", "2", "--video-dim", "16"]) == 0
    assert main(["data", "synth", str(tmp_path)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["data", "validate", str(tmp_path)]) == 0
    assert "videos {'train': 4, 'val': 2}, video_dim 16, text_dim 32" in capsys.readouterr().out
    assert main(["data", "cache", str(tmp_path), "--cache-dir", str(tmp_path / "c")]) == 0
    assert "(6 videos," in capsys.readouterr().out
    with h5py.File(tmp_path / "synthetic/TextData/synthetic_clip_L14.h5", "a") as handle:
        del handle["video000001#enc#0"]
    assert main(["data", "validate", str(tmp_path)]) == 1
    assert "video000001#enc#0: missing text key" in capsys.readouterr().err
