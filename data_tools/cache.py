"""The feature cache: model inputs of a whole collection, computed once, memory-mapped after.

One cache is a directory `{cache_dir}/{collection}-{key}/` of `.npy` arrays plus `manifest.json`:

| array | shape | content |
|---|---|---|
| frames | float32 [V, 128, Dv] | fixed-length frames, L2-normalised |
| {optome,uniform}_clips | float32 [V, 32, Dv] | clip tokens, L2-normalised |
| {optome,uniform}_sizes | float32 [V, 32] | frames per clip token |
| {optome,uniform}_labels | int64 [V, 128] | clip index of each fixed frame |
| tokens | float32 [T, Dt] | text tokens of all captions, truncated to 77, L2-normalised |
| token_offsets | int64 [C + 1] | caption c owns tokens[offsets[c]:offsets[c + 1]] |

`key` hashes the source fingerprint (`data_tools.fingerprint`) with the merge settings
(`data_tools.features.SETTINGS`) and the format version, so a changed source file or setting
gives a new key and a rebuild. A build validates the sources first, writes into a temporary
directory (`data_tools.atomic.temp_sibling`), writes the manifest last and renames the directory
into place: a crash mid-write leaves only a `.{collection}-{key}.tmp-*` directory, which never
loads and is removed by the next build once its writer is gone. Builders of one collection take
turns through a file lock (`{cache_dir}/.{collection}.lock`), so concurrent callers build once.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np
from filelock import FileLock

from data_tools.atomic import atomic_write_json, parse_temp_name, temp_sibling
from data_tools.features import (
    CLIP_LEN,
    CLIP_TOKENS,
    FRAME_LEN,
    SETTINGS,
    TEXT_LEN,
    check_clip_tokens,
    clip_tokens_of,
    one_thread,
    stack_fixed_length,
    text_inputs,
)
from data_tools.fingerprint import digest, source_fingerprint
from data_tools.index import Index
from data_tools.layout import Collection, feature_key
from data_tools.processes import pid_alive
from data_tools.validate import Report, validate_collection
from model.merge import l2_normalize

CACHE_VERSION = 1
MANIFEST = "manifest.json"
CHUNK_VIDEOS = 256
VIDEO_KEYS = ("frames", "clips", "clip_sizes", "clip_labels")


def default_cache_dir(root) -> Path:
    """Where caches go when no cache_dir is given: `{root}/.cache`."""
    return Path(root) / ".cache"


def cache_key(fingerprint: str) -> str:
    """The cache key of a source fingerprint under the current settings and format."""
    return digest({"source": fingerprint, "settings": SETTINGS, "version": CACHE_VERSION})[:24]


def _array_specs(videos: int, video_dim: int, tokens: int, captions: int, text_dim: int) -> dict:
    """name -> (dtype, shape) of every array of a cache."""
    specs = {"frames": ("float32", [videos, FRAME_LEN, video_dim]),
             "tokens": ("float32", [tokens, text_dim]),
             "token_offsets": ("int64", [captions + 1])}
    for variant in CLIP_TOKENS:
        specs[f"{variant}_clips"] = ("float32", [videos, CLIP_LEN, video_dim])
        specs[f"{variant}_sizes"] = ("float32", [videos, CLIP_LEN])
        specs[f"{variant}_labels"] = ("int64", [videos, FRAME_LEN])
    return specs


class FeatureCache:
    """A built cache, read through read-only memory maps.

    The maps are opened at construction and survive the directory's removal by a later rebuild;
    forked DataLoader workers share them; pickling sends only the path (spawned workers map the
    files themselves). Raises ValueError when the directory is not a complete cache.
    """

    def __init__(self, path):
        self.path = Path(path)
        manifest_file = self.path / MANIFEST
        if not manifest_file.is_file():
            raise ValueError(f"{self.path}: not a complete feature cache ({MANIFEST} missing)")
        self.manifest = json.loads(manifest_file.read_text())
        self.index = Index.from_dict(self.manifest["index"])
        self.video_dim = int(self.manifest["video_dim"])
        self.text_dim = int(self.manifest["text_dim"])
        self._arrays = self._open_arrays()

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the source files the cache was built from."""
        return self.manifest["fingerprint"]

    @property
    def report(self) -> Report:
        return Report(**self.manifest["report"])

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def _open_arrays(self) -> dict[str, np.ndarray]:
        """name -> read-only memory map; raises ValueError when an array is unreadable or its
        dtype or shape differs from the manifest."""
        arrays = {}
        for name, (dtype, shape) in self.manifest["arrays"].items():
            try:
                array = np.load(self.path / f"{name}.npy", mmap_mode="r")
            except (OSError, ValueError) as err:
                raise ValueError(f"{self.path}: {name}.npy unreadable: {err}") from err
            if str(array.dtype) != dtype or list(array.shape) != shape:
                raise ValueError(f"{self.path}: {name}.npy is {array.dtype}{list(array.shape)}, "
                                 f"manifest says {dtype}{shape}")
            arrays[name] = np.asarray(array)  # plain ndarray view of the map: cheaper slicing
        return arrays

    def arrays(self) -> dict[str, np.ndarray]:
        """name -> read-only memory map."""
        return self._arrays

    def video(self, row: int, clip_tokens: str) -> dict[str, np.ndarray]:
        """Video keys of one video row (zero-copy views of the maps)."""
        arrays = self.arrays()
        prefix = check_clip_tokens(clip_tokens)
        return {"frames": arrays["frames"][row], "clips": arrays[f"{prefix}_clips"][row],
                "clip_sizes": arrays[f"{prefix}_sizes"][row], "clip_labels": arrays[f"{prefix}_labels"][row]}

    def tokens(self, cap_row: int) -> np.ndarray:
        """Normalised text tokens of one caption row (a zero-copy view). [m, Dt]"""
        arrays = self.arrays()
        offsets = arrays["token_offsets"]
        return arrays["tokens"][offsets[cap_row]:offsets[cap_row + 1]]


