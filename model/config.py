"""`MSCConfig`: every size and switch of the MSC network and its losses.

Defaults are the paper's TVR setting. Each field's type says what it accepts (ranges as
`Annotated` bounds, modes as `Literal`); `validate()` checks them all through pydantic
(`model.validation`) and reports every bad field at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator

from model.validation import (
    FIELD_RULES,
    Bool,
    Float,
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    validate_as,
)

GaussWidth = PositiveFloat | None  # None: the branch without a Gaussian prior
Probability = Annotated[Float, Field(ge=0, le=1)]


@dataclass
class MSCConfig:
    """Sizes, switches and loss coefficients of MSC.

    `dropout` is the rate inside the attention layers and the branch-fusion MLP;
    `input_dropout` the rate of the input projections and positional embeddings (None: the
    same as `dropout`), as the released code's `drop` and `input_drop`.
    """

    __pydantic_config__ = FIELD_RULES

    text_dim: PositiveInt = 768
    video_dim: PositiveInt = 768
    hidden: PositiveInt = 384
    heads: PositiveInt = 4  # must divide hidden
    dropout: Fraction = 0.2
    input_dropout: Fraction | None = None
    text_len: PositiveInt = 77
    clip_len: PositiveInt = 32
    frame_len: PositiveInt = 128
    gauss_widths: Annotated[tuple[GaussWidth, ...], Field(min_length=1)] = (
        None, 0.5, 1.0, 5.0, 10.0, 3.0, 0.1, 8.0)
    sft_factor: PositiveFloat = 0.09
    clip_weight: NonNegativeFloat = 0.4
    frame_weight: NonNegativeFloat = 0.6
    clip_tokens: Literal["optome", "uniform"] = "optome"
    tcp: Bool = True
    cbva: Literal["off", "fixed", "adaptive"] = "adaptive"
    rkd_d_coef: NonNegativeFloat = 15.0
    rkd_a_coef: NonNegativeFloat = 30.0
    vl_coef: NonNegativeFloat = 0.1
    sim_thr: Probability = 0.8
    nce_clip: NonNegativeFloat = 0.05
    nce_frame: NonNegativeFloat = 0.04
    margin: NonNegativeFloat = 0.1
    hard_pool: PositiveInt = 20
    hard_negative_start: NonNegativeInt = 20

    @field_validator("heads")
    @classmethod
    def _heads_divide_hidden(cls, heads: int, info: ValidationInfo) -> int:
        hidden = info.data.get("hidden")
        if hidden is not None and hidden % heads:
            raise ValueError(f"must divide hidden ({hidden}) without remainder")
        return heads

    def validate(self) -> MSCConfig:
        """Check every field; returns the checked copy (ints widened to floats, lists to tuples).

        Raises ValueError (model.validation.InvalidFields) with one line per bad field,
        `MSCConfig.<field>: <problem>, got <value>`: a wrong type, a value out of range, an
        unknown mode, heads not dividing hidden.
        """
        return validate_as(MSCConfig, self, prefix="MSCConfig.")

    @property
    def input_dropout_rate(self) -> float:
        """Dropout rate of the input projections and positional embeddings."""
        return self.dropout if self.input_dropout is None else self.input_dropout
