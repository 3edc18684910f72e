"""tools/released/released_env.py without the released code: the source check and the stand-ins."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools" / "released"


@pytest.fixture
def released_env(monkeypatch):
    monkeypatch.syspath_prepend(str(TOOLS))
    spec = importlib.util.spec_from_file_location("released_env", TOOLS / "released_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_folder_without_the_released_code_is_refused(released_env, tmp_path):
    (tmp_path / "Models" / "MSC").mkdir(parents=True)
    (tmp_path / "Models" / "MSC" / "model.py").write_text("")
    with pytest.raises(FileNotFoundError, match=r"no Losses/loss\.py.*0b3e3d108ee0"):
        released_env.check_source(tmp_path)


def test_easydict_stand_in_reads_and_writes_attributes(released_env):
    config = released_env.AttributeDict(hidden_size=32)
    config.use_hard_negative = True
    assert config.hidden_size == 32 and config["use_hard_negative"] is True
    with pytest.raises(AttributeError):
        _ = config.missing
