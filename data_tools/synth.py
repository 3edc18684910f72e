"""Synthetic PRVR data in the release layout, deterministic per seed.

What makes it partially relevant and hard, like the real sets:
- a video is a run of several events of varying length; each event shows one concept drawn from a
  shared pool (concepts come in groups of related ones), plus a detail of its own;
- frame features have CLIP-like statistics: a common component shared by every frame, a per-video
  style, high similarity inside an event, a slow drift, per-frame noise, unit-ish norms;
- each caption describes one event only, through text tokens whose weight on the event grows along
  the sentence and whose end token carries it most (the TCP teacher);
- some events copy another video's event, so near-duplicate captions exist across videos.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import h5py
import numpy as np

from data_tools.atomic import temp_sibling
from data_tools.layout import KNOWN_WIDTHS, Collection, feature_key

SYNTH_VERSION = 1
MARKER = "synth.json"


@dataclass(frozen=True)
class SynthSizes:
    """Every size and strength of the generator; a preset is one instance of it."""

    train_videos: int = 24
    val_videos: int = 12
    captions_min: int = 2
    captions_max: int = 4
    events_min: int = 2
    events_max: int = 4
    frames_min: int = 12
    frames_max: int = 160
    tokens_min: int = 4
    tokens_max: int = 20
    concepts: int = 16
    concept_groups: int = 4
    video_dim: int = 32
    text_dim: int = 32
    latent_dim: int = 16
    detail: float = 0.8  # weight of an event's own detail next to its concept
    caption_noise: float = 0.3  # paraphrase noise of a caption around its event
    frame_noise: float = 0.35  # per-frame noise next to unit event content
    duplicate_prob: float = 0.1  # chance that an event nearly copies an earlier video's event

    def check(self) -> None:
        """Raise ValueError naming the first field out of range."""
        for name in ("train_videos", "val_videos", "captions_min", "events_min", "frames_min",
                     "tokens_min", "concepts", "concept_groups", "video_dim", "text_dim",
                     "latent_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"synth size {name}={getattr(self, name)} must be >= 1")
        for low in ("captions", "events", "frames", "tokens"):
            if getattr(self, f"{low}_max") < getattr(self, f"{low}_min"):
                raise ValueError(f"synth size {low}_max must be >= {low}_min")
        if self.frames_min < self.events_max:
            raise ValueError("synth size frames_min must be >= events_max (one frame per event)")
        for name in ("detail", "caption_noise", "frame_noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"synth size {name}={getattr(self, name)} must be >= 0")
        if not 0.0 <= self.duplicate_prob <= 1.0:
            raise ValueError(f"synth size duplicate_prob={self.duplicate_prob} must be in [0, 1]")


PRESETS = {
    "tiny": SynthSizes(),
    "small": SynthSizes(train_videos=800, val_videos=160, captions_min=2, captions_max=5,
                        events_min=3, events_max=6, frames_min=32, frames_max=192,
                        tokens_min=6, tokens_max=24, concepts=48, concept_groups=8,
                        video_dim=64, text_dim=64, latent_dim=24, detail=0.5, caption_noise=0.6,
                        frame_noise=0.5, duplicate_prob=0.25),
}


def resolve_sizes(collection: str, preset: str, **sizes) -> SynthSizes:
    """The preset with `sizes` overrides applied; released collections keep their real widths.

    Raises ValueError for an unknown preset, an unknown size name or a value out of range.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown synth preset {preset!r}; expected one of {sorted(PRESETS)}")
    known = {f.name for f in fields(SynthSizes)}
    unknown = sorted(set(sizes) - known)
    if unknown:
        raise ValueError(f"unknown synth size(s) {unknown}; known: {sorted(known)}")
    resolved = replace(PRESETS[preset], **sizes)
    if collection in KNOWN_WIDTHS:
        video_dim, text_dim = KNOWN_WIDTHS[collection]
        for name, real in (("video_dim", video_dim), ("text_dim", text_dim)):
            if name in sizes and sizes[name] != real:
                raise ValueError(f"collection {collection!r} has {name}={real}; "
                                 f"use another collection name for other widths")
        resolved = replace(resolved, video_dim=video_dim, text_dim=text_dim)
    resolved.check()
    return resolved


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _projection(rng: np.random.Generator, latent: int, width: int) -> np.ndarray:
    """A random map latent -> width that keeps geometry (orthonormal rows when width >= latent)."""
    gauss = rng.normal(size=(width, latent))
    if width >= latent:
        q, _ = np.linalg.qr(gauss)  # [width, latent]
        return q.T
    return gauss.T / np.sqrt(latent)


@dataclass
class _World:
    """Shared pieces: concept latents, the maps to video and text space, common components."""

    concepts: np.ndarray  # [C, k]
    groups: np.ndarray  # [C]
    to_video: np.ndarray  # [k, Dv]
    to_text: np.ndarray  # [k, Dt]
    video_common: np.ndarray  # [Dv]
    text_common: np.ndarray  # [Dt]


