"""The release layout of one collection, `{root}/{collection}/`, and its caption files.

```
{root}/{collection}/TextData/{collection}train.caption.txt   lines "cap_id caption"
{root}/{collection}/TextData/{collection}val.caption.txt
{root}/{collection}/FeatureData/{collection}_clip_L14.h5      video key -> [n_frames, Dv]
{root}/{collection}/TextData/{collection}_clip_L14.h5         cap_id    -> [n_tokens, Dt]
```
QVHighlights keeps its SlowFast+CLIP names (2816-d video, 512-d text). ActivityNet caption ids
start with `v_` and its feature keys do not. Optional `*.jsonl` files may sit beside them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from data_tools.errors import DataValidationError, Problem

SPLITS = ("train", "val")

# collection -> (video width, text width) of the released features
KNOWN_WIDTHS = {
    "tvr": (768, 768),
    "activitynet": (768, 768),
    "charades": (768, 768),
    "qvhighlight": (2816, 512),
}
QVH_VIDEO_FILE = "qvhighlight_slowfast_clip.h5"
QVH_TEXT_FILE = "qvhighlight_slowfast_clip_text.h5"


@dataclass(frozen=True)
class Caption:
    """One caption line: `cap_id`, its video (the part before the first `#`), text, line number."""

    cap_id: str
    video_id: str
    text: str
    line: int = 0


@dataclass(frozen=True)
class Collection:
    """Paths of one collection in the release layout."""

    root: Path
    name: str

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def dir(self) -> Path:
        return self.root / self.name

    @property
    def text_dir(self) -> Path:
        return self.dir / "TextData"

    @property
    def feature_dir(self) -> Path:
        return self.dir / "FeatureData"

    def caption_file(self, split: str) -> Path:
        """The caption file of `split` ("train" or "val"); raises ValueError for another split."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return self.text_dir / f"{self.name}{split}.caption.txt"

    @property
    def video_h5(self) -> Path:
        if self.name == "qvhighlight":
            return self.feature_dir / QVH_VIDEO_FILE
        return self.feature_dir / f"{self.name}_clip_L14.h5"

    @property
    def text_h5(self) -> Path:
        if self.name == "qvhighlight":
            return self.text_dir / QVH_TEXT_FILE
        return self.text_dir / f"{self.name}_clip_L14.h5"

    def source_files(self) -> list[Path]:
        """The four files a collection is made of (caption files first)."""
        return [self.caption_file(s) for s in SPLITS] + [self.video_h5, self.text_h5]

    def optional_files(self) -> list[Path]:
        """Optional jsonl files present beside the required ones (accepted, not read)."""
        return sorted(p for d in (self.text_dir, self.dir) if d.is_dir() for p in d.glob("*.jsonl"))

    def known_widths(self) -> tuple[int, int] | None:
        """(video width, text width) of a released collection; None for other names."""
        return KNOWN_WIDTHS.get(self.name)

    def relative(self, path: Path) -> str:
        """`path` relative to the data root, for error messages."""
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(path)


def video_id_of(cap_id: str) -> str:
    """The video id of a caption id: the part before the first `#`."""
    return cap_id.split("#", 1)[0]


def feature_key(collection: str, video_id: str) -> str:
    """The key of `video_id` in the video feature file (ActivityNet drops the `v_` prefix)."""
    if collection == "activitynet" and video_id.startswith("v_"):
        return video_id[2:]
    return video_id


def parse_caption_line(line: str, number: int) -> Caption | None:
    """Parse `cap_id caption`; None for a blank line. The caption text may be empty."""
    stripped = line.strip()
    if not stripped:
        return None
    parts = stripped.split(None, 1)
    text = parts[1] if len(parts) > 1 else ""
    return Caption(parts[0], video_id_of(parts[0]), text, number)


def read_captions(path: Path | str) -> list[Caption]:
    """Read a caption file into `Caption`s in file order.

    Raises DataValidationError naming the file when it is missing, unreadable or not UTF-8.
    Duplicate ids are not checked here (see `data_tools.validate`).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataValidationError([Problem(str(path), "-", "caption file not found")]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataValidationError([Problem(str(path), "-", f"unreadable caption file ({err})")]) from err
    captions = (parse_caption_line(line, n) for n, line in enumerate(text.splitlines(), start=1))
    return [c for c in captions if c is not None]
