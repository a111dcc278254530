"""Configuration of the LLAVIDAL causal LM: a LLaMA config plus the multimodal fields.

The multimodal fields are declared once, here; the configs of other backbones (:mod:`llavidal.model.backbones`)
take the same fields (:func:`multimodal_fields`) on top of their own backbone's config.
"""
from __future__ import annotations

import dataclasses
import inspect

from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig

from ..constants import DEFAULT_POSE_TOKENS, DEFAULT_VIDEO_TOKENS, OBJECT_FRAMES, added_tokens


class ModalityTokens:
    """Lookups of the added modality tokens, shared by every LLAVIDAL config (``modality_token_ids`` field)."""

    def token_id(self, name: str) -> int:
        """Id of an added modality token, e.g. ``config.token_id("<vid_start>")``."""
        ids = self.modality_token_ids or {}
        if name not in ids:
            raise KeyError(
                f"token {name!r} has no id in config.modality_token_ids (known: {sorted(ids)}); "
                f"the model folder was not built by llavidal or its config is incomplete"
            )
        return int(ids[name])

    def has_modality_tokens(self) -> bool:
        return bool(self.modality_token_ids) and all(t in self.modality_token_ids for t in added_tokens())


@strict
class LlavidalConfig(ModalityTokens, LlamaConfig):
    """LLaMA config + one projector per modality.

    Field names of the LLaVA base folder are kept (``mm_hidden_size``, ``mm_vision_tower``,
    ``mm_vision_select_layer``, ``use_mm_proj``) so a Lightening config.json maps onto this one as is.
    ``modality_token_ids`` maps every added token name (``<vid_patch>`` ...) to its id in the vocabulary; the
    splice locates spans through it, never through positions.
    """

    model_type = "llavidal"

    mm_hidden_size: int = 1024  # video feature width (CLIP ViT-L/14)
    object_hidden_size: int = 512  # object feature width (CLIP crops)
    pose_hidden_size: int = 216  # pose feature width (skeleton encoder)
    mm_use_vid_start_end: bool = True  # wrap each span in <x_start> ... <x_end>
    use_modality_string_prefix: bool = False  # " video: " before each span
    video_token_len: int = DEFAULT_VIDEO_TOKENS  # rows per video feature file (published: 356)
    pose_token_len: int = DEFAULT_POSE_TOKENS  # rows per pose feature file (published: 256; SKI-LVLM: 75)
    object_frames: int = OBJECT_FRAMES  # rows per object (published: 8)
    # the kind of video features the video projector reads (docs/design.md#pooled-video): None = spatio-temporal
    # rows [N, D] (published: [356, 1024]); [t, h, w] = per-frame patch tokens [T, P, D] of video_pool_frames frames
    # per video, adaptively average-pooled to that grid (t*h*w rows)
    video_pool: list | None = None
    video_pool_frames: int = 16
    # the video representation the video projector reads (llavidal.representation; docs/design.md#two-token-video):
    # None = spatio-temporal rows [N, D] (published: [356, 1024]); {"kind": "two_token", "patches": P, "fps": F} =
    # per-frame features [T, P, D] at F fps, two tokens per frame (LLaMA-VID style, for long videos)
    video_representation: dict | None = None
    modality_token_ids: dict | None = None
    mm_vision_tower: str | None = "openai/clip-vit-large-patch14"
    mm_vision_select_layer: int = -2
    use_mm_proj: bool = True
    # the ids the weights were trained on at span boundaries: "clean" (ours) or "original" (the release's, which the
    # published projector files were trained with; docs/design.md#template)
    tokenization: str = "clean"
    # modalities whose projector was trained (None: not recorded, e.g. a bare base folder)
    trained_modalities: list | None = None


def multimodal_fields() -> dict[str, tuple[str, object]]:
    """``{name: (annotation, default)}`` of the multimodal fields :class:`LlavidalConfig` adds to its LLaMA config."""
    own = inspect.get_annotations(LlavidalConfig)
    fields = {f.name: f for f in dataclasses.fields(LlavidalConfig)}
    return {n: (own[n], fields[n].default) for n in own}