def _write_videos(handle, collection: Collection, index: Index, maps: dict, chunk: int) -> None:
    """Fill the video arrays chunk by chunk with the batched merge ops."""
    for start in range(0, len(index.video_ids), chunk):
        ids = index.video_ids[start:start + chunk]
        raw = [handle[feature_key(collection.name, vid)][()] for vid in ids]
        fixed = stack_fixed_length(raw)  # [c, 128, Dv]
        stop = start + len(ids)
        maps["frames"][start:stop] = l2_normalize(fixed).numpy()
        for variant in CLIP_TOKENS:
            clips, sizes, labels = clip_tokens_of(fixed, variant)
            maps[f"{variant}_clips"][start:stop] = clips.numpy()
            maps[f"{variant}_sizes"][start:stop] = sizes.numpy()
            maps[f"{variant}_labels"][start:stop] = labels.numpy()


def _write_texts(handle, index: Index, maps: dict) -> None:
    """Fill the token array caption by caption."""
    offsets = maps["token_offsets"]
    for row, cap_id in enumerate(index.cap_ids):
        maps["tokens"][offsets[row]:offsets[row + 1]] = text_inputs(handle[cap_id][()])


def _open_maps(directory: Path, specs: dict) -> dict[str, np.memmap]:
    return {name: np.lib.format.open_memmap(directory / f"{name}.npy", mode="w+", dtype=dtype,
                                            shape=tuple(shape))
            for name, (dtype, shape) in specs.items()}


def _write_cache(directory: Path, collection: Collection, report: Report, fingerprint: str,
                 chunk: int) -> None:
    """Compute every array of the cache into `directory`, manifest last."""
    index = Index.from_collection(collection)
    with h5py.File(collection.video_h5, "r") as videos, h5py.File(collection.text_h5, "r") as texts:
        lengths = [min(texts[cap_id].shape[0], TEXT_LEN) for cap_id in index.cap_ids]
        specs = _array_specs(len(index.video_ids), report.video_dim, sum(lengths),
                             len(index.cap_ids), report.text_dim)
        maps = _open_maps(directory, specs)
        maps["token_offsets"][:] = np.concatenate([[0], np.cumsum(lengths)])
        with one_thread():
            _write_videos(videos, collection, index, maps, chunk)
            _write_texts(texts, index, maps)
    for array in maps.values():
        array.flush()
    del maps
    manifest = {"key": cache_key(fingerprint), "fingerprint": fingerprint, "version": CACHE_VERSION,
                "collection": collection.name, "settings": SETTINGS, "video_dim": report.video_dim,
                "text_dim": report.text_dim, "arrays": specs, "index": index.to_dict(),
                "report": asdict(report)}
    atomic_write_json(directory / MANIFEST, manifest, indent=1)


def cache_lock(cache_dir: Path, name: str) -> FileLock:
    """The exclusive lock of collection `name`'s caches in `cache_dir` (creates the folder)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(cache_dir / f".{name}.lock")


def _remove_leftovers(cache_dir: Path, name: str, keep: Path) -> None:
    """Drop temporary directories of dead builders and caches of this collection with other keys."""
    own = re.compile(rf"{re.escape(name)}-[0-9a-f]{{{len(keep.name) - len(name) - 1}}}")
    for path in cache_dir.glob(f".{name}-*"):
        temp = parse_temp_name(path.name)
        if temp is not None and own.fullmatch(temp[0]) and not pid_alive(temp[1]):
            shutil.rmtree(path, ignore_errors=True)
    for path in cache_dir.glob(f"{name}-*"):
        if path.is_dir() and path != keep and own.fullmatch(path.name):
            shutil.rmtree(path, ignore_errors=True)


def _load_if_valid(path: Path, key: str) -> FeatureCache | None:
    """The cache at `path` if it is complete and has `key`; None (after removing it) otherwise."""
    if not path.is_dir():
        return None
    try:
        cache = FeatureCache(path)
        if cache.key != key:
            raise ValueError("key mismatch")
        return cache
    except (ValueError, KeyError, json.JSONDecodeError):
        shutil.rmtree(path, ignore_errors=True)
        return None


def _fingerprint_or_raise(root, name: str) -> str:
    """The source fingerprint; a missing source file is reported by a full validation."""
    try:
        return source_fingerprint(Collection(root, name))
    except OSError:
        validate_collection(root, name)
        raise


def build_or_load(root, collection: str, cache_dir=None, chunk: int = CHUNK_VIDEOS) -> FeatureCache:
    """The feature cache of `{root}/{collection}`, built on first use or when sources/settings change.

    Validates the sources before building (raises DataValidationError listing every problem);
    the validation stamp in `cache_dir` skips re-reading unchanged files. `cache_dir` defaults to
    `{root}/.cache`.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(root)
    fingerprint = _fingerprint_or_raise(root, collection)
    key = cache_key(fingerprint)
    final = cache_dir / f"{collection}-{key}"
    with cache_lock(cache_dir, collection):
        cache = _load_if_valid(final, key)
        if cache is not None:
            return cache
        report = validate_collection(root, collection, stamp_dir=cache_dir)
        report.fingerprint = fingerprint
        tmp = temp_sibling(final)
        tmp.mkdir(parents=True)
        try:
            _write_cache(tmp, Collection(root, collection), report, fingerprint, chunk)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _remove_leftovers(cache_dir, collection, final)
        return FeatureCache(final)
