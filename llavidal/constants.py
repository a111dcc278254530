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
    """One input modality: its placeholder in conversation text, its tokens, and its projector."""

    name: str
    placeholder: str  # text placeholder in conversations, e.g. "<video>"
    patch_token: str  # one per feature row
    start_token: str
    end_token: str
    string_prefix: str  # optional text before the span (use_modality_string_prefix)
    projector: str  # attribute name on the inner model (keeps the original state-dict keys)
    dim_attr: str  # config attribute holding the feature width


VIDEO = Modality("video", "<video>", "<vid_patch>", "<vid_start>", "<vid_end>", " video: ",
                 "mm_projector", "mm_hidden_size")
OBJECT = Modality("object", "<object>", "<object_patch>", "<object_start>", "<object_end>", " object: ",
                  "mm_projector_forobject", "object_hidden_size")
POSE = Modality("pose", "<human_pose>", "<pose_patch>", "<pose_start>", "<pose_end>", " pose: ",
                "mm_projector_forpose", "pose_hidden_size")

MODALITIES: dict[str, Modality] = {m.name: m for m in (VIDEO, OBJECT, POSE)}
MODALITY_ORDER = ("video", "object", "pose")  # canonical order of spans in a prompt

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

# Our tokenizer always carries every modality token, in the current layout's order.
ADDED_TOKENS = LAYOUT_CURRENT
START_END_TOKENS = tuple(t for m in MODALITIES.values() for t in (m.start_token, m.end_token))
PATCH_TOKENS = tuple(m.patch_token for m in MODALITIES.values())

# Published feature shapes (rows per sample are free; these are the defaults of the released files).
DEFAULT_VIDEO_TOKENS = 356  # 100 temporal + 256 spatial
DEFAULT_POSE_TOKENS = 256
OBJECT_FRAMES = 8  # rows per object
