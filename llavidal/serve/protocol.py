"""The OpenAI chat-completions request as this server reads it, with errors that name the offending field.

Messages are OpenAI's: an optional ``system`` message first, then ``user`` and ``assistant`` turns alternating,
ending with ``user``. A user message's ``content`` is a string or a list of parts:

* ``{"type": "text", "text": "..."}``
* ``{"type": "video_url", "video_url": {"url": U}}`` - a video (vLLM's name for the part); U is a path under one of
  the server's media folders, a ``file://`` URL of such a path, or a ``data:video/mp4;base64,...`` URL. A U that
  names a feature file (``.pkl``, ``.npy`` ...) is read as video features instead of being decoded.
* ``{"type": "video_features" | "object_features" | "pose_features", "<same key>": {"url": U}}`` (and
  ``{name}_features`` for a registered modality) - pre-computed features: a feature file under a media folder, or ``data:application/x-npy;base64,...`` (also ``x-pickle``,
  ``x-safetensors``, ``x-npz``, or ``octet-stream``, whose format is recognised from its first bytes).

Each modality may be given once per conversation; its span goes into the first user turn (as in training).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..constants import MODALITIES


class RequestError(Exception):
    """A request the server refuses: HTTP status, message and the field (``param``) at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.headers = status, message, param, kind, headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    repetition_penalty: float | None = Field(None, gt=0)  # vLLM's extension
    n: int | None = Field(None, ge=1, le=1)
    stop: str | list[str] | None = None
    tools: list | None = None
    logprobs: bool | None = None
    user: str | None = None


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[dict[str,any]]", "function-after", "literal"):
            continue  # pydantic's union-branch labels are not fields
        else:
            out += ("." if out else "") + str(part)
    return out


def parse_request(body: Any) -> ChatCompletionRequest:
    """Validate the JSON body; a problem becomes a 400 naming the first field at fault."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    try:
        req = ChatCompletionRequest.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        param = _loc(err["loc"])
        raise RequestError(400, f"{param}: {err['msg']}", param=param) from None
    for name in ("stop", "tools", "logprobs"):
        if getattr(req, name):
            raise RequestError(400, f"{name}: not supported by this server", param=name)
    return req


def media_parts() -> dict[str, str]:
    """Content-part type -> modality: ``video_url`` and one ``{name}_features`` part per registered modality."""
    return {"video_url": "video", **{f"{m}_features": m for m in MODALITIES}}


@dataclass
class MediaRef:
    """One media part: which modality, the URL/path the client gave, whether it is a raw video, and where it was."""

    modality: str
    url: str
    raw_video: bool
    param: str


@dataclass
class Conversation:
    system: str | None
    history: list[tuple[str, str]]
    question: str
    media: dict[str, MediaRef] = field(default_factory=dict)


def _text_of(content, param: str, role: str, media: dict[str, MediaRef]) -> str:
    if content is None:
        raise RequestError(400, f"{param}: a {role} message needs content", param=param)
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise RequestError(400, f"{where}.text: expected a string", param=f"{where}.text")
            texts.append(part["text"])
        elif kind in media_parts():
            if role != "user":
                raise RequestError(400, f"{where}: media parts belong in user messages", param=where)
            inner = part.get(kind)
            url = inner.get("url") if isinstance(inner, dict) else inner if isinstance(inner, str) else None
            if not isinstance(url, str) or not url:
                raise RequestError(400, f"{where}.{kind}.url: expected a path, file: URL or data: URL",
                                   param=f"{where}.{kind}.url")
            modality = media_parts()[kind]
            if modality in media:
                raise RequestError(400, f"{where}: a second {modality} input (the first is at "
                                        f"{media[modality].param}); give each modality once per conversation",
                                   param=where)
            media[modality] = MediaRef(modality, url, kind == "video_url", f"{where}.{kind}.url")
        elif kind in ("image_url", "input_audio", "file"):
            raise RequestError(400, f"{where}: {kind} parts are not supported; send a video (video_url) or "
                                    "video/object/pose features", param=where)
        else:
            raise RequestError(400, f"{where}.type: unknown content part type {kind!r}; expected text or one of "
                                    f"{', '.join(media_parts())}", param=f"{where}.type")
    return "\n".join(texts)


def conversation(req: ChatCompletionRequest) -> Conversation:
    """System prompt, finished turns, the question and the media parts of a request."""
    msgs = list(req.messages)
    media: dict[str, MediaRef] = {}
    system = None
    start = 0
    if msgs[0].role == "system":
        system = _text_of(msgs[0].content, "messages[0].content", "system", media)
        start = 1
    turns = msgs[start:]
    if not turns:
        raise RequestError(400, "messages: no user message after the system message", param="messages")
    for k, m in enumerate(turns):
        want = "user" if k % 2 == 0 else "assistant"
        if m.role != want:
            i = start + k
            raise RequestError(400, f"messages[{i}].role: expected {want} (after an optional system message, user "
                                    f"and assistant turns alternate and the last one is user), got {m.role}",
                               param=f"messages[{i}].role")
    if turns[-1].role != "user":
        raise RequestError(400, f"messages[{len(msgs) - 1}].role: the last message must be the user's",
                           param=f"messages[{len(msgs) - 1}].role")
    texts = [_text_of(m.content, f"messages[{start + k}].content", m.role, media) for k, m in enumerate(turns)]
    history = [(texts[k], texts[k + 1]) for k in range(0, len(texts) - 1, 2)]
    return Conversation(system=system, history=history, question=texts[-1], media=media)


__all__ = ["ChatCompletionRequest", "Conversation", "MediaRef", "RequestError", "conversation", "parse_request"]
