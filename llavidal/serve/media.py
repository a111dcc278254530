"""Turning a request's media parts into validated feature arrays, never reading outside the allowed folders.

A path (or ``file://`` URL) from a client is resolved against the operator's ``--media-root`` folders; after
symlinks are followed it must still lie inside one of them, else the request is refused (403) before the file's
existence is even looked at. ``data:`` URLs are decoded into a private temporary file and read by the same safe
loaders (numpy-only unpickler, ``allow_pickle=False``, ``weights_only=True``). Remote (http/https) URLs are never
fetched. Raw videos go through the model's CLIP pipeline (:class:`~llavidal.video.extract.VideoFeaturizer`), one
at a time, with a small cache keyed by the file's identity or the data's hash.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import tempfile
import threading
import urllib.parse
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..features import FeatureError, load_feature, validate_feature
from ..video.io import VIDEO_SUFFIXES, VideoReadError, is_video
from .protocol import MediaRef, RequestError

log = logging.getLogger("llavidal.serve")

FEATURE_SUFFIXES = (".pkl", ".pickle", ".npy", ".npz", ".safetensors", ".pt", ".pth")
_FEATURE_TYPES = {"x-npy": ".npy", "npy": ".npy", "x-pickle": ".pkl", "python-pickle": ".pkl", "pickle": ".pkl",
                  "x-safetensors": ".safetensors", "safetensors": ".safetensors", "x-npz": ".npz", "npz": ".npz"}
_VIDEO_TYPES = {"mp4": ".mp4", "webm": ".webm", "x-msvideo": ".avi", "avi": ".avi", "quicktime": ".mov",
                "x-matroska": ".mkv", "mpeg": ".mpg", "ogg": ".ogv", "gif": ".gif"}


def _sniff(data: bytes) -> str | None:
    """The feature file type of raw bytes, from their first bytes."""
    if data.startswith(b"\x93NUMPY"):
        return ".npy"
    if data[:1] == b"\x80":  # pickle protocol 2+
        return ".pkl"
    if len(data) > 8 and data[8:9] == b"{" and int.from_bytes(data[:8], "little") < len(data):
        return ".safetensors"
    if data.startswith(b"PK"):
        return ".npz"
    return None


class MediaResolver:
    """Media parts -> arrays, for one model config (widths and shapes are checked against it)."""

    def __init__(self, config, roots: list[str | os.PathLike] = (), clip: str | None = None,
                 device: str | None = None, max_frames: int = 100, max_video_seconds: float = 600.0,
                 cache_size: int = 32):
        self.config = config
        self.roots = [Path(r).resolve() for r in roots]
        for r in self.roots:
            if not r.is_dir():
                raise FileNotFoundError(f"--media-root {r}: no such folder")
        self.clip = clip
        self.device = device
        self.max_frames = max_frames
        self.max_video_seconds = max_video_seconds
        self._featurizer = None
        self._clip_lock = threading.Lock()
        self._cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()
        self._tmp = Path(tempfile.mkdtemp(prefix="llavidal-serve-"))

    # ---------------------------------------------------------------- locating
    def local_path(self, url: str, param: str) -> Path:
        """The file a path / ``file://`` URL names, confined to the media folders."""
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme == "file":
            raw = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
        elif scheme in ("", ) or (len(scheme) == 1 and os.name == "nt"):
            raw = url
        else:
            raise RequestError(400, f"{param}: {scheme}: URLs are not fetched by this server; give a path under its "
                                    "media folders, a file: URL or a data: URL", param=param)
        if not self.roots:
            raise RequestError(403, f"{param}: this server reads no files named by clients (it was started without "
                                    "--media-root); send the data inline as a data: URL", param=param,
                               kind="permission_error")
        given = Path(raw)
        candidates = [given] if given.is_absolute() else [root / given for root in self.roots]
        for cand in candidates:
            real = cand.resolve()
            if not any(real.is_relative_to(root) for root in self.roots):
                raise RequestError(403, f"{param}: {raw} is outside the media folders this server allows",
                                   param=param, kind="permission_error")
            if real.is_file():
                return real
        raise RequestError(400, f"{param}: {raw}: no such file in the server's media folders", param=param)

    def _data_file(self, url: str, ref: MediaRef) -> tuple[Path, str]:
        """Decode a data: URL into a temporary file; returns (path, sha256 of the bytes)."""
        head, sep, payload = url.partition(",")
        if not sep or ";base64" not in head:
            raise RequestError(400, f"{ref.param}: expected data:<media type>;base64,<data>", param=ref.param)
        media_type = head[5:].split(";")[0].strip().lower()
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(400, f"{ref.param}: the data URL is not valid base64", param=ref.param) from None
        major, _, minor = media_type.partition("/")
        if ref.raw_video and major == "video":
            suffix = _VIDEO_TYPES.get(minor, "." + minor if minor else ".mp4")
        else:
            suffix = _FEATURE_TYPES.get(minor) if major == "application" else None
            suffix = suffix or _sniff(data)
            if suffix is None:
                raise RequestError(400, f"{ref.param}: cannot tell the format of the {media_type or 'untyped'} data; "
                                        "use video/mp4 for a video, application/x-npy (or x-pickle, x-safetensors, "
                                        "x-npz) for features", param=ref.param)
        fd, name = tempfile.mkstemp(suffix=suffix, dir=self._tmp)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return Path(name), hashlib.sha256(data).hexdigest()

    # ---------------------------------------------------------------- reading
    def array(self, ref: MediaRef) -> np.ndarray:
        """The validated feature array of one media part (blocking: run it in a worker thread)."""
        temp = None
        try:
            if ref.url.startswith("data:"):
                path, key = self._data_file(ref.url, ref)
                temp = path
                cache_key = ("data", key, ref.modality)
            else:
                path = self.local_path(ref.url, ref.param)
                st = path.stat()
                cache_key = ("file", str(path), st.st_mtime_ns, st.st_size, ref.modality)
            with self._cache_lock:
                if cache_key in self._cache:
                    self._cache.move_to_end(cache_key)
                    return self._cache[cache_key]
            if ref.modality == "video" and is_video(path):
                arr = self._video_features(path, ref)
            elif path.suffix.lower() in FEATURE_SUFFIXES:
                arr = load_feature(path, ref.modality)
            else:
                kinds = "a video or features" if ref.raw_video else "features"
                raise RequestError(400, f"{ref.param}: {path.suffix or 'no suffix'}: expected {kinds} "
                                        f"({', '.join(FEATURE_SUFFIXES + (VIDEO_SUFFIXES if ref.raw_video else ()))})",
                                   param=ref.param)
            arr = validate_feature(arr, ref.modality, self.config, ref.param, pool=False)  # inference pools
            with self._cache_lock:
                self._cache[cache_key] = arr
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            return arr
        except (FeatureError, VideoReadError) as e:
            raise RequestError(400, self._public(str(e), temp, ref), param=ref.param) from None
        finally:
            if temp is not None:
                temp.unlink(missing_ok=True)

    def _public(self, message: str, temp: Path | None, ref: MediaRef) -> str:
        """An error message without the server's own paths."""
        if temp is not None:
            message = message.replace(str(temp), ref.param)
        for root in self.roots:
            message = message.replace(str(root) + os.sep, "")
        return message if message.startswith(ref.param) else f"{ref.param}: {message}"

    def _video_features(self, path: Path, ref: MediaRef) -> np.ndarray:
        if not ref.raw_video:
            raise RequestError(400, f"{ref.param}: {ref.modality}_features must be a feature file, not a video",
                               param=ref.param)
        from ..demo.app import video_header

        duration, _ = video_header(path)
        if self.max_video_seconds and duration is not None and duration > self.max_video_seconds:
            raise RequestError(400, f"{ref.param}: the video lasts {duration:.0f} s; this server takes videos up to "
                                    f"{self.max_video_seconds:g} s (--max-video-seconds)", param=ref.param)
        with self._clip_lock:  # CLIP runs one video at a time
            return self._get_featurizer(ref)(path)

    def _get_featurizer(self, ref: MediaRef):
        if self._featurizer is None:
            from ..demo.chat import featurizer_for

            clip = self.clip or getattr(self.config, "mm_vision_tower", None) or "openai/clip-vit-large-patch14"
            try:
                self._featurizer = featurizer_for(clip, self.config, device=self.device, max_frames=self.max_frames)
            except (OSError, ValueError) as e:
                log.error("cannot load CLIP %s for raw videos: %s", clip, e)
                raise RequestError(503, f"{ref.param}: this server cannot compute features of raw videos (its CLIP "
                                        f"{clip} is not available); send video features instead, or restart it "
                                        "with --clip", param=ref.param, kind="server_error") from None
        return self._featurizer

    def close(self) -> None:
        import shutil

        shutil.rmtree(self._tmp, ignore_errors=True)


__all__ = ["MediaResolver"]
