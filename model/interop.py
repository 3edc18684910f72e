"""Interoperability with the authors' released MSC code: parameter names, checkpoints, config.

The released network keeps one tensor per Linear / LayerNorm of every branch, under names such
as `clip_encoder.attn3.self.query.weight`; this project stores the branches stacked and some
projections fused (model/packing.py). `released_names` is the one table between the two naming
schemes; conversion in both directions, the optimiser's weight-decay groups and its per-tensor
clipping all follow from it and from the layers' packings.

The only I/O here is `load_authors_checkpoint`'s read of one checkpoint file.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from model.config import MSCConfig
from model.network import MSC
from model.packing import Packing, parameter_packings
from model.validation import InvalidFields, validate_as

RELEASED_BRANCHES = len(MSCConfig().gauss_widths)
RELEASED_CHECKPOINT_KEYS = ("config", "epoch", "model_val", "state_dict", "optimizer")
DATA_PARALLEL_PREFIX = "module."
# released schedule classes pickled inside the checkpoint's optimizer state (param_groups)
RELEASED_SCHEDULES = ("ConstantLR", "WarmupCosineSchedule", "WarmupCosineWithHardRestartsSchedule",
                      "WarmupCosineWithWarmupRestartsSchedule", "WarmupConstantSchedule",
                      "WarmupLinearSchedule")
# released config key -> MSCConfig field, for the keys that define the network
NETWORK_KEYS = {"visual_feat_dim": "video_dim", "q_feat_size": "text_dim",
                "hidden_size": "hidden", "n_heads": "heads", "max_desc_l": "text_len",
                "max_ctx_l": "frame_len", "drop": "dropout", "input_drop": "input_dropout",
                "sft_factor": "sft_factor"}
# released config key -> MSCConfig field, read when present
OPTIONAL_KEYS = {"sim_thr": "sim_thr", "margin": "margin", "vl_coef": "vl_coef",
                 "rkd_d_coef": "rkd_d_coef", "rkd_a_coef": "rkd_a_coef",
                 "hard_pool_size": "hard_pool", "hard_negative_start_epoch": "hard_negative_start",
                 "clip_scale_w": "clip_weight", "frame_scale_w": "frame_weight"}
# released settings that have no MSCConfig field, written with their released values
RELEASED_FIXED_SETTINGS = {"map_size": 128, "initializer_range": 0.02, "use_hard_negative": False,
                           "eval_query_bsz": 50, "eval_context_bsz": 100}


class CheckpointFormatError(ValueError):
    """A checkpoint or state dict that does not match the released MSC network."""


# ---------------------------------------------------------------------------- the name table

def _pair(ours: str, theirs: str) -> dict[str, list[str]]:
    """weight and bias of one module."""
    return {f"{ours}.{p}": [f"{theirs}.{p}"] for p in ("weight", "bias")}


def _projection(ours: str, theirs: str) -> dict[str, list[str]]:
    """InputProjection <- released LinearLayer (LayerNorm, net = [Dropout, Linear])."""
    return {**_pair(f"{ours}.norm", f"{theirs}.LayerNorm"),
            **_pair(f"{ours}.linear", f"{theirs}.net.1")}


def _positions(ours: str, theirs: str) -> dict[str, list[str]]:
    """PositionalEmbedding <- released TrainablePositionalEncoding."""
    return {f"{ours}.embedding.weight": [f"{theirs}.position_embeddings.weight"],
            **_pair(f"{ours}.norm", f"{theirs}.LayerNorm")}


def _attention(ours: str, layers: list[str]) -> dict[str, list[str]]:
    """MultiBranchAttentionLayer <- one released BertAttention per branch (prefixes `layers`)."""
    names = {}
    for p in ("weight", "bias"):
        names[f"{ours}.qkv.{p}"] = [f"{layer}.self.{part}.{p}" for layer in layers
                                    for part in ("query", "key", "value")]
        for stored, released in (("norm_attn", "norm1"), ("ffn_in", "output.layer1"),
                                 ("ffn_out", "output.layer2"), ("norm_ffn", "norm2")):
            names[f"{ours}.{stored}.{p}"] = [f"{layer}.{released}.{p}" for layer in layers]
    return names


def _cross_attention(ours: str, theirs: str) -> dict[str, list[str]]:
    """CrossAttentionLayer <- released BertCrossAttention (key and value fused here)."""
    names = {f"{ours}.key_value.{p}": [f"{theirs}.self.key.{p}", f"{theirs}.self.value.{p}"]
             for p in ("weight", "bias")}
    for stored, released in (("query", "self.query"), ("norm_attn", "norm1"),
                             ("ffn_in", "output.layer1"), ("ffn_out", "output.layer2"),
                             ("norm_ffn", "norm2")):
        names.update(_pair(f"{ours}.{stored}", f"{theirs}.{released}"))
    return names


def _gmm_block(ours: str, theirs: str, branches: int) -> dict[str, list[str]]:
    """GaussianMixtureBlock <- released DyGMMBlock (attn0..attnK-1, ca, layer1, layer2)."""
    return {**_attention(f"{ours}.branches", [f"{theirs}.attn{k}" for k in range(branches)]),
            **_cross_attention(f"{ours}.cross_attention", f"{theirs}.ca"),
            **_pair(f"{ours}.fuse_hidden", f"{theirs}.layer1"),
            **_pair(f"{ours}.fuse_out", f"{theirs}.layer2")}


@functools.lru_cache(maxsize=None)
def _name_table(branches: int) -> tuple[tuple[str, tuple[str, ...]], ...]:
    names = {**_projection("query_proj", "query_input_proj"),
             **_positions("query_pos", "query_pos_embed"),
             **_attention("query_layer", ["query_encoder"]),
             "query_pool.weight": ["modular_vector_mapping.weight"],
             **_projection("clip_proj", "clip_input_proj"),
             **_positions("clip_pos", "clip_pos_embed"),
             **_gmm_block("clip_block", "clip_encoder", branches),
             **_projection("frame_proj", "frame_input_proj"),
             **_positions("frame_pos", "frame_pos_embed"),
             **_gmm_block("frame_block", "frame_encoder_1", branches),
             "weight_token": ["weight_token"],
             **_pair("alignment", "vproj_clip")}
    return tuple((ours, tuple(theirs)) for ours, theirs in names.items())


def released_names(branches: int = RELEASED_BRANCHES) -> dict[str, list[str]]:
    """Each MSC parameter name -> the released parameter names it holds, in packing order."""
    return {ours: list(theirs) for ours, theirs in _name_table(branches)}


def released_names_for(model: nn.Module) -> dict[str, list[str]]:
    """released_names of an MSC model (its branch count); any other module: each name itself."""
    if isinstance(model, MSC):
        return released_names(len(model.cfg.gauss_widths))
    return {name: [name] for name, _ in model.named_parameters()}


@functools.lru_cache(maxsize=None)
def _skeleton_packings(branches: int) -> dict[str, Packing]:
    """Packings of an MSC with `branches` branches, read off a model on the meta device."""
    cfg = MSCConfig(hidden=8, heads=1, text_dim=8, video_dim=8, gauss_widths=(None,) * branches)
    with torch.device("meta"):
        return parameter_packings(MSC(cfg))


# ---------------------------------------------------------------------------- conversion

def convert_authors_state_dict(named_tensors: Mapping[str, torch.Tensor],
                               branches: int = RELEASED_BRANCHES) -> dict[str, torch.Tensor]:
    """Tensors keyed by the released parameter names (weights, gradients, ...) -> this
    project's state-dict names, stacked and fused as MSC stores them.

    Raises CheckpointFormatError naming the key(s) for missing or unexpected keys and for a
    tensor whose shape differs from the others stored with it.
    """
    table = released_names(branches)
    packings = _skeleton_packings(branches)
    _check_keys(named_tensors, {n for names in table.values() for n in names}, "state_dict")
    converted = {}
    for ours, theirs in table.items():
        tensors = [named_tensors[name] for name in theirs]
        _check_same_shapes(theirs, tensors, ours)
        converted[ours] = packings[ours].pack(tensors)
    return converted


def _check_same_shapes(names: list[str], tensors: list[torch.Tensor], ours: str) -> None:
    """The tensors stacked or fused into one parameter all have one shape; raises
    CheckpointFormatError naming the first that differs."""
    first = tuple(tensors[0].shape)
    for name, tensor in zip(names, tensors, strict=True):
        if tuple(tensor.shape) != first:
            raise CheckpointFormatError(
                f"state_dict: {name}: shape {tuple(tensor.shape)} differs from {names[0]} "
                f"{first} (they are stored together in {ours})")


def to_authors_state_dict(model: MSC) -> dict[str, torch.Tensor]:
    """The model's parameters under the released names, one contiguous tensor each (the
    inverse of convert_authors_state_dict; the round trip is exact)."""
    table = released_names_for(model)
    packings = parameter_packings(model)
    state = model.state_dict()
    released = {}
    for ours, theirs in table.items():
        released.update(zip(theirs, packings[ours].unpack(state[ours].detach()), strict=True))
    return released


def _check_keys(named_tensors: Mapping[str, Any], expected: set[str], where: str) -> None:
    """Raise CheckpointFormatError naming missing and unexpected keys."""
    missing = sorted(expected - set(named_tensors))
    unexpected = sorted(set(named_tensors) - expected)
    problems = []
    if missing:
        problems.append(f"missing key(s) {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected key(s) {_listing(unexpected)}")
    if problems:
        raise CheckpointFormatError(f"{where}: " + "; ".join(problems))


def _listing(keys: list[str], shown: int = 6) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(repr(k) for k in keys[:shown]) + more


# ---------------------------------------------------------------------------- config

def config_from_authors(config: Mapping[str, Any]) -> MSCConfig:
    """MSCConfig from a released config dict; keys it does not need are ignored.

    The network keys (NETWORK_KEYS) are required; sim_thr, margin, the loss coefficients,
    `loss_factor[0:2]` (nce_clip, nce_frame), clip_scale_w and frame_scale_w are read when
    present. Raises CheckpointFormatError naming the key for a missing key or a bad value.
    """
    missing = [key for key in NETWORK_KEYS if key not in config]
    if missing:
        raise CheckpointFormatError(f"config: missing key(s) {_listing(missing)}")
    values = {field: config[key] for key, field in {**NETWORK_KEYS, **OPTIONAL_KEYS}.items()
              if key in config}
    factors = config.get("loss_factor")
    if factors is not None:
        if not isinstance(factors, (list, tuple)) or len(factors) < 2:
            raise CheckpointFormatError(f"config: loss_factor: expected a list of at least 2 "
                                        f"numbers, got {factors!r}")
        values["nce_clip"], values["nce_frame"] = factors[0], factors[1]
    try:
        return validate_as(MSCConfig, values)  # ints widen to floats (`rkd_d_coef: 10`)
    except InvalidFields as err:
        raise CheckpointFormatError("config: " + "; ".join(
            _released_key_message(field, problem) for field, problem in err.problems)) from None


def _released_key_message(field: str, problem: str) -> str:
    """`drop (MSCConfig.dropout: problem)`: the released key next to the MSCConfig field."""
    released = {ours: theirs for theirs, ours in {**NETWORK_KEYS, **OPTIONAL_KEYS}.items()}
    key = released.get(field.split("[")[0])
    message = f"MSCConfig.{field}: {problem}"
    return f"{key} ({message})" if key else message


def authors_config(cfg: MSCConfig, **settings: Any) -> dict[str, Any]:
    """The released config dict for `cfg`: the keys the released get_models(), losses and
    validation read. `settings` (e.g. collection, lr, n_epoch) are added as they are."""
    config = {key: getattr(cfg, field) for key, field in {**NETWORK_KEYS, **OPTIONAL_KEYS}.items()}
    config["input_drop"] = cfg.input_dropout_rate
    config["loss_factor"] = [cfg.nce_clip, cfg.nce_frame]
    config.update(RELEASED_FIXED_SETTINGS)
    config.update(settings)
    return config


# ---------------------------------------------------------------------------- checkpoint

class _ReleasedSchedule:
    """Stands in for the released optimiser's schedule object pickled in a checkpoint's
    optimizer state, so the file loads with weights_only=True; only holds its attributes."""


def _read_checkpoint(path: Path) -> dict:
    """torch.load(weights_only=True) of a released checkpoint; raises CheckpointFormatError."""
    allowed = [(_ReleasedSchedule, f"Opts.optimization.{name}") for name in RELEASED_SCHEDULES]
    try:
        with torch.serialization.safe_globals(allowed):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as err:  # torch.load raises many types for a damaged or foreign file
        raise CheckpointFormatError(f"{path}: not a readable torch checkpoint "
                                    f"({type(err).__name__}: {err})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointFormatError(f"{path}: expected a checkpoint dict with keys "
                                    f"{list(RELEASED_CHECKPOINT_KEYS)}, got "
                                    f"{type(checkpoint).__name__}")
    for key in ("config", "state_dict"):
        if not isinstance(checkpoint.get(key), Mapping):
            raise CheckpointFormatError(f"{path}: {key}: missing or not a dict (keys found: "
                                        f"{sorted(map(str, checkpoint))})")
    return checkpoint


def _strip_data_parallel(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the `module.` prefix that nn.DataParallel adds to every key."""
    if state and all(key.startswith(DATA_PARALLEL_PREFIX) for key in state):
        return {key[len(DATA_PARALLEL_PREFIX):]: value for key, value in state.items()}
    return dict(state)


