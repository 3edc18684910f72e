"""`MSCConfig`: every size and switch of the MSC network and its losses.

Defaults are the paper's TVR setting (spec section 7); `validate()` rejects values out of range.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

CLIP_TOKEN_MODES = ("optome", "uniform")
CBVA_MODES = ("off", "fixed", "adaptive")
POSITIVE_INTS = ("text_dim", "video_dim", "hidden", "heads", "text_len", "clip_len", "frame_len")
NON_NEGATIVE_FLOATS = ("clip_weight", "frame_weight", "rkd_d_coef", "rkd_a_coef", "vl_coef",
                       "nce_clip", "nce_frame", "margin")


@dataclass
class MSCConfig:
    """Sizes, switches and loss coefficients of MSC (spec sections 2, 4, 7).

    `dropout` is the rate inside the attention layers and the branch-fusion MLP;
    `input_dropout` the rate of the input projections and positional embeddings (None: the
    same as `dropout`), as the released code's `drop` and `input_drop`.
    """

    text_dim: int = 768
    video_dim: int = 768
    hidden: int = 384
    heads: int = 4
    dropout: float = 0.2
    input_dropout: float | None = None
    text_len: int = 77
    clip_len: int = 32
    frame_len: int = 128
    gauss_widths: tuple = (None, 0.5, 1.0, 5.0, 10.0, 3.0, 0.1, 8.0)
    sft_factor: float = 0.09
    clip_weight: float = 0.4
    frame_weight: float = 0.6
    clip_tokens: str = "optome"
    tcp: bool = True
    cbva: str = "adaptive"
    rkd_d_coef: float = 15.0
    rkd_a_coef: float = 30.0
    vl_coef: float = 0.1
    sim_thr: float = 0.8
    nce_clip: float = 0.05
    nce_frame: float = 0.04
    margin: float = 0.1
    hard_pool: int = 20
    hard_negative_start: int = 20

    def validate(self) -> "MSCConfig":
        """Check every field; returns self.

        Raises ValueError naming the field and the problem (wrong type, out of range,
        unknown mode, hidden not divisible by heads, non-finite or negative coefficient).
        """
        self._check_types()
        for name in POSITIVE_INTS:
            if getattr(self, name) < 1:
                raise ValueError(f"MSCConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ValueError(f"MSCConfig.hidden ({self.hidden}) must be divisible by "
                             f"MSCConfig.heads ({self.heads})")
        for name in NON_NEGATIVE_FLOATS:
            _require(name, getattr(self, name), low=0.0)
        _require("dropout", self.dropout, low=0.0, high=1.0, high_open=True)
        if self.input_dropout is not None:
            _require("input_dropout", self.input_dropout, low=0.0, high=1.0, high_open=True)
        _require("sim_thr", self.sim_thr, low=0.0, high=1.0)
        _require("sft_factor", self.sft_factor, low=0.0, low_open=True)
        if self.clip_tokens not in CLIP_TOKEN_MODES:
            raise ValueError(f"MSCConfig.clip_tokens must be one of {CLIP_TOKEN_MODES}, "
                             f"got {self.clip_tokens!r}")
        if self.cbva not in CBVA_MODES:
            raise ValueError(f"MSCConfig.cbva must be one of {CBVA_MODES}, got {self.cbva!r}")
        if self.hard_pool < 1:
            raise ValueError(f"MSCConfig.hard_pool must be >= 1, got {self.hard_pool}")
        if self.hard_negative_start < 0:
            raise ValueError(f"MSCConfig.hard_negative_start must be >= 0, "
                             f"got {self.hard_negative_start}")
        self._check_widths()
        return self

    @property
    def input_dropout_rate(self) -> float:
        """Dropout rate of the input projections and positional embeddings."""
        return self.dropout if self.input_dropout is None else self.input_dropout

    def _check_types(self) -> None:
        """Raise ValueError for a field whose value has the wrong Python type."""
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "gauss_widths":
                continue
            if field.type == "bool" and not isinstance(value, bool):
                raise ValueError(f"MSCConfig.{field.name} must be a bool, got {value!r}")
            if field.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"MSCConfig.{field.name} must be an int, got {value!r}")
            if field.type == "float | None" and value is None:
                continue
            if field.type in ("float", "float | None") and (
                    isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"MSCConfig.{field.name} must be a number, got {value!r}")
            if field.type == "str" and not isinstance(value, str):
                raise ValueError(f"MSCConfig.{field.name} must be a string, got {value!r}")

    def _check_widths(self) -> None:
        """Raise ValueError unless gauss_widths is a non-empty sequence of None or widths > 0."""
        widths = self.gauss_widths
        if not isinstance(widths, (tuple, list)) or len(widths) == 0:
            raise ValueError(f"MSCConfig.gauss_widths must be a non-empty list, got {widths!r}")
        for width in widths:
            if width is None:
                continue
            if isinstance(width, bool) or not isinstance(width, (int, float)) \
                    or not math.isfinite(width) or width <= 0:
                raise ValueError(f"MSCConfig.gauss_widths entries must be None or > 0, "
                                 f"got {width!r}")


def _require(name: str, value: float, low: float | None = None, high: float | None = None,
             low_open: bool = False, high_open: bool = False) -> None:
    """Raise ValueError naming MSCConfig.<name> unless `value` is finite and inside the bounds."""
    if not math.isfinite(value):
        raise ValueError(f"MSCConfig.{name} must be finite, got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        raise ValueError(f"MSCConfig.{name} must be in {left}{low}, "
                         f"{'inf' if high is None else high}{right}, got {value}")
