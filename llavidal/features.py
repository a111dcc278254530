"""Reading and validating pre-computed feature files (docs/design.md#artifacts, "Feature files").

Published features are pickles, and a pickle can run code when loaded; :func:`load_feature` reads them through a
restricted unpickler that admits numpy arrays (and plain containers) only. ``.npy`` (no pickled objects),
``.npz`` (one array), ``.safetensors`` (one tensor) and ``.pt``/``.pth`` (``weights_only=True``) are accepted too.

Expected shapes (the number of rows is free; the model gives one patch token per row):

========  =========================  =====================================
modality  shape                      published files
========  =========================  =====================================
video     ``[N, mm_hidden_size]``    ``[356, 1024]`` float16
pose      ``[N, pose_hidden_size]``  ``[256, 216]`` (SKI-LVLM: ``[75, 216]``)
object    ``[n, F, object_size]``    ``[n, 8, 512]``, n >= 1
========  =========================  =====================================
"""
from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np


# The globals a pickle of numpy arrays needs, across numpy 1.x / 2.x and pickle protocols 2-5.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # bytes of protocol-2 pickles written by Python 2
}
_ALLOWED_DTYPE_MODULES = ("numpy", "numpy.dtypes")  # numpy 2 pickles dtypes as numpy.dtypes.Float16DType


class FeatureError(ValueError):
    """A feature file that cannot be used; the message names the file, the field and what was expected."""


class FeatureKindError(FeatureError):
    """Features of another kind than the model reads (spatio-temporal rows vs pooled per-frame tokens): one model
    reads one kind, so this is never skipped or zeroed like a missing file."""


class _Refused(pickle.UnpicklingError):
    pass


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS or (module in _ALLOWED_DTYPE_MODULES and name.endswith("DType")):
            return super().find_class(module, name)
        raise _Refused(f"global '{module}.{name}' is not allowed (only numpy arrays may be loaded)")


