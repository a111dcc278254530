"""Command-line arguments of training: every flag of the published recipe (docs/design.md#recipe) on top of
transformers' TrainingArguments, plus the choices this implementation adds."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import torch
import transformers

from ..constants import MODALITIES

logger = logging.getLogger(__name__)

# --version of the original: the conversation template used for training ("chat": the tokenizer's own, for other
# backbones; no --version: the template the model was built for, docs/design.md#backbones)
VERSION_TEMPLATES = {"v1": "vicuna_v1_1", "vicuna_v1_1": "vicuna_v1_1", "llavidal_v1": "llavidal_v1", "chat": "chat"}


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default=None, metadata={
        "help": "base folder (LLaVA-Lightening layout, or another backbone's: LLaMA-3, Qwen2.5 ...) or ours"})
    version: str | None = field(default=None, metadata={
        "help": "conversation template: v1 (= vicuna_v1_1), llavidal_v1 or chat (the tokenizer's chat template); "
                "default: the model's own (vicuna_v1_1 for LLaMA-Lightening, chat for other backbones)"})
    tune_mm_mlp_adapter: bool = field(default=False, metadata={"help": "projector-only training (the published mode)"})
    pretrain_mm_mlp_adapter: str | None = field(default=None, metadata={"help": "projector/adapter file to start from"})
    mm_use_vid_start_end: bool = field(default=False, metadata={"help": "wrap each span in <x_start> ... <x_end>"})
    use_modality_string_prefix: bool = field(default=False, metadata={"help": "' video: ' etc. before each span"})
    freeze_backbone: bool = field(default=False, metadata={"help": "accepted for compatibility (see training_mode)"})
    training_mode: str | None = field(default=None, metadata={
        "help": "projector | lora | full (default: projector with --tune_mm_mlp_adapter, else full)"})
    lora_r: int = field(default=16)
    lora_alpha: int = field(default=32)
    lora_dropout: float = field(default=0.05)
    lora_target_modules: str = field(default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", metadata={
        "help": "linear layers that get LoRA adapters (names the backbone lacks are left out, and reported)"})
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa | eager | flash_attention_2"})
    system_prompt: str | None = field(default=None, metadata={"help": "override the template's system prompt"})
    tokenization: str | None = field(default=None, metadata={
        "help": "clean | original: the ids at span boundaries (default: what the starting weights were trained on; "
                "clean for a bare base folder, original when starting from the release's projector files)"})
    video_representation: str | None = field(default=None, metadata={
        "help": "spatiotemporal (the published [356, D] rows) | two_token (LLaMA-VID style for long videos: per-frame "
                "features [T, P, D] from `llavidal extract-long-video`, a content and a context token per frame; "
                "docs/design.md#two-token-video). Default: what the starting weights read"})
    video_grid: int | None = field(default=None, metadata={
        "help": "two_token: side of the pooled patch grid per frame (default 4: 16 patch features per frame)"})
    video_fps: float | None = field(default=None, metadata={
        "help": "two_token: frames per second the features sample (default 1)"})
    save_full_model: bool = field(default=False, metadata={
        "help": "projector mode: also write the full model folder (else the output folder holds config, tokenizer "
                "and adapter, and points at the base folder)"})

    def mode(self) -> str:
        mode = self.training_mode or ("projector" if self.tune_mm_mlp_adapter else "full")
        if mode not in ("projector", "lora", "full"):
            raise ValueError(f"--training_mode {mode!r}; expected projector, lora or full")
        if self.tune_mm_mlp_adapter and mode != "projector":
            raise ValueError(f"--tune_mm_mlp_adapter True asks for projector-only training, but --training_mode {mode}")
        return mode

    def template(self) -> str | None:
        """The template of ``--version``; None when not given (the model's own: prompting.model_template)."""
        if self.version is None:
            return None
        if self.version not in VERSION_TEMPLATES:
            raise ValueError(f"--version {self.version!r} is not supported; use one of {sorted(VERSION_TEMPLATES)}")
        return VERSION_TEMPLATES[self.version]


@dataclass
class DataArguments:
    data_path: str = field(default=None, metadata={"help": "training JSON (current or {video_id,q,a} format)"})
    video_folder: str | None = field(default=None, metadata={"help": "video features (active iff given)"})
    object_folder: str | None = field(default=None, metadata={"help": "object features (active iff given)"})
    pose_folder: str | None = field(default=None, metadata={"help": "pose features (active iff given)"})
    video_mask_prob: float = field(default=0.0)
    object_mask_prob: float = field(default=0.0)
    pose_mask_prob: float = field(default=0.0)
    missing_features: str = field(default="error", metadata={"help": "error | skip | zeros (always counted)"})
    lazy_preprocess: bool = field(default=True, metadata={"help": "accepted; data is always read lazily"})
    is_multimodal: bool = field(default=True, metadata={"help": "accepted for compatibility"})
    sep_video_conv_front: bool = field(default=False, metadata={"help": "accepted for compatibility"})
    video_token_len: int = field(default=0, metadata={"help": "accepted; the number of rows follows each file"})
    frame_aspect_ratio: str = field(default="square", metadata={"help": "accepted for compatibility"})
    video_pool: str | None = field(default=None, metadata={
        "help": "T,H,W: the video features are per-frame patch tokens [T, P, D] (`llavidal extract-video "
                "--keep-frames`), pooled adaptively to this grid (T*H*W tokens per video; docs/design.md#pooled-video). "
                "Default: what the starting weights read (the spatio-temporal [356, D] rows for a base folder)"})
    video_pool_frames: int | None = field(default=None, metadata={
        "help": "frames each video keeps before pooling (default 16; `extract-video --keep-frames-count`)"})

    def folders(self) -> dict[str, str | None]:
        return {m: getattr(self, f"{m}_folder", None) for m in MODALITIES}

    def poolings(self) -> dict:
        """``{modality: FramePooling}`` asked for with ``--{pool_attr} T,H,W`` (modalities not asked for are left out)."""
        from ..video.pool import DEFAULT_KEPT_FRAMES, FramePooling, PoolGrid

        out = {}
        for name, m in MODALITIES.items():
            spec = getattr(self, m.pool_attr, None) if m.pool_attr else None
            if spec:
                frames = getattr(self, f"{m.pool_attr}_frames", None) or DEFAULT_KEPT_FRAMES
                if frames < 1:
                    raise ValueError(f"--{m.pool_attr}_frames must be >= 1, got {frames}")
                out[name] = FramePooling(PoolGrid.parse(spec, f"--{m.pool_attr}"), int(frames))
            elif m.pool_attr and getattr(self, f"{m.pool_attr}_frames", None):
                raise ValueError(f"--{m.pool_attr}_frames needs --{m.pool_attr} T,H,W")
        return out

    def mask_probs(self) -> dict[str, float]:
        return {m: float(getattr(self, f"{m}_mask_prob", 0.0)) for m in MODALITIES}


def data_arguments_class() -> type[DataArguments]:
    """:class:`DataArguments` plus ``--{name}_folder`` / ``--{name}_mask_prob`` for every registered modality
    beyond the published three (the class itself when there is none)."""
    extra = [m for m in MODALITIES if not hasattr(DataArguments, f"{m}_folder")]
    if not extra:
        return DataArguments
    fields = []
    for m in extra:
        fields += [(f"{m}_folder", str | None, field(default=None, metadata={"help": f"{m} features (active iff given)"})),
                   (f"{m}_mask_prob", float, field(default=0.0))]
        attr = MODALITIES[m].pool_attr
        if attr and not hasattr(DataArguments, attr):
            fields += [(attr, str | None, field(default=None, metadata={"help": f"T,H,W pooling grid of {m} features"})),
                       (f"{attr}_frames", int | None, field(default=None))]
    return dataclasses.make_dataclass("DataArguments", fields, bases=(DataArguments,))


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    model_max_length: int = field(default=2048, metadata={"help": "longer samples are dropped (and counted)"})
    evaluation_strategy: str | None = field(default=None, metadata={"help": "old name of --eval_strategy"})
    warmup_ratio: float | None = field(default=None, metadata={
        "help": "fraction of steps for warmup (the published recipe's flag; same as --warmup_steps < 1)"})
    cache_dir: str | None = field(default=None)
    freeze_mm_mlp_adapter: bool = field(default=False, metadata={"help": "accepted for compatibility"})
    force_fsdp: bool = field(default=False, metadata={"help": "accepted for compatibility"})
    auto_resume: bool = field(default=True, metadata={
        "help": "resume from the newest checkpoint in output_dir when there is one"})
    remove_unused_columns: bool = field(default=False)
    optim: str = field(default="adamw_torch")
    # a bar per run unless asked otherwise (transformers would derive it from its own log level, which the llavidal
    # command keeps at "error" to hide library chatter)
    disable_tqdm: bool | None = field(default=False, metadata={"help": "no progress bar (the log lines instead)"})

    def __post_init__(self):
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
        if self.warmup_ratio is not None:
            if not 0.0 <= self.warmup_ratio < 1.0:
                raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
            self.warmup_steps = self.warmup_ratio
        if self.tf32 and not (torch.cuda.is_available() and torch.backends.cuda.matmul.is_available()):
            logger.warning("--tf32 True ignored: no CUDA GPU with TF32 here")
            self.tf32 = None
        # the published --gradient_checkpointing is transformers' activation_checkpointing now (same behaviour)
        for old, new in (("gradient_checkpointing", "activation_checkpointing"),
                         ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
            if hasattr(self, new) and getattr(self, new) is None and getattr(self, old, None) is not None:
                setattr(self, new, getattr(self, old))
                setattr(self, old, None)
        if self.bf16 and not torch.cuda.is_available():
            logger.warning("--bf16 True on CPU: training runs in bf16 autocast on the CPU (slow); use fp32 here")
        super().__post_init__()


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    parser = transformers.HfArgumentParser((ModelArguments, data_arguments_class(), TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if model_args.model_name_or_path is None:
        parser.error("--model_name_or_path is required")
    if data_args.data_path is None:
        parser.error("--data_path is required")
    if data_args.missing_features not in ("error", "skip", "zeros"):
        parser.error(f"--missing_features {data_args.missing_features!r}: expected error, skip or zeros")
    return model_args, data_args, training_args


__all__ = ["DataArguments", "ModelArguments", "TrainingArguments", "data_arguments_class", "parse_args"]