def _make_world(rng: np.random.Generator, s: SynthSizes) -> _World:
    centres = _unit(rng.normal(size=(s.concept_groups, s.latent_dim)))
    groups = np.arange(s.concepts) % s.concept_groups
    spread = _unit(rng.normal(size=(s.concepts, s.latent_dim)))
    concepts = _unit(0.8 * centres[groups] + 0.6 * spread)
    return _World(concepts, groups, _projection(rng, s.latent_dim, s.video_dim),
                  _projection(rng, s.latent_dim, s.text_dim),
                  _unit(rng.normal(size=s.video_dim)), _unit(rng.normal(size=s.text_dim)))


@dataclass
class _Event:
    concept: int
    latent: np.ndarray  # [k]


def _draw_event(rng, world: _World, s: SynthSizes, pool: list[_Event]) -> _Event:
    """A new event, or (with duplicate_prob) a near copy of an earlier video's event."""
    if pool and rng.random() < s.duplicate_prob:
        source = pool[rng.integers(len(pool))]
        return _Event(source.concept, _unit(source.latent + 0.1 * _unit(rng.normal(size=s.latent_dim))))
    concept = int(rng.integers(s.concepts))
    detail = _unit(rng.normal(size=s.latent_dim))
    return _Event(concept, _unit(world.concepts[concept] + s.detail * detail))


def _event_lengths(rng, n_frames: int, n_events: int) -> np.ndarray:
    """Split n_frames into n_events runs of varying length, each at least one frame."""
    shares = rng.dirichlet(np.full(n_events, 1.5))
    lengths = 1 + np.floor(shares * (n_frames - n_events)).astype(int)
    lengths[rng.integers(n_events)] += n_frames - lengths.sum()
    return lengths


def _event_frames(rng, world: _World, s: SynthSizes, event: _Event, length: int,
                  style: np.ndarray) -> np.ndarray:
    """Frames of one event: common + drifting event content + video style + noise. [length, Dv]"""
    content = _unit(event.latent @ world.to_video)  # [Dv]
    start, end = _unit(rng.normal(size=(2, s.video_dim)))
    t = np.linspace(0.0, 1.0, length)[:, None]  # [length, 1]
    drifting = _unit(content + 0.25 * ((1 - t) * start + t * end))  # [length, Dv]
    noise = rng.normal(size=(length, s.video_dim)) / np.sqrt(s.video_dim)
    frames = world.video_common + drifting + 0.4 * style + s.frame_noise * noise
    scale = rng.uniform(0.95, 1.05, size=(length, 1))
    return _unit(frames) * scale


def _caption_tokens(rng, world: _World, s: SynthSizes, event: _Event) -> np.ndarray:
    """Text tokens of a caption of `event`; the end token carries the event most. [m, Dt]"""
    m = int(rng.integers(s.tokens_min, s.tokens_max + 1))
    paraphrase = _unit(event.latent + s.caption_noise * _unit(rng.normal(size=s.latent_dim)))
    content = _unit(paraphrase @ world.to_text)  # [Dt]
    weights = 0.15 + 0.6 * np.arange(m) / max(m - 1, 1)
    weights[-1] = 1.2
    words = _unit(rng.normal(size=(m, s.text_dim)))
    word_weight = np.full((m, 1), 0.5)
    word_weight[-1] = 0.3
    tokens = world.text_common + weights[:, None] * content + word_weight * words
    return _unit(tokens) * rng.uniform(0.8, 1.2, size=(m, 1))


def _caption_text(world: _World, event: _Event, index: int, n_events: int) -> str:
    group = int(world.groups[event.concept])
    return f"someone performs activity {event.concept} of kind {group} (moment {index + 1} of {n_events})"


def _video_id(collection: str, index: int) -> str:
    prefix = "v_" if collection == "activitynet" else "video"
    return f"{prefix}{index:06d}"


@dataclass
class _Writer:
    """What every split of one generated collection shares: the random stream, the world, the
    sizes, the pool of earlier events (for near duplicates) and the two open HDF5 files."""

    rng: np.random.Generator
    world: _World
    sizes: SynthSizes
    collection: str
    video_file: h5py.File
    text_file: h5py.File
    pool: list[_Event] = field(default_factory=list)


