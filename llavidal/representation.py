"""Video representations: what a model's video projector reads (docs/design.md#two-token-video).

A model reads ONE representation of video, recorded in its config (``video_representation``) and in the metadata
of its adapter files:

* ``spatiotemporal`` (the default; ``video_representation`` None): the Video-ChatGPT rows ``[N, D]`` (published
  ``[356, 1024]``: 100 frames sampled uniformly, 100 temporal + 256 spatial rows), one ``<vid_patch>`` per row;
* ``two_token`` (LLaMA-VID style, for long videos): frames sampled at ``fps`` (1 by default) for a video of any
  length, each kept as ``patches`` pooled patch features, so a file is ``[T, patches, D]``. Each frame becomes two
  ``<vid_patch>`` positions: a **content** token (the frame's mean feature through the video projector) and a
  **context** token (the question's text embedding attends over the frame's patches; the attended feature goes
  through its own projector; :mod:`llavidal.model.two_token`). An hour at 1 fps is 7,200 tokens.

Feeding a model features of the other representation, training on a mixture, starting from or merging weights of
another representation are refused with a :class:`RepresentationError` or a checkpoint error that say which
representation was found and which was expected. This module has no torch dependency: it is read by feature
validation, prompts, the data pipeline and the engine alike.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from .features import FeatureKindError

SPATIOTEMPORAL = "spatiotemporal"
TWO_TOKEN = "two_token"
REPRESENTATIONS = (SPATIOTEMPORAL, TWO_TOKEN)
DEFAULT_GRID = 4  # the 16 x 16 CLIP patch grid average-pooled to 4 x 4: 16 patch features per frame
DEFAULT_FPS = 1.0
TOKENS_PER_FRAME = 2  # content + context
METADATA_KEY = "video_representation"  # config attribute and adapter metadata key


class RepresentationError(FeatureKindError):
    """Features or weights of another video representation than the model reads; never skipped or zeroed like a
    missing file, because one model reads one representation (a kind of feature error, as rows given to a pooled
    model are)."""


@dataclass(frozen=True)
class TwoTokenSpec:
    """The two-token representation's feature layout: ``[T, patches, D]`` with frames sampled at ``fps``."""

    patches: int = DEFAULT_GRID * DEFAULT_GRID  # pooled patch features kept per frame
    fps: float = DEFAULT_FPS  # frames per second of video

    def __post_init__(self):
        if self.patches < 1:
            raise ValueError(f"two_token: patches per frame must be >= 1, got {self.patches}")
        if not self.fps > 0:
            raise ValueError(f"two_token: fps must be > 0, got {self.fps}")

    @property
    def grid(self) -> int:
        """Side of the square grid the patch features were pooled to (``patches`` must be a square)."""
        side = int(round(self.patches ** 0.5))
        if side * side != self.patches:
            raise ValueError(f"two_token: {self.patches} patches per frame is not a square grid")
        return side

    def to_config(self) -> dict:
        return {"kind": TWO_TOKEN, "patches": int(self.patches), "fps": float(self.fps)}

    def describe(self) -> str:
        return (f"two-token per-frame features [T, {self.patches}, D] sampled at {self.fps:g} fps "
                f"({TOKENS_PER_FRAME} tokens per frame)")


def describe(spec: TwoTokenSpec | None, width: int | str = "D") -> str:
    """A representation in words, for error messages."""
    if spec is None:
        return f"spatio-temporal rows [N, {width}] (published: [356, {width}])"
    return spec.describe()


def two_token_spec(config) -> TwoTokenSpec | None:
    """The two-token layout a config records, or None for the default spatio-temporal rows."""
    value = getattr(config, METADATA_KEY, None)
    if value in (None, SPATIOTEMPORAL):
        return None
    if getattr(config, "video_pool", None):
        raise ValueError(f"config: video_pool {config.video_pool} (pooled per-frame tokens) and "
                         f"{METADATA_KEY} {value!r} (two tokens per frame) are two different video representations; "
                         "a model reads one of them")
    if isinstance(value, TwoTokenSpec):
        return value
    if not isinstance(value, dict) or value.get("kind") != TWO_TOKEN:
        raise ValueError(f"config.{METADATA_KEY} = {value!r}: expected null (spatio-temporal rows) or "
                         f"{{'kind': '{TWO_TOKEN}', 'patches': P, 'fps': F}}")
    return TwoTokenSpec(int(value.get("patches", DEFAULT_GRID ** 2)), float(value.get("fps", DEFAULT_FPS)))


def set_representation(config, spec: TwoTokenSpec | None) -> None:
    setattr(config, METADATA_KEY, None if spec is None else spec.to_config())


def to_metadata(spec: TwoTokenSpec | None) -> str:
    """The adapter-metadata value of a representation (safetensors metadata holds strings)."""
    return SPATIOTEMPORAL if spec is None else json.dumps(spec.to_config(), sort_keys=True)


