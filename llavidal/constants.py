"""Token names, placeholders and token layouts of LLAVIDAL (docs/design.md#artifacts, docs/design.md#model).

Everything that names a token lives here so that prompt building, the model splice and the checkpoint
loaders agree on one table.
"""
from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = -100

# The three tokens LLaVA added after LLaMA's 32000 (ids 32000-32002 in the real base folder).
LLAVA_TOKENS = ("<im_patch>", "<im_start>", "<im_end>")


@dataclass(frozen=True)
class Modality:
    """One input modality: everything the package needs to know about it, in one entry of :data:`MODALITIES`.

    Tokens and text: its ``placeholder`` in conversation text, the ``patch_token`` (one per feature row) and the
    ``start_token`` / ``end_token`` around a span, the optional ``string_prefix`` before it. Model: the
    ``projector`` attribute on the inner model (the original state-dict names for the first three) and the config
    attribute ``dim_attr`` that holds the feature width (``default_dim`` when a config lacks it). Features:
    ``default_rows`` rows per sample in published files (``rows_attr`` names the config attribute), and ``group``
    rows per item for grouped features (objects: ``[n, 8, D]``; None: ``[N, D]``). ``init_from_base``: the
    projector starts from the base folder's ``mm_projector`` (video) instead of normal(0, 0.02). ``pool_attr``: the
    config attribute that, when set, holds a grid ``[t, h, w]`` to which per-frame patch-token features ``[T, P, D]``
    are pooled (PLLaVA-style, :mod:`llavidal.video.pool`; ``{pool_attr}_frames`` holds the frames a video keeps);
    None: the modality always reads ``[N, D]`` rows.

    Flags follow from the name: ``--{name}_folder`` and ``--{name}_mask_prob`` for training, ``--{name}`` for a
    question, ``--{name}-dir`` for a benchmark's feature folder; a training record's ``{name}`` key names its file.
    """

    name: str
    placeholder: str  # text placeholder in conversations, e.g. "<video>"
    patch_token: str  # one per feature row
    start_token: str
    end_token: str
    string_prefix: str  # optional text before the span (use_modality_string_prefix)
    projector: str  # attribute name on the inner model (keeps the original state-dict keys)
    dim_attr: str  # config attribute holding the feature width
    default_dim: int = 1024
    default_rows: int = 1
    rows_attr: str | None = None  # config attribute holding the default rows per sample
    group: int | None = None  # rows per item of grouped features ([n, group, D]), e.g. 8 frames per object
    init_from_base: bool = False
    pool_attr: str | None = None  # config attribute of a pooling grid for per-frame features (video: video_pool)

    def rows_per_sample(self, config) -> int:
        from .video.pool import frame_pooling

        pooling = frame_pooling(self, config)
        if pooling is not None:
            return pooling.grid.tokens
        return int(getattr(config, self.rows_attr, self.default_rows)) if self.rows_attr else self.default_rows

    def dim(self, config) -> int:
        return int(getattr(config, self.dim_attr, self.default_dim))

    def group_size(self, config) -> int | None:
        """Rows per item of grouped features (the object frames, from the config), or None."""
        return None if self.group is None else int(getattr(config, "object_frames", self.group))

    @property
    def tokens(self) -> tuple[str, str, str]:
        return (self.patch_token, self.start_token, self.end_token)


VIDEO = Modality("video", "<video>", "<vid_patch>", "<vid_start>", "<vid_end>", " video: ",
                 "mm_projector", "mm_hidden_size", default_dim=1024, default_rows=356, rows_attr="video_token_len",
                 init_from_base=True, pool_attr="video_pool")
OBJECT = Modality("object", "<object>", "<object_patch>", "<object_start>", "<object_end>", " object: ",
                  "mm_projector_forobject", "object_hidden_size", default_dim=512, default_rows=8, group=8)
POSE = Modality("pose", "<human_pose>", "<pose_patch>", "<pose_start>", "<pose_end>", " pose: ",
                "mm_projector_forpose", "pose_hidden_size", default_dim=216, default_rows=256,
                rows_attr="pose_token_len")

#: the registry, in canonical span order; :func:`register_modality` adds to it (the same dict everywhere)
MODALITIES: dict[str, Modality] = {m.name: m for m in (VIDEO, OBJECT, POSE)}
PUBLISHED_MODALITIES = ("video", "object", "pose")  # the modalities of the released files, in canonical order

# Token layouts of projector files: the names of the tokens that follow the base vocabulary
# (LLaMA + the 3 LLaVA tokens), in id order. Rows are always mapped by these names.
LAYOUT_CURRENT = (
    "<vid_patch>", "<object_patch>", "<pose_patch>",
    "<vid_start>", "<vid_end>", "<object_start>", "<object_end>", "<pose_start>", "<pose_end>",
)
LAYOUT_2024 = (
    "<vid_patch>", "<object_patch>",
    "<vid_start>", "<vid_end>", "<object_start>", "<object_end>",
)
LAYOUT_VIDEOCHATGPT = ("<vid_patch>", "<vid_start>", "<vid_end>")

TOKEN_LAYOUTS: dict[str, tuple[str, ...]] = {
    "current": LAYOUT_CURRENT,
    "2024": LAYOUT_2024,
    "videochatgpt": LAYOUT_VIDEOCHATGPT,
}


def modality_names() -> tuple[str, ...]:
    """Every registered modality, in canonical span order (the published three, then registered ones)."""
    return tuple(MODALITIES)


def register_modality(m: Modality) -> Modality:
    """Add a modality (depth, audio, gaze ...) to the registry: prompts, the splice, checkpoints, data, training and
    inference flags and evaluation folders pick it up from here. Register before building models or parsers."""
    taken = {t for x in MODALITIES.values() for t in (*x.tokens, x.placeholder)} | set(LLAVA_TOKENS)
    clash = [t for t in (*m.tokens, m.placeholder) if t in taken]
    if m.name in MODALITIES or clash:
        raise ValueError(f"modality {m.name!r} clashes with the registry: "
                         f"{'name taken' if m.name in MODALITIES else 'tokens ' + ', '.join(clash)}")
    if any(getattr(x, "projector") == m.projector for x in MODALITIES.values()):
        raise ValueError(f"projector attribute {m.projector!r} is taken")
    MODALITIES[m.name] = m
    return m


def added_tokens() -> tuple[str, ...]:
    """Every modality token our tokenizers carry: the current LLAVIDAL layout, then the tokens of registered
    modalities beyond the published three."""
    extra = [t for m in MODALITIES.values() if m.name not in PUBLISHED_MODALITIES for t in m.tokens]
    return LAYOUT_CURRENT + tuple(extra)


def start_end_tokens() -> tuple[str, ...]:
    return tuple(t for m in MODALITIES.values() for t in (m.start_token, m.end_token))


# Published feature shapes (rows per sample are free; these are the defaults of the released files).
DEFAULT_VIDEO_TOKENS = 356  # 100 temporal + 256 spatial
DEFAULT_POSE_TOKENS = 256
OBJECT_FRAMES = 8  # rows per object

# The tokens of the published layout, in id order (a registered modality's tokens follow them: added_tokens()).
ADDED_TOKENS = LAYOUT_CURRENT

# Backbone families `llavidal make-tiny --family` writes: llama is LLaVA-Lightening (the published model's layout);
# the others are llavidal.model.tiny_backbones (docs/design.md#backbones).
TINY_FAMILIES = ("llama", "llama3", "qwen2")