def load_authors_checkpoint(path: str | Path) -> tuple[MSC, MSCConfig]:
    """Read a released `best.ckpt` ({config, epoch, model_val, state_dict, optimizer}) and
    return the MSC it holds (eval mode) and its config.

    Raises FileNotFoundError for a missing file and CheckpointFormatError naming the file and
    the key for anything else: not a checkpoint, no config / state_dict, a config without the
    network keys, missing or unexpected parameters, a shape that does not fit the config.
    """
    path = Path(path)
    checkpoint = _read_checkpoint(path)
    try:
        cfg = config_from_authors(checkpoint["config"])
        state = _strip_data_parallel(checkpoint["state_dict"])
        with torch.device("meta"):
            expected = to_authors_state_dict(MSC(cfg))  # shapes only, no memory
        _check_shapes(state, expected)
        model = MSC(cfg)
        model.load_state_dict(convert_authors_state_dict(state, len(cfg.gauss_widths)))
    except CheckpointFormatError as err:
        raise CheckpointFormatError(f"{path}: {err}") from None
    return model.eval(), cfg


def _check_shapes(state: Mapping[str, Any], expected: Mapping[str, torch.Tensor]) -> None:
    """Raise CheckpointFormatError for wrong keys, non-tensors and shapes that differ."""
    _check_keys(state, set(expected), "state_dict")
    for name, want in expected.items():
        got = state[name]
        if not isinstance(got, torch.Tensor):
            raise CheckpointFormatError(f"state_dict: {name}: expected a tensor, "
                                        f"got {type(got).__name__}")
        if got.shape != want.shape:
            raise CheckpointFormatError(f"state_dict: {name}: shape {tuple(got.shape)} in the "
                                        f"file, {tuple(want.shape)} expected from the config")
