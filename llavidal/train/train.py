"""Training LLAVIDAL with transformers' Trainer (DDP/FSDP/DeepSpeed through TrainingArguments and torchrun).

``python llavidal/train/train_mem.py <flags of the published recipe>`` and ``llavidal train <flags>`` both end in
:func:`train`. Three modes: ``projector`` (``--tune_mm_mlp_adapter True``: projectors of the active modalities and
their start/end rows), ``lora`` (peft LoRA on the LLM + the same), ``full``.

Outputs in ``--output_dir``: ``checkpoint-N/`` folders with everything needed to resume (trainable weights,
optimizer, scheduler, RNG, data position), and at the end a loadable model folder, ``adapter.safetensors``
(projectors + token rows by name) and, for the published LLaMA-Lightening backbone, ``mm_projector.bin`` in the
original key layout. Only rank 0 writes.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import PrinterCallback, ProgressCallback, TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..constants import MODALITIES
from ..data import ADLXDataset, DataCollator, DataIssueLog, read_records
from ..io_utils import atomic_write_json
from ..model import load_pretrained, load_projector
from ..model.adapters import export_legacy_projector, save_adapter
from ..model.backbones import LIGHTENING
from ..model.base import save_tokenizer
from ..model.checkpoint import ADAPTER_FOLDER_FILE, plain_state_dict, save_adapter_folder, save_pretrained
from ..prompting import check_template, check_tokenization
from ..representation import two_token_spec
from .arguments import DataArguments, ModelArguments, TrainingArguments, parse_args
from .modes import LoraSettings, set_trainable

logger = logging.getLogger(__name__)


# ==================================================================== model
def build_model(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments):
    """Load the base, apply the starting adapter, and set what is trainable for the chosen mode."""
    mode = model_args.mode()
    active = [m for m in MODALITIES if data_args.folders()[m]]
    if mode == "full":
        dtype = torch.float32  # master weights in fp32; --bf16/--fp16 run under autocast
    else:  # frozen LLM weights in the compute dtype, trainable parts in fp32
        dtype = torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32
    model, tokenizer = load_pretrained(model_args.model_name_or_path, device="cpu", dtype=dtype,
                                       attn_implementation=model_args.attn_implementation,
                                       init_seed=training_args.seed)
    tokenizer.model_max_length = training_args.model_max_length
    if model_args.pretrain_mm_mlp_adapter:
        load_projector(model, tokenizer, model_args.pretrain_mm_mlp_adapter)  # logs what it loaded
    apply_poolings(model.config, data_args.poolings(), active, model_args.pretrain_mm_mlp_adapter)
    apply_video_representation(model, model_args, active, training_args.seed)
    model.config.mm_use_vid_start_end = model_args.mm_use_vid_start_end
    model.config.use_modality_string_prefix = model_args.use_modality_string_prefix
    check_tokenization(model_args.tokenization)
    if model_args.template() is not None:
        check_template(model_args.template())
    model.config.tokenization = model_args.tokenization or model.config.tokenization
    model.config.trained_modalities = [m for m in MODALITIES
                                       if m in active or m in (model.config.trained_modalities or [])]
    model.config.use_cache = False
    if model_args.template() is not None and hasattr(model.config, "template"):  # other backbones record theirs
        model.config.template = model_args.template()

    lora = LoraSettings(model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout,
                        tuple(t.strip() for t in model_args.lora_target_modules.split(",") if t.strip()))
    model = set_trainable(model, mode, active, start_end=model_args.mm_use_vid_start_end, lora=lora)
    if training_args.gradient_checkpointing:  # non-reentrant: works with frozen inputs (projector mode)
        name = ("activation_checkpointing_kwargs" if hasattr(training_args, "activation_checkpointing_kwargs")
                else "gradient_checkpointing_kwargs")
        setattr(training_args, name, getattr(training_args, name) or {"use_reentrant": False})
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("mode %s, modalities %s: %d trainable parameters", mode, active, n_train)
    return model, tokenizer, active


def apply_poolings(config, asked: dict, active: list[str], start: str | None) -> None:
    """Record the feature kind asked for (``--video_pool``) in the model config, for the active modalities. Not
    asked: the kind the starting weights read stays. A projector already trained on another kind is refused: one
    model reads one kind of features (docs/design.md#pooled-video)."""
    from ..constants import MODALITIES as registry
    from ..video.pool import frame_pooling, set_frame_pooling

    for name, pooling in asked.items():
        m = registry[name]
        if name not in active:
            logger.warning("--%s is ignored: %s is not trained in this run (no --%s_folder)", m.pool_attr, name, name)
            continue
        current = frame_pooling(m, config)
        if name in (config.trained_modalities or []) and current != pooling:
            what = current.describe() if current is not None else f"{name} rows [N, D] (the spatio-temporal features)"
            raise ValueError(
                f"--{m.pool_attr} asks for {pooling.describe()}, but the starting {name} projector"
                f"{f' ({start})' if start else ''} was trained on {what}; one model reads one kind of {name} "
                f"features. Start from the base folder instead (no --pretrain_mm_mlp_adapter for {name}), or keep its "
                "kind")
        set_frame_pooling(m, config, pooling)
    for name in active:
        pooling = frame_pooling(registry[name], config)
        if pooling is not None:
            logger.info("%s features: %s", name, pooling.describe())
def apply_video_representation(model, model_args: ModelArguments, active: list[str], seed: int) -> None:
    """The video representation asked for (``--video_representation``), recorded in the config and, for two_token,
    with a context module (docs/design.md#two-token-video). Not asked: what the starting weights read stays. A
    video projector already trained on the other representation is refused: one model reads one representation."""
    from ..model.two_token import enable_two_token
    from ..representation import describe, parse_representation, set_representation

    asked = parse_representation(model_args.video_representation, model_args.video_grid, model_args.video_fps)
    current = two_token_spec(model.config)
    if asked != "keep":
        if "video" not in active:
            logger.warning("--video_representation is recorded, but video is not trained in this run (no "
                           "--video_folder)")
        if "video" in (model.config.trained_modalities or []) and asked != current:
            width = model.config.mm_hidden_size
            raise ValueError(
                f"--video_representation asks for {describe(asked, width)}, but the starting video projector"
                f"{f' ({model_args.pretrain_mm_mlp_adapter})' if model_args.pretrain_mm_mlp_adapter else ''} was "
                f"trained on {describe(current, width)}; one model reads one video representation. Start from a "
                "file without a trained video projector, or keep its representation")
        if asked is None:
            set_representation(model.config, None)
        else:
            enable_two_token(model, asked, seed)
    spec = two_token_spec(model.config)
    if spec is not None:
        if model_args.tokenization == "original" or (model_args.tokenization is None
                                                     and model.config.tokenization == "original"):
            raise ValueError("the two-token video representation needs tokenization 'clean' (it locates the question "
                             "through the tokenizer's offsets): pass --tokenization clean")
        logger.info("video features: %s", spec.describe())


def unwrap(model):
    """The LlavidalForCausalLM inside DDP/peft wrappers."""
    model = getattr(model, "module", model)
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


# ==================================================================== trainer
class EpochCallback(TrainerCallback):
    """Tells the dataset the epoch, so masking draws differ between epochs yet are reproducible on resume."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch or 0))


class StageProgress(ProgressCallback):
    """One bar per training run, named after its output folder, with the latest loss on the bar instead of a
    printed line per logging step; one summary line at the end. (``--verbose`` keeps the Trainer's own printing.)"""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # resumed runs start where they stopped
            self.training_bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.name,
                                     dynamic_ncols=True, delay=1.0)  # delay: nothing drawn for a run that fails
        self.current_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "loss" in logs and self.training_bar is not None:
            self.training_bar.set_postfix(loss=f"{float(logs['loss']):.4g}", refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        super().on_train_end(args, state, control, **kwargs)
        losses = [float(h["loss"]) for h in state.log_history if "loss" in h]
        if state.is_world_process_zero and losses:
            logger.info("%s: %d steps, loss %.4g -> %.4g", self.name, state.global_step, losses[0], losses[-1])


def use_stage_progress(trainer: transformers.Trainer, name: str) -> None:
    """Replace the Trainer's per-step printing with :class:`StageProgress` (unless ``--verbose`` or
    ``--disable_tqdm True``, which keep the Trainer's own)."""
    if os.environ.get("LLAVIDAL_VERBOSITY") == "verbose" or trainer.args.disable_tqdm:
        return
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(StageProgress(name))


class LlavidalTrainer(transformers.Trainer):
    """Trainer that saves what each mode needs (adapter-only checkpoints in projector mode) and reloads it."""

    def __init__(self, *args, mode: str, modalities: list[str], base_path: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.mode, self.modalities, self.base_path = mode, modalities, base_path

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Rank 0 writes. Under FSDP full_shard / ZeRO-3 the parameters of the module are shards: the Trainer then
        hands over ``state_dict``, the full weights it gathered (on every rank) through accelerate, and everything is
        written from that, never from the module."""
        output_dir = output_dir or self.args.output_dir
        if state_dict is not None:
            state_dict = full_tensors(state_dict)  # a collective: before the rank check
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        model = unwrap(self.model)
        plain = plain_state_dict(model, state_dict) if state_dict is not None else None
        if self.mode == "projector":
            save_adapter_folder(model, self.processing_class, output_dir, self.base_path, self.modalities, plain)
        else:
            if self.mode == "lora":  # peft adapter
                getattr(self.model, "module", self.model).save_pretrained(output_dir, state_dict=state_dict)
            else:
                super()._save(output_dir, state_dict=state_dict)
            save_adapter(model, self.processing_class, Path(output_dir) / ADAPTER_FOLDER_FILE, self.modalities, plain)
        if self.mode != "projector":  # the Trainer wrote the tokenizer: add its sentencepiece model
            save_tokenizer(self.processing_class, output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if self.mode == "full" or self.is_fsdp_enabled or self.is_deepspeed_enabled:
            # sharded runs resume from the Trainer's own sharded checkpoint files (each rank loads its shard)
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.mode == "lora":
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            peft_model = getattr(self.model, "module", self.model)
            set_peft_model_state_dict(peft_model, load_file(os.path.join(resume_from_checkpoint,
                                                                         "adapter_model.safetensors")))
        load_projector(unwrap(self.model), self.processing_class,
                       os.path.join(resume_from_checkpoint, ADAPTER_FOLDER_FILE))


# ==================================================================== entry point
def train(argv: list[str] | None = None) -> dict:
    """Parse the flags, train, write the outputs; returns a small summary (also written as train_summary.json)."""
    model_args, data_args, training_args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    transformers.set_seed(training_args.seed)
    mode = model_args.mode()
    out = Path(training_args.output_dir)
    finished = finished_summary(out) if training_args.auto_resume else None
    if finished is not None:  # a rerun of a finished run changes nothing (and never rewrites its summary)
        print(f"{out}: training already finished (train_summary.json, step {finished.get('global_step')}); nothing "
              "to do. Use another --output_dir, or --auto_resume False to train again from scratch")
        return finished
    model, tokenizer, active = build_model(model_args, data_args, training_args)

    records = read_records(data_args.data_path)
    issue_log = DataIssueLog(path=out / f"data_issues.rank{training_args.process_index}.jsonl")
    dataset = ADLXDataset(records, tokenizer, unwrap(model).config, data_args.folders(),
                          missing=data_args.missing_features, mask_probs=data_args.mask_probs(),
                          max_length=training_args.model_max_length, template=model_args.template(),
                          system=model_args.system_prompt, seed=training_args.seed, issue_log=issue_log,
                          tokenization=unwrap(model).config.tokenization)
    trainer = LlavidalTrainer(model=model, args=training_args, train_dataset=dataset,
                              data_collator=DataCollator(tokenizer.pad_token_id), processing_class=tokenizer,
                              callbacks=[EpochCallback(dataset)], mode=mode, modalities=active,
                              base_path=model_args.model_name_or_path)
    use_stage_progress(trainer, out.name)

    if training_args.fsdp and not trainer.is_fsdp_enabled:  # accelerate drops FSDP without a word on CPUs
        logger.warning("--fsdp %s was given but accelerate did not enable FSDP (it does so only on GPUs and other "
                       "accelerators): this run is plain data parallel, every rank holds the whole model",
                       training_args.fsdp)
    resume = training_args.resume_from_checkpoint
    if resume is None and training_args.auto_resume and out.is_dir():
        resume = last_complete_checkpoint(out)
        if resume:
            logger.info("resuming from %s", resume)
    if resume and checkpoint_reached_end(resume):
        # killed after its last checkpoint but before the final outputs: nothing left to train (the Trainer would
        # run one step past the end), so take the weights and state of that checkpoint as they are
        logger.info("%s already holds the last training step; writing the final outputs from it", resume)
        trainer._load_from_checkpoint(resume)
        trainer.state = TrainerState.load_from_json(os.path.join(resume, TRAINER_STATE_NAME))
    else:
        trainer.train(resume_from_checkpoint=resume)
    trainer.save_state()

    final = unwrap(trainer.model)
    state = gathered_state_dict(trainer)  # collective under FSDP/ZeRO-3: every rank takes part
    plain = plain_state_dict(final, state) if state is not None and training_args.should_save else None
    summary = {"mode": mode, "modalities": active, "global_step": trainer.state.global_step,
               "train_loss": mean_train_loss(trainer.state.log_history), "resumed_from": resume}
    if training_args.should_save:
        if mode == "projector":
            save_adapter_folder(final, tokenizer, out, model_args.model_name_or_path, active, plain)
            if model_args.save_full_model:
                if plain is None:
                    final.merge_trainable_token_rows()
                save_pretrained(final, tokenizer, out / "full_model", plain)
        else:
            save_adapter(final, tokenizer, out / ADAPTER_FOLDER_FILE, active, plain)
            if mode == "lora" and state is not None:
                trainer.save_model(str(out))  # sharded LoRA: the peft adapter, gathered by the Trainer
                logger.warning("LoRA under FSDP/DeepSpeed: %s holds the peft adapter and adapter.safetensors; merge "
                               "the LoRA weights into a full model on one process (peft merge_and_unload)", out)
            elif mode == "lora":
                tied = final.config.tie_word_embeddings  # peft unties the config when it meets the row overlay
                merged = getattr(trainer.model, "module", trainer.model).merge_and_unload()
                merged.merge_trainable_token_rows()
                if tied and merged.get_input_embeddings().weight is merged.get_output_embeddings().weight:
                    merged.config.tie_word_embeddings = True  # still one matrix (Qwen2.5 small, LLaMA-3.2)
                save_pretrained(merged, tokenizer, out)
            else:
                if plain is None:
                    final.merge_trainable_token_rows()
                save_pretrained(final, tokenizer, out, plain)
        if final.config.model_type == LIGHTENING and two_token_spec(final.config) is None:
            # the original trainer's layout: LLaMA-Lightening and the published video representation only
            export_legacy_projector(final, out / "mm_projector.bin", active, plain)
        elif final.config.model_type == LIGHTENING:
            logger.info("no mm_projector.bin: the original layout cannot hold the two-token video representation")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    if training_args.should_save:
        summary["data_issues"] = DataIssueLog.summarise(sorted(out.glob("data_issues.rank*.jsonl")))
        atomic_write_json(out / SUMMARY_FILE, summary)
        report_data_issues(summary["data_issues"])
    return summary


SUMMARY_FILE = "train_summary.json"


def gathered_state_dict(trainer: transformers.Trainer) -> dict | None:
    """The full weights of a sharded model (FSDP, DeepSpeed), gathered through accelerate (a collective: call it on
    every rank; rank 0 gets the tensors); None when the module holds its own full parameters (one process, DDP)."""
    if trainer.is_deepspeed_enabled:
        return trainer.accelerator.get_state_dict(trainer.deepspeed)
    if trainer.is_fsdp_enabled:
        return full_tensors(trainer.accelerator.get_state_dict(trainer.model))
    return None


def full_tensors(state: dict) -> dict:
    """Whole tensors for the DTensor shards that a state dict of an FSDP2 model can still hold (each one is gathered:
    a collective, so every rank calls this with the same keys in the same order)."""
    from torch.distributed.tensor import DTensor

    return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in state.items()}


def finished_summary(out: Path) -> dict | None:
    """The summary of a run that finished in ``out`` (its summary and final adapter are there), else None."""
    path = out / SUMMARY_FILE
    if not (path.is_file() and (out / ADAPTER_FOLDER_FILE).is_file()):
        return None
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # torn by a crash: the run is finished again from its checkpoints
    return summary if isinstance(summary, dict) else None


def checkpoint_reached_end(checkpoint: str | os.PathLike) -> bool:
    state = json.loads((Path(checkpoint) / TRAINER_STATE_NAME).read_text())
    return 0 < state.get("max_steps", 0) <= state.get("global_step", 0)


def mean_train_loss(log_history: list[dict]) -> float | None:
    """Mean training loss over every step of the run, resumed parts included: each logged loss (the mean over its
    logging interval) weighted by the steps of that interval. The Trainer's own ``training_loss`` covers only the
    steps of the last process (0.0 when a resumed run had nothing left to do)."""
    total, steps, last = 0.0, 0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            n = entry["step"] - last
            total, steps, last = total + entry["loss"] * n, steps + n, entry["step"]
    return total / steps if steps else None


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest ``checkpoint-N`` that was written to the end. The Trainer writes ``trainer_state.json`` last, so
    a run killed while saving leaves a folder without it; resuming from that one would fail, so it is skipped (with
    a warning) for the previous complete checkpoint."""
    found = []
    for p in Path(folder).glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = p.name[len(PREFIX_CHECKPOINT_DIR) + 1:]
        if p.is_dir() and step.isdigit():
            found.append((int(step), p))
    for _, p in sorted(found, reverse=True):
        if (p / TRAINER_STATE_NAME).is_file():
            return str(p)
        logger.warning("%s is incomplete (no %s: interrupted while saving?); not resuming from it", p,
                       TRAINER_STATE_NAME)
    return None


def report_data_issues(issues: dict) -> None:
    if not issues:
        print("data: every sample was used as is")
        return
    print("data issues (unique samples):")
    for kind, info in issues.items():
        print(f"  {kind}: {info['samples']}")
        for ex in info["examples"][:3]:
            print(f"    e.g. {ex}")


__all__ = ["LlavidalTrainer", "build_model", "last_complete_checkpoint", "train"]