def _write_videos(w: _Writer, first_index: int, count: int) -> list[str]:
    """Generate `count` videos with their captions; returns the caption file's lines."""
    rng, s = w.rng, w.sizes
    lines = []
    for index in range(first_index, first_index + count):
        video_id = _video_id(w.collection, index)
        n_events = int(rng.integers(s.events_min, s.events_max + 1))
        n_frames = int(rng.integers(max(s.frames_min, n_events), s.frames_max + 1))
        events = [_draw_event(rng, w.world, s, w.pool) for _ in range(n_events)]
        style = _unit(rng.normal(size=s.video_dim))
        lengths = _event_lengths(rng, n_frames, n_events)
        frames = np.concatenate([_event_frames(rng, w.world, s, e, int(n), style)
                                 for e, n in zip(events, lengths, strict=True)])
        w.video_file.create_dataset(feature_key(w.collection, video_id),
                                    data=frames.astype(np.float32))
        n_captions = int(rng.integers(s.captions_min, s.captions_max + 1))
        chosen = rng.permutation(n_events)[:n_captions] if n_captions <= n_events else \
            rng.integers(n_events, size=n_captions)
        for j, event_index in enumerate(chosen):
            cap_id = f"{video_id}#enc#{j}"
            event = events[int(event_index)]
            tokens = _caption_tokens(rng, w.world, s, event)
            w.text_file.create_dataset(cap_id, data=tokens.astype(np.float32))
            lines.append(f"{cap_id} {_caption_text(w.world, event, int(event_index), n_events)}")
        w.pool.extend(events)
    return lines


def _generate(target: Collection, sizes: SynthSizes, seed: int) -> None:
    """Write the whole layout of `target` (a fresh directory)."""
    rng = np.random.default_rng(seed)
    world = _make_world(rng, sizes)
    target.text_dir.mkdir(parents=True)
    target.feature_dir.mkdir(parents=True)
    with h5py.File(target.video_h5, "w") as video_file, h5py.File(target.text_h5, "w") as text_file:
        writer = _Writer(rng, world, sizes, target.name, video_file, text_file)
        first = 0
        for split, count in (("train", sizes.train_videos), ("val", sizes.val_videos)):
            lines = _write_videos(writer, first, count)
            target.caption_file(split).write_text("\n".join(lines) + "\n", encoding="utf-8")
            first += count


def _marker(preset: str, seed: int, sizes: SynthSizes) -> dict:
    return {"version": SYNTH_VERSION, "preset": preset, "seed": seed, "sizes": asdict(sizes)}


def _swap_in(tmp_dir: Path, dest: Path, overwrite: bool) -> None:
    """Move a finished tmp_dir to dest; replace an existing dest only when `overwrite`."""
    if dest.exists():
        if not overwrite:
            raise FileExistsError(f"{dest} exists; pass overwrite=True (--overwrite) to replace it")
        trash = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(dest, trash)
        os.rename(tmp_dir, dest)
        shutil.rmtree(trash, ignore_errors=True)
        return
    try:
        os.rename(tmp_dir, dest)
    except OSError:
        raise FileExistsError(f"{dest} appeared while generating") from None


def synthesize(root, collection: str = "synthetic", preset: str = "tiny", seed: int = 0,
               overwrite: bool = False, **sizes) -> Collection:
    """Generate a synthetic collection at `{root}/{collection}` in the release layout.

    Deterministic per (preset, sizes, seed). Written into a temporary sibling directory and renamed
    into place, so a crash never leaves a half-written collection. `sizes` override fields of
    `SynthSizes`. Raises ValueError for bad sizes, FileExistsError when the target exists and
    `overwrite` is false.
    """
    resolved = resolve_sizes(collection, preset, **sizes)
    dest = Collection(root, collection)
    dest.root.mkdir(parents=True, exist_ok=True)
    tmp_root = temp_sibling(dest.dir)
    tmp = Collection(tmp_root, collection)
    try:
        _generate(tmp, resolved, seed)
        (tmp.dir / MARKER).write_text(json.dumps(_marker(preset, seed, resolved), indent=1))
        _swap_in(tmp.dir, dest.dir, overwrite)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return dest


def read_marker(collection: Collection) -> dict | None:
    """The generator's record of a synthetic collection, or None when it has none."""
    path = collection.dir / MARKER
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def ensure_synthetic(root, preset: str = "small", seed: int = 0, collection: str = "synthetic",
                     **sizes) -> Collection:
    """Return the synthetic collection, generating it on first use only (atomically).

    An existing collection generated with other settings is regenerated; a directory that the
    generator did not write is never touched (FileExistsError). Safe when several processes call
    it at once: the data is deterministic, the first rename wins.
    """
    wanted = _marker(preset, seed, resolve_sizes(collection, preset, **sizes))
    target = Collection(root, collection)
    for _ in range(3):
        if target.dir.exists():
            found = read_marker(target)
            if found == wanted:
                return target
            if found is None:
                raise FileExistsError(f"{target.dir} exists and was not written by the synthetic "
                                      f"generator; choose another collection name")
        try:
            return synthesize(root, collection, preset, seed, overwrite=target.dir.exists(), **sizes)
        except FileExistsError:
            continue
    raise FileExistsError(f"could not settle {target.dir}: other processes keep replacing it")