def from_metadata(meta: dict[str, str], source: str = "adapter") -> TwoTokenSpec | None:
    """The representation an adapter file's metadata records; files without it (the release's ``.bin`` files,
    adapters written before it was recorded) were trained on spatio-temporal rows."""
    value = (meta or {}).get(METADATA_KEY, SPATIOTEMPORAL)
    if value in ("", SPATIOTEMPORAL):
        return None
    try:
        parsed = json.loads(value)
        return TwoTokenSpec(int(parsed["patches"]), float(parsed["fps"]))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{source}: metadata {METADATA_KEY}={value!r} is not a video representation ({e})") from None


def parse_representation(name: str | None, grid: int | None = None, fps: float | None = None,
                         flag: str = "--video_representation") -> TwoTokenSpec | None | str:
    """The spec a command line asks for: ``two_token`` (with ``grid`` / ``fps``), ``spatiotemporal`` (None), or
    the string ``"keep"`` when nothing was asked (the starting weights' representation stays)."""
    if name is None:
        if grid is not None or fps is not None:
            raise ValueError(f"--video_grid / --video_fps describe the two-token representation: give {flag} "
                             f"{TWO_TOKEN} too")
        return "keep"
    if name not in REPRESENTATIONS:
        raise ValueError(f"{flag} {name!r}: expected one of {', '.join(REPRESENTATIONS)}")
    if name == SPATIOTEMPORAL:
        return None
    g = DEFAULT_GRID if grid is None else int(grid)
    if g < 1:
        raise ValueError(f"--video_grid must be >= 1, got {g}")
    return TwoTokenSpec(g * g, DEFAULT_FPS if fps is None else float(fps))


# ---------------------------------------------------------------- features and tokens
def check_video_array(arr: np.ndarray, config, width: int, source: str) -> tuple[str, bool] | None:
    """Shape check of a video feature array against the model's representation.

    Returns None when the default check applies (a spatio-temporal model given rows), ``(expected shape in words,
    whether it fits)`` for a two-token model given per-frame features, and raises :class:`RepresentationError` when
    the array is of the other representation."""
    spec = two_token_spec(config)
    if spec is None:
        if arr.ndim == 3 and arr.shape[-1] == width:
            raise RepresentationError(
                f"{source}: video features have shape {list(arr.shape)}: per-frame patch tokens (pooled per-frame "
                f"tokens, or two-token features), but this model reads {describe(None, width)}; one model reads one "
                "kind of video features. Use a model trained on them (--video_pool T,H,W or --video_representation "
                "two_token), or extract rows with `llavidal extract-video`")
        return None
    if arr.ndim == 2 and arr.shape[-1] == width:
        raise RepresentationError(
            f"{source}: video features have shape {list(arr.shape)}: spatio-temporal rows, but this model reads "
            f"{spec.describe()}; one model reads one video representation. Extract them with `llavidal "
            f"extract-long-video --grid {spec.grid} --fps {spec.fps:g}`")
    want = f"[T, {spec.patches}, {width}] (T frames at {spec.fps:g} fps x {spec.patches} patch features)"
    return want, arr.ndim == 3 and arr.shape[0] >= 1 and arr.shape[1] == spec.patches and arr.shape[2] == width


def span_tokens(arr, modality: str, config) -> int:
    """Patch tokens a validated feature array occupies in a prompt: one per row (objects: n x frames), two per
    frame for the video of a two-token model."""
    shape = arr.shape
    if modality == "video" and two_token_spec(config) is not None:
        return TOKENS_PER_FRAME * int(shape[0])
    return int(np.prod(shape[:-1]))


def span_rows(arrays: dict, config) -> dict[str, int | None]:
    """``{modality: patch tokens or None}`` for the arrays of one sample (what prompts expand spans to)."""
    return {m: (span_tokens(a, m, config) if a is not None else None) for m, a in arrays.items()}


def tokens_for_rows(config, modality: str, n_rows: int) -> int:
    """Patch tokens that ``n_rows`` packed feature rows ``[R, D]`` of a batch fill; raises ValueError when the rows
    cannot be whole two-token frames."""
    spec = two_token_spec(config) if modality == "video" else None
    if spec is None:
        return n_rows
    if n_rows % spec.patches:
        raise ValueError(f"video: {n_rows} feature rows are not whole frames of {spec.patches} patch features "
                         f"({spec.describe()})")
    return TOKENS_PER_FRAME * (n_rows // spec.patches)


__all__ = ["DEFAULT_FPS", "DEFAULT_GRID", "METADATA_KEY", "REPRESENTATIONS", "RepresentationError", "SPATIOTEMPORAL",
           "TOKENS_PER_FRAME", "TWO_TOKEN", "TwoTokenSpec", "check_video_array", "describe", "from_metadata",
           "parse_representation", "set_representation", "span_rows", "span_tokens", "to_metadata",
           "tokens_for_rows", "two_token_spec"]
