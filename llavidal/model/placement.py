"""Putting a loaded model on small GPUs: 8-/4-bit weights (bitsandbytes) and device maps with CPU offload.

A model is first loaded as usual on the CPU (any source: our folder, a LLaVA-Lightening base, a projector file),
then re-instantiated by ``from_pretrained`` from that state dict with transformers' bitsandbytes quantizer and/or
accelerate's device map. The projectors, the embeddings and ``lm_head`` stay unquantized (small, and the splice
and the added-token rows need them exact); the decoder's linear layers are quantized.
"""
from __future__ import annotations

import logging
import re

import torch

from ..console import library_quiet
from ..constants import MODALITIES

log = logging.getLogger(__name__)

QUANTIZATIONS = ("8bit", "4bit")
NOT_QUANTIZED = ["lm_head", *(m.projector for m in MODALITIES.values())]
_MEMORY = re.compile(r"^\s*([^=\s]+)\s*=\s*(\d+(?:\.\d+)?\s*[KMGT]i?B)\s*$", re.IGNORECASE)


class PlacementError(ValueError):
    """A quantization / device-map request that cannot be served here; the message says why and what to do."""


def parse_max_memory(spec: str | None) -> dict | None:
    """``"0=10GiB,cpu=48GiB"`` -> ``{0: "10GiB", "cpu": "48GiB"}`` (accelerate's ``max_memory``)."""
    if not spec:
        return None
    out: dict = {}
    for part in spec.split(","):
        m = _MEMORY.match(part)
        if not m:
            raise PlacementError(f"--max-memory {spec!r}: expected DEVICE=SIZE pairs such as 0=10GiB,cpu=48GiB "
                                 f"(could not read {part.strip()!r})")
        key, size = m.group(1), m.group(2).replace(" ", "")
        key = key.removeprefix("cuda:")
        out[int(key) if key.isdigit() else key] = size
    return out


def check_bitsandbytes(kind: str, device: torch.device) -> str:
    """Raise :class:`PlacementError` unless bitsandbytes is installed and runs ``kind`` weights on ``device``;
    returns its version. A real 64x64 quantized layer is built and run on the device (a version or a device without
    the kernels fails here, with a readable message, instead of deep inside the model loading)."""
    if kind not in QUANTIZATIONS:
        raise PlacementError(f"unknown quantization {kind!r}; expected one of {QUANTIZATIONS}")
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise PlacementError(f"--load-in-{kind} needs the bitsandbytes package: pip install 'llavidal[quant]'") \
            from None
    version = getattr(bnb, "__version__", "?")
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):  # the probe leaves the caller's RNG alone
            dense = torch.nn.Linear(64, 64)
            if kind == "4bit":
                layer = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float32, quant_type="nf4")
            else:
                layer = bnb.nn.Linear8bitLt(64, 64, has_fp16_weights=False)
            layer.load_state_dict(dense.state_dict())
            layer = layer.to(device)
            out = layer(torch.randn(2, 64, device=device, dtype=torch.float16 if kind == "8bit" else torch.float32))
            if not torch.isfinite(out.float()).all():
                raise RuntimeError("the quantized probe layer returned non-finite values")
    except Exception as e:  # noqa: BLE001 - every failure here means: cannot run on this device
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PlacementError(f"--load-in-{kind}: bitsandbytes {version} cannot run {kind} weights on {device} "
                             f"({type(e).__name__}: {first}); use a CUDA GPU (or a bitsandbytes release with "
                             f"kernels for {device.type}), or load without quantization") from None
    return version


def place_model(model, quantization: str | None = None, device_map: str | dict | None = None,
                max_memory: dict | None = None, device: torch.device | None = None,
                dtype: torch.dtype | None = None):
    """The CPU-loaded ``model`` quantized and/or dispatched. ``device_map`` is "auto" (GPUs first, the rest in CPU
    RAM, bounded by ``max_memory``), a dict of module -> device, or None (everything on ``device``)."""
    from transformers import BitsAndBytesConfig

    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = dtype or next(model.parameters()).dtype
    kwargs = {}
    if quantization:
        check_bitsandbytes(quantization, device)
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=quantization == "8bit", load_in_4bit=quantization == "4bit", bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True, llm_int8_skip_modules=NOT_QUANTIZED,
            llm_int8_enable_fp32_cpu_offload=device_map is not None)
    if device_map is None:
        device_map = {"": str(device)}
    config = model.config
    try:
        with library_quiet():
            placed = type(model).from_pretrained(
                None, config=config, state_dict=model.state_dict(), dtype=dtype, device_map=device_map,
                max_memory=max_memory, attn_implementation=config._attn_implementation, **kwargs)
    except (ImportError, RuntimeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PlacementError(f"could not place the model (quantization {quantization or 'none'}, device map "
                             f"{device_map!r}): {first}") from None
    placed.generation_config = model.generation_config
    placed.eval()
    where = getattr(placed, "hf_device_map", None)
    if where:
        counts: dict[str, int] = {}
        for dev in where.values():
            counts[str(dev)] = counts.get(str(dev), 0) + 1
        log.info("device map: %s", ", ".join(f"{n} modules on {d}" for d, n in counts.items()))
        if "disk" in counts:
            raise PlacementError("the device map puts weights on disk; give --max-memory with more CPU memory "
                                 "(offload to disk is not supported)")
    return placed


def memory_footprint(model) -> int:
    """Bytes of the model's parameters and buffers (quantized weights count their packed size)."""
    return int(model.get_memory_footprint())


__all__ = ["NOT_QUANTIZED", "PlacementError", "QUANTIZATIONS", "check_bitsandbytes", "memory_footprint",
           "parse_max_memory", "place_model"]