def safe_unpickle(data: bytes | io.IOBase, source: str = "<bytes>"):
    """Unpickle numpy arrays (and dicts/lists/tuples of them) without ever running foreign code."""
    fh = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    try:
        return _NumpyOnlyUnpickler(fh).load()
    except _Refused as e:
        raise FeatureError(f"{source}: refused to unpickle: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, MemoryError) as e:
        raise FeatureError(f"{source}: not a readable pickle (truncated or corrupt?): {type(e).__name__}: {e}") from None


def _single_array(obj, path: Path, modality: str | None) -> np.ndarray:
    """Pick the array out of what a file held: an array, or a mapping holding one (or one named ``modality``)."""
    if isinstance(obj, dict):
        if modality is not None and modality in obj:
            obj = obj[modality]
        elif len(obj) == 1:
            obj = next(iter(obj.values()))
        else:
            raise FeatureError(f"{path}: holds a mapping with keys {sorted(map(str, obj))}; expected one array"
                               + (f" or a key '{modality}'" if modality else ""))
    if hasattr(obj, "detach"):  # a torch tensor from .pt / .safetensors
        obj = obj.detach().float().cpu().numpy() if str(obj.dtype) == "torch.bfloat16" else obj.detach().cpu().numpy()
    if not isinstance(obj, np.ndarray):
        raise FeatureError(f"{path}: holds a {type(obj).__name__}, expected a numpy array")
    return obj


def read_npy(path: str | os.PathLike) -> np.ndarray:
    """A ``.npy`` array, its header checked against the file size before anything is allocated: an empty or
    truncated file, or a header that claims more data than the file holds, is a :class:`FeatureError`."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise FeatureError(f"{path}: empty file (0 bytes); expected a .npy array")
    from numpy.lib import format as npformat

    with open(path, "rb") as fh:
        try:
            version = npformat.read_magic(fh)
            read_header = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
            shape, _, dtype = read_header(fh)
        except (ValueError, EOFError, SyntaxError) as e:
            raise FeatureError(f"{path}: not a .npy file (bad header): {e}") from None
        header_end = fh.tell()
    if dtype.hasobject:
        raise FeatureError(f"{path}: not a readable .npy array: it holds Python objects (dtype {dtype}; object "
                           "arrays are refused); expected a numeric array")
    need = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    have = size - header_end
    if need != have:
        raise FeatureError(f"{path}: the header describes shape {list(shape)} of {dtype} ({need} bytes) but the file "
                           f"holds {have} bytes of data; truncated or corrupt")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        raise FeatureError(f"{path}: not a readable .npy array: {e}") from None


def load_feature(path: str | os.PathLike, modality: str | None = None) -> np.ndarray:
    """Read one feature file into a numpy array (no validation of its shape; see :func:`validate_feature`)."""
    path = Path(path)
    what = f"{modality} feature file" if modality else "feature file"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    suffix = path.suffix.lower()
    if suffix in (".pkl", ".pickle"):
        with open(path, "rb") as fh:
            obj = safe_unpickle(fh, str(path))
    elif suffix == ".npy":
        obj = read_npy(path)
    elif suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                obj = {k: z[k] for k in z.files}
        except (ValueError, zipfile.BadZipFile, OSError) as e:
            raise FeatureError(f"{path}: not a readable .npz archive: {e}") from None
    elif suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            obj = load_file(str(path))
        except (SafetensorError, OSError, ValueError, TypeError) as e:
            # bfloat16 has no numpy dtype: read through torch then
            try:
                from safetensors.torch import load_file as load_torch

                obj = load_torch(str(path))
            except (SafetensorError, OSError, ValueError) as e2:
                raise FeatureError(f"{path}: not a readable safetensors file: {e2 or e}") from None
    elif suffix in (".pt", ".pth"):
        import torch

        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise FeatureError(f"{path}: refused to load: holds objects other than tensors ({e})") from None
        except (EOFError, RuntimeError, zipfile.BadZipFile) as e:
            raise FeatureError(f"{path}: not a readable torch file (truncated or corrupt?): {e}") from None
    else:
        raise FeatureError(f"{path}: unknown feature file type {suffix!r}; expected .pkl, .pickle, .npy, .npz, "
                           ".safetensors, .pt or .pth")
    return _single_array(obj, path, modality)


def expected_widths(config) -> dict[str, int]:
    """Feature width per registered modality, from the model config."""
    from .constants import MODALITIES

    return {name: m.dim(config) for name, m in MODALITIES.items()}


def validate_feature(arr: np.ndarray, modality: str, config, source: str = "<array>", pool: bool = True) -> np.ndarray:
    """Check a feature array against the model config; returns it unchanged when valid (objects given as
    ``[n*frames, width]`` are reshaped; per-frame video tokens are pooled, unless ``pool`` is False: callers that keep
    features to hand them to inference later keep the per-frame tokens, which inference checks and pools again).

    Video and pose (any ungrouped modality): ``[N, width]`` with N >= 1; object (grouped): ``[n, frames, width]``
    with n >= 1 (``[n*frames, width]`` is accepted too and reshaped). A model whose config records a pooling grid for
    the modality (``video_pool``; docs/design.md#pooled-video) reads per-frame patch tokens ``[T, P, width]`` instead,
    with ``T <= video_pool_frames``, and gets them pooled to ``[t*h*w, width]``; the other kind is a
    :class:`FeatureKindError`. Floating point only, and finite.
    """
    from .constants import MODALITIES
    from .video.pool import frame_pooling, pool_frames, square_side

    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {tuple(MODALITIES)}")
    m = MODALITIES[modality]
    width, frames = m.dim(config), m.group_size(config)
    pooling = frame_pooling(m, config)
    if frames is not None:
        want = f"[n, {frames}, {width}] (n objects x {frames} frames x {width})"
        if arr.ndim == 2 and arr.shape[1] == width and arr.shape[0] % frames == 0 and arr.shape[0] > 0:
            arr = arr.reshape(-1, frames, width)
        ok = arr.ndim == 3 and arr.shape[0] >= 1 and arr.shape[1] == frames and arr.shape[2] == width
    elif pooling is not None:
        _check_kind(arr, m, pooling, width, source)
        want = f"[T, P, {width}] per-frame patch tokens with 1 <= T <= {pooling.frames} and P a square number"
        ok = (arr.ndim == 3 and 1 <= arr.shape[0] <= pooling.frames and arr.shape[2] == width
              and arr.shape[1] >= 1 and square_side(arr.shape[1]) is not None)
    elif modality == "video" and (frame_check := _video_representation_check(arr, config, width, source)):
        want, ok = frame_check  # per-frame features of a two-token model (docs/design.md#two-token-video)
    else:
        if arr.ndim == 3 and m.pool_attr and arr.shape[-1] == width:
            raise FeatureKindError(
                f"{source}: {modality} features have shape {list(arr.shape)}: per-frame patch tokens, but this model "
                f"reads {modality} rows [N, {width}] (the spatio-temporal features, published: "
                f"[{m.rows_per_sample(config)}, {width}]); one model reads one kind of {modality} features. Use "
                f"per-frame features with a model trained on them (--{m.pool_attr} T,H,W), or extract rows with "
                "`llavidal extract-video` (without --keep-frames)")
        want = f"[N, {width}] (published files: [{m.rows_per_sample(config)}, {width}])"
        ok = arr.ndim == 2 and arr.shape[0] >= 1 and arr.shape[1] == width
    if not ok:
        raise FeatureError(f"{source}: {modality} features have shape {list(arr.shape)}, expected {want}")
    if not (np.issubdtype(arr.dtype, np.floating) or str(arr.dtype) == "bfloat16"):
        raise FeatureError(f"{source}: {modality} features have dtype {arr.dtype}, expected a floating type "
                           "(float16/float32/float64)")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise FeatureError(f"{source}: {modality} features hold {bad} NaN/inf values")
    return pool_frames(arr, pooling.grid) if pooling is not None and pool else arr


def _check_kind(arr: np.ndarray, m, pooling, width: int, source: str) -> None:
    """A model that reads pooled per-frame tokens refuses rows and tokens kept from more frames than it was
    trained with (pooling those would average other spans of time)."""
    if arr.ndim == 2 and arr.shape[-1] == width:
        raise FeatureKindError(
            f"{source}: {m.name} features have shape {list(arr.shape)}: rows (e.g. the spatio-temporal [356, {width}]), "
            f"but this model reads {m.name} {pooling.describe()} ({m.pool_attr} in its config); one model reads one "
            f"kind of {m.name} features. Extract per-frame tokens with `llavidal extract-video --keep-frames DIR "
            f"--keep-frames-count {pooling.frames}`")
    if arr.ndim == 3 and arr.shape[0] > pooling.frames and arr.shape[-1] == width:
        raise FeatureKindError(
            f"{source}: {m.name} features hold per-frame tokens of {arr.shape[0]} frames, but this model was trained "
            f"on {pooling.describe()} ({m.pool_attr}_frames={pooling.frames}); extract them again with "
            f"--keep-frames-count {pooling.frames}")


def _video_representation_check(arr: np.ndarray, config, width: int, source: str):
    from .representation import check_video_array

    return check_video_array(arr, config, width, source)


def load_validated(path: str | os.PathLike, modality: str, config, pool: bool = True) -> np.ndarray:
    """:func:`load_feature` + :func:`validate_feature`."""
    return validate_feature(load_feature(path, modality), modality, config, str(path), pool=pool)


def check_feature_file(path: str | os.PathLike, width: int | None = None, rows: int | None = None,
                       patches: int | None = None, max_rows: int | None = None) -> str | None:
    """Why an existing output of an extraction cannot count as finished, or None when it can: the file must load,
    hold a finite floating-point array, and match ``width`` (last dimension), ``rows`` (first dimension; at most
    ``max_rows``) and ``patches`` (per-frame tokens ``[T, patches, width]``) when given. A 0-byte or truncated file
    left by a crash or a full disk is caught here, so a rerun redoes it."""
    try:
        arr = load_feature(path)
    except (OSError, FeatureError) as e:
        return str(e)
    if not (np.issubdtype(arr.dtype, np.floating) or str(arr.dtype) == "bfloat16"):
        return f"{path}: dtype {arr.dtype}, expected floating point"
    if arr.ndim < 2 or arr.shape[0] < 1:
        return f"{path}: shape {list(arr.shape)}, expected at least [rows, width]"
    if width is not None and arr.shape[-1] != width:
        return f"{path}: shape {list(arr.shape)}, expected width {width}"
    if rows is not None and arr.shape[0] != rows:
        return f"{path}: shape {list(arr.shape)}, expected {rows} rows"
    if max_rows is not None and arr.shape[0] > max_rows:
        return f"{path}: shape {list(arr.shape)}, expected at most {max_rows} frames"
    if patches is not None and (arr.ndim != 3 or arr.shape[1] != patches):
        return f"{path}: shape {list(arr.shape)}, expected per-frame tokens [frames, {patches}, width]"
    if patches is None and width is not None and arr.ndim != 2:
        return f"{path}: shape {list(arr.shape)}, expected rows [N, {width}]"
    if not np.isfinite(arr.astype(np.float32, copy=False)).all():
        return f"{path}: holds NaN/inf values"
    return None


def patch_rows(arr: np.ndarray) -> int:
    """Number of patch tokens a feature array occupies (objects: n * frames)."""
    return int(np.prod(arr.shape[:-1]))


def save_feature(arr: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a feature array atomically, in the format its suffix names (.pkl as the original: a pickled array)."""
    from .io_utils import atomic_path

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".pkl", ".pickle", ".npy", ".safetensors"):
        raise FeatureError(f"{path}: cannot write features as {suffix!r}; use .pkl, .npy or .safetensors")
    with atomic_path(path) as tmp:
        if suffix == ".safetensors":
            from safetensors.numpy import save_file

            save_file({"features": np.ascontiguousarray(arr)}, str(tmp))
        else:
            with open(tmp, "wb") as fh:
                if suffix == ".npy":
                    np.save(fh, arr, allow_pickle=False)
                else:
                    pickle.dump(np.ascontiguousarray(arr), fh, protocol=4)
    return path


__all__ = ["FeatureError", "FeatureKindError", "check_feature_file", "load_feature", "load_validated", "patch_rows", "read_npy", "safe_unpickle",
           "save_feature", "validate_feature"]
