"""The LLAVIDAL web demo (gradio): upload a video, chat about it.

``llavidal demo --base DIR [--projector F] [--clip C]`` serves http://127.0.0.1:7860 (``--host 0.0.0.0`` to expose
it, ``--share`` for a gradio link). What a user sees:

- upload a video: its CLIP features (docs/design.md#video-features; at most ``--max-frames`` frames, 100 by default)
  are computed at once, with the progress in the status line; videos longer than ``--max-video-seconds`` or larger
  than ``--max-upload-mb`` are refused with a message that says so;
- optionally pose and object feature files (``.pkl``/``.pickle``/``.npy``/``.npz``/``.safetensors``/``.pt``, read
  with the numpy-only unpickler and checked against the model) as extra modalities;
- a multi-turn chat whose replies stream in, with temperature and max-new-tokens controls, regenerate and clear.

Every bad input ends in a warning toast and a status line naming the file and the problem, never a stack trace.
One model serves everyone: the model, tokenizer and CLIP are read-only after loading; each browser session has its
own :class:`~llavidal.demo.chat.Conversation` in ``gr.State``. Requests go through gradio's queue: CLIP runs one
video at a time, generation ``--concurrency`` requests at a time. Everything runs offline (no hub calls when the
folders are local; analytics off, no web fonts).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported anywhere

from ..constants import MODALITIES  # noqa: E402
from .chat import Conversation  # noqa: E402

log = logging.getLogger("llavidal.demo")

FEATURE_SUFFIXES = [".pkl", ".pickle", ".npy", ".npz", ".safetensors", ".pt", ".pth"]


@dataclass
class DemoConfig:
    base: str
    projector: str | None = None
    clip: str = "openai/clip-vit-large-patch14"
    device: str | None = None
    dtype: str = "auto"  # of the LLM (auto: bf16 on CUDA, fp32 on CPU); CLIP runs fp16 on CUDA, fp32 on CPU
    attn: str = "sdpa"
    layout: str | None = None
    allow_untrained_modality: bool = False
    use_file_embeddings: bool = False
    tokenization: str | None = None  # None: what the weights were trained on
    quantization: str | None = None  # "8bit" / "4bit" (bitsandbytes)
    device_map: str | None = None  # "auto": offload what does not fit on the GPU to CPU memory
    max_memory: dict | None = None
    compile: bool | None = None  # torch.compile the decoding step (None: the device's default)
    max_cache_len: int | None = None  # engine KV positions per sequence (None: the model's window, at most 8192)
    decoder: str = "auto"
    max_frames: int = 100  # frames sampled per video (100 as the original)
    max_video_seconds: float = 600.0  # longer videos are refused (0: no limit)
    max_upload_mb: float = 500.0  # larger files are refused (0: no limit)
    template: str | None = None  # None: the model's own (prompting.model_template)
    system: str | None = None
    temperature: float = 0.0  # default of the slider (0 = greedy)
    top_p: float = 1.0
    max_new_tokens: int = 512  # default of the slider
    concurrency: int = 1  # generation requests served at once (gradio queue)
    feature_cache_size: int = 32  # videos whose features are kept in memory (by content hash)
    title: bool = True  # False: no title/intro (embedding)
    host: str = "127.0.0.1"
    port: int | None = None
    share: bool = False


class DemoError(ValueError):
    """A problem with a user's input, shown to them as it is."""


def _friendly(e: BaseException, path: str | os.PathLike | None = None) -> str:
    """The message of an expected error with server paths reduced to the file's name."""
    msg = str(e) or type(e).__name__
    if path:
        p = str(path)
        msg = msg.replace(p, Path(p).name)
    return msg


def video_header(path: str | os.PathLike) -> tuple[float | None, float | None]:
    """(duration in seconds, frame rate) from the container header, without decoding; None where unknown.
    Raises :class:`~llavidal.video.io.VideoReadError` for files that are not videos."""
    import av

    from ..video.io import VideoReadError

    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise VideoReadError(f"{path}: empty or missing file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path}: the file has no video stream")
            stream = container.streams.video[0]
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000  # av.time_base
            rate = stream.average_rate or stream.guessed_rate
            return duration, (float(rate) if rate else None)
    except VideoReadError:
        raise
    except Exception as e:  # av.error.InvalidDataError and friends
        raise VideoReadError(f"{path}: not a video file FFmpeg can read ({type(e).__name__}); "
                             "upload an .mp4, .webm, .avi, .mkv or .mov video") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class DemoBackend:
    """What every session shares: the model, its tokenizer and the CLIP featurizer (read-only after loading),
    plus a small in-memory cache of video features keyed by the file's content hash."""

    def __init__(self, model, tokenizer, featurizer, cfg: DemoConfig):
        self.model, self.tokenizer, self.featurizer, self.cfg = model, tokenizer, featurizer, cfg
        self._clip_lock = threading.Lock()
        self._cache: OrderedDict[str, tuple] = OrderedDict()

    @classmethod
    def load(cls, cfg: DemoConfig) -> DemoBackend:
        from ..engine import get_engine
        from ..model import load_pretrained
        from .chat import featurizer_for

        model, tokenizer = load_pretrained(cfg.base, projector=cfg.projector, device=cfg.device, dtype=cfg.dtype,
                                           attn_implementation=cfg.attn, layout=cfg.layout,
                                           allow_untrained_modality=cfg.allow_untrained_modality,
                                           use_file_embeddings=cfg.use_file_embeddings,
                                           quantization=cfg.quantization, device_map=cfg.device_map,
                                           max_memory=cfg.max_memory)
        get_engine(model, tokenizer, max_batch_size=max(1, cfg.concurrency), compile=cfg.compile,
                   max_cache_len=cfg.max_cache_len)
        fz = featurizer_for(cfg.clip, model.config, device=cfg.device, max_frames=cfg.max_frames, decoder=cfg.decoder)
        return cls(model, tokenizer, fz, cfg)

    def options(self, temperature: float | None = None, max_new_tokens: int | None = None):
        from ..inference import GenerationOptions

        cfg = self.cfg
        max_new_tokens = cfg.max_new_tokens if max_new_tokens is None else max_new_tokens
        temperature = cfg.temperature if temperature is None else temperature
        return GenerationOptions(max_new_tokens=max(1, int(max_new_tokens)), temperature=max(0.0, float(temperature)),
                                 top_p=cfg.top_p, template=cfg.template, system=cfg.system,
                                 tokenization=cfg.tokenization)

    def video_features(self, path: str | os.PathLike) -> tuple:
        """(features [100 + 256, D] float16, a pooled model's per-frame tokens [T, 256, D] (pooled when asked
        about) or a two-token model's [T, P, D]; a one-line report) for an uploaded video; :class:`DemoError` or
        :class:`~llavidal.video.io.VideoReadError` for what cannot be used."""
        from ..constants import MODALITIES
        from ..features import validate_feature
        from ..video.pool import frame_pooling

        path = Path(path)
        cfg = self.cfg
        if not path.is_file():
            raise DemoError(f"{path.name}: the upload did not arrive; please upload it again")
        size_mb = path.stat().st_size / 2**20
        if cfg.max_upload_mb and size_mb > cfg.max_upload_mb:
            raise DemoError(f"{path.name} is {size_mb:.0f} MB; this demo takes videos up to {cfg.max_upload_mb:g} MB "
                            "(--max-upload-mb)")
        duration, fps = video_header(path)
        if cfg.max_video_seconds and duration is not None and duration > cfg.max_video_seconds:
            raise DemoError(f"{path.name} lasts {duration:.0f} s; this demo takes videos up to "
                            f"{cfg.max_video_seconds:g} s (--max-video-seconds); cut it shorter")
        key = _sha256(path)
        with self._clip_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                feats, n_frames = self._cache[key]
            else:
                if getattr(self.featurizer, "streaming", False):  # two-token model: every second, streamed
                    feats = self.featurizer(path)  # [T, grid², D]
                    n_frames = len(feats)
                else:
                    frames = self.featurizer.frames(path)  # [N <= max_frames (or the kept K), 224, 224, 3] uint8
                    n_frames = len(frames)
                    feats = self.featurizer.features_from_frames(frames)  # [max_frames + 256, D], or [N, 256, D]
                self._cache[key] = (feats, n_frames)
                while len(self._cache) > max(0, cfg.feature_cache_size):
                    self._cache.popitem(last=False)
        feats = validate_feature(feats, "video", self.model.config, path.name, pool=False)  # inference pools
        length = f"{duration:.1f} s" if duration is not None else "length unknown"
        rate = f" at {fps:.3g} fps" if fps else ""
        kept = getattr(self.featurizer, "kept", None)
        if getattr(self.featurizer, "streaming", False):
            sampled = f"{n_frames} frames sampled (at {self.featurizer.cfg.fps:g} per second)"
        elif kept:
            sampled = f"{n_frames} frames kept (at most {kept})"
        else:
            sampled = f"{n_frames} frames sampled (at most {cfg.max_frames})"
        pooling = frame_pooling(MODALITIES["video"], self.model.config)
        pooled = f", pooled to {pooling.grid} = {pooling.grid.tokens} tokens" if pooling is not None else ""
        report = f"**{path.name}** ({length}{rate}): {sampled} → video features {list(feats.shape)}{pooled}"
        return feats, report

    def extra_features(self, path: str | os.PathLike, modality: str):
        from ..features import load_validated

        return load_validated(path, modality, self.model.config, pool=False)


# ---------------------------------------------------------------- the UI
def _messages(history, pending: tuple[str, str] | None = None) -> list[dict]:
    """Chatbot messages (gradio's ``{"role", "content"}`` format) for the finished turns and a reply in progress."""
    out = []
    for q, a in list(history) + ([pending] if pending else []):
        out += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return out


INTRO = """# LLAVIDAL
Upload a video of daily activities and ask about it. Pose and object feature files, when you have them, add the
other two modalities. Replies come from the model as it is: a tiny or untrained model answers gibberish."""

CSS = "#status {min-height: 2.5em}"


def _warn(msg: str) -> str:
    """A gradio toast and the status line's text for ``msg``."""
    import gradio as gr

    gr.Warning(msg)
    return f"⚠️ {msg}"


def _ready_line(conv: Conversation) -> str:
    mods = conv.modalities()
    if not mods:
        return "Upload a video to start."
    return "Ready: " + ", ".join(f"{m} from {Path(conv.sources[m]).name}" for m in mods) + ". Ask a question."


BUSY = "Still answering the last question; wait for it to finish."


class DemoHandlers:
    """The demo's event handlers, one method per UI event; each takes and returns the session's
    :class:`Conversation` (``gr.State``), so nothing is shared between browser sessions."""

    def __init__(self, backend: DemoBackend):
        self.backend = backend

    # ---- video upload: features right away
    def on_video(self, path, conv: Conversation):
        """Yields (conv, status, chatbot, video)."""
        import gradio as gr

        from ..video.io import VideoReadError

        if not path:
            return
        name = Path(path).name
        yield conv, f"⏳ Computing features for **{name}** …", gr.skip(), gr.skip()
        try:
            feats, report = self.backend.video_features(path)
        except (DemoError, VideoReadError) as e:
            conv.set_feature("video", None)
            yield conv, _warn(_friendly(e, path)), _messages(conv.history), None
            return
        except Exception as e:  # never a stack trace in the UI
            log.exception("features of %s", path)
            conv.set_feature("video", None)
            yield conv, _warn(f"{name}: could not compute features ({type(e).__name__}); see the server log"), \
                _messages(conv.history), None
            return
        conv.set_feature("video", feats, name)
        yield conv, f"✅ {report}. Ask a question.", [], gr.skip()

    def on_video_clear(self, conv: Conversation):
        conv.set_feature("video", None)
        return conv, "Video removed; conversation cleared. " + _ready_line(conv), []

    # ---- feature files of the other modalities (pose, object, registered ones)
    def on_feature_file(self, modality: str, path, conv: Conversation):
        """(conv, status, chatbot, file) after a feature file of ``modality`` was uploaded (or removed: no path)."""
        import gradio as gr

        if not path:
            conv.set_feature(modality, None)
            return conv, f"{modality.capitalize()} features removed; conversation cleared. " + _ready_line(conv), \
                [], gr.skip()
        name = Path(path).name
        try:
            arr = self.backend.extra_features(path, modality)
        except (ValueError, FileNotFoundError) as e:  # FeatureError is a ValueError
            conv.set_feature(modality, None)
            return conv, _warn(_friendly(e, path)), _messages(conv.history), None
        except Exception as e:
            log.exception("%s features of %s", modality, path)
            conv.set_feature(modality, None)
            return conv, _warn(f"{name}: could not read {modality} features ({type(e).__name__})"), \
                _messages(conv.history), None
        conv.set_feature(modality, arr, name)
        return conv, f"✅ {modality} features {list(arr.shape)} from **{name}**. " + _ready_line(conv), [], gr.skip()

    def feature_file_handler(self, modality: str):
        """:meth:`on_feature_file` bound to one modality (gradio names the API endpoint after the function)."""
        handler = functools.partial(self.on_feature_file, modality)
        handler.__name__ = f"on_{modality}"
        return handler

    # ---- chat
    def respond(self, conv: Conversation, question: str, temperature, max_new_tokens) -> Iterator[tuple]:
        """Yields (chatbot, conv, status) while the reply streams in; the turn joins the history at the end."""
        if conv.busy:
            yield _messages(conv.history), conv, _warn(BUSY)
            return
        conv.busy = True
        try:
            yield from self._respond(conv, question, temperature, max_new_tokens)
        finally:
            conv.busy = False

    def _respond(self, conv: Conversation, question: str, temperature, max_new_tokens) -> Iterator[tuple]:
        backend = self.backend
        options = backend.options(temperature, max_new_tokens)
        notes = []
        try:
            dropped = conv.fit(backend.model, backend.tokenizer, question, options)
        except ValueError as e:
            yield _messages(conv.history), conv, _warn(_friendly(e))
            return
        if dropped:
            notes.append(f"the {dropped} oldest turn(s) were dropped to fit the model's context")
        text, t0 = "", time.perf_counter()
        yield _messages(conv.history, (question, "")), conv, "⏳ Generating …"
        try:
            for piece in conv.stream(backend.model, backend.tokenizer, question, options):
                text += piece
                yield _messages(conv.history, (question, text)), conv, "⏳ Generating …"
        except ValueError as e:  # e.g. the prompt alone exceeds the model's positions
            yield _messages(conv.history), conv, _warn(_friendly(e))
            return
        except Exception as e:
            log.exception("generation failed")
            yield _messages(conv.history), conv, _warn(f"generation failed ({type(e).__name__}); see the server log")
            return
        status = f"Replied in {time.perf_counter() - t0:.1f} s" + "".join(f"; {n}" for n in notes) + "."
        yield _messages(conv.history), conv, status

    def ask(self, question: str, conv: Conversation, temperature, max_new_tokens):
        """Yields (question box, chatbot, conv, status)."""
        import gradio as gr

        question = (question or "").strip()
        if not question:
            yield gr.skip(), gr.skip(), conv, gr.skip()
            return
        if not conv.modalities():
            yield question, gr.skip(), conv, _warn("Upload a video (or pose/object features) first, then ask.")
            return
        for chat, state_, status in self.respond(conv, question, temperature, max_new_tokens):
            yield "", chat, state_, status

    def regenerate(self, conv: Conversation, temperature, max_new_tokens):
        import gradio as gr

        if conv.busy:
            yield gr.skip(), conv, _warn(BUSY)
            return
        if not conv.history:
            yield gr.skip(), conv, _warn("Nothing to regenerate yet: ask a question first.")
            return
        question, _ = conv.history.pop()
        yield from self.respond(conv, question, temperature, max_new_tokens)

    def clear(self, conv: Conversation):
        conv.reset()
        return [], conv, "Conversation cleared. " + _ready_line(conv)


@dataclass
class DemoLayout:
    """The components the handlers read and write."""

    state: Any
    video: Any
    feature_files: dict[str, Any]  # modality -> gr.File (pose, object, registered modalities)
    temperature: Any
    max_new: Any
    status: Any
    chatbot: Any
    question: Any
    send: Any
    regen: Any
    clear: Any


FEATURE_FILE_LABELS = {"pose": "Pose features, e.g. [256, 216]", "object": "Object features, [n, 8, 512]"}


def _layout(cfg: DemoConfig) -> DemoLayout:
    """Place the components (inside an open ``gr.Blocks``)."""
    import gradio as gr

    model_name = Path(cfg.base).name + (f" + {Path(cfg.projector).name}" if cfg.projector else "")
    state = gr.State(Conversation(), time_to_live=6 * 3600)
    if cfg.title:
        gr.Markdown(INTRO)
    with gr.Row():
        with gr.Column(scale=2):
            video = gr.Video(label="Video", sources=["upload"], include_audio=True, elem_id="video")
            files = {}
            with gr.Accordion("Pose and object features (optional)", open=False):
                for m in ("pose", "object", *(n for n in MODALITIES if n not in ("video", "pose", "object"))):
                    files[m] = gr.File(label=FEATURE_FILE_LABELS.get(m, f"{m.capitalize()} features"),
                                       file_types=FEATURE_SUFFIXES, elem_id=f"{m}_file")
            with gr.Accordion("Generation", open=True):
                temperature = gr.Slider(0.0, 1.0, value=cfg.temperature, step=0.05, label="Temperature",
                                        info="0 = greedy", elem_id="temperature")
                max_new = gr.Slider(1, max(1024, cfg.max_new_tokens), value=cfg.max_new_tokens, step=1,
                                    label="Max new tokens", elem_id="max_new_tokens")
            gr.Markdown(f"Model: `{model_name}` · up to {cfg.max_frames} frames per video"
                        + (f" · videos up to {cfg.max_video_seconds:g} s" if cfg.max_video_seconds else "")
                        + (f" · files up to {cfg.max_upload_mb:g} MB" if cfg.max_upload_mb else ""))
        with gr.Column(scale=3):
            status = gr.Markdown("Upload a video to start.", elem_id="status")
            chatbot = gr.Chatbot(label="LLAVIDAL", elem_id="chatbot", height=480, render_markdown=False,
                                 feedback_options=None, buttons=["copy"])
            with gr.Row():
                question = gr.Textbox(show_label=False, placeholder="Ask about the video and press Enter",
                                      scale=8, elem_id="question", autofocus=True)
                send = gr.Button("Send", variant="primary", scale=1, min_width=80, elem_id="send")
            with gr.Row():
                regen = gr.Button("🔄 Regenerate", elem_id="regenerate")
                clear = gr.Button("🗑️ Clear chat", elem_id="clear")
    return DemoLayout(state, video, files, temperature, max_new, status, chatbot, question, send, regen, clear)


def _wire(ui: DemoLayout, h: DemoHandlers, concurrency: int) -> None:
    """Connect the events. CLIP work runs one at a time, generation ``concurrency`` at a time; the progress overlay
    goes on the video / the chat, so that the status line stays readable."""
    llm = dict(concurrency_id="llm", concurrency_limit=max(1, concurrency), show_progress="minimal",
               show_progress_on=[ui.chatbot])
    clip = dict(concurrency_id="clip", concurrency_limit=1, show_progress_on=[ui.video])
    state, status, chatbot = ui.state, ui.status, ui.chatbot
    ui.video.upload(h.on_video, [ui.video, state], [state, status, chatbot, ui.video], api_name="upload_video", **clip)
    ui.video.clear(h.on_video_clear, [state], [state, status, chatbot], api_name="clear_video", **clip)
    for modality, comp in ui.feature_files.items():
        handler = h.feature_file_handler(modality)
        files = {**clip, "show_progress_on": [comp]}
        comp.upload(handler, [comp, state], [state, status, chatbot, comp], api_name=f"upload_{modality}", **files)
        comp.clear(handler, [comp, state], [state, status, chatbot, comp], api_name=f"clear_{modality}", **files)
    ask_inputs = [ui.question, state, ui.temperature, ui.max_new]
    ask_outputs = [ui.question, chatbot, state, status]
    ui.question.submit(h.ask, ask_inputs, ask_outputs, api_name="ask", **llm)
    ui.send.click(h.ask, ask_inputs, ask_outputs, api_name=False, **llm)
    ui.regen.click(h.regenerate, [state, ui.temperature, ui.max_new], [chatbot, state, status], api_name="regenerate",
                   **llm)
    ui.clear.click(h.clear, [state], [chatbot, state, status], api_name="clear", queue=False)


def build_demo(backend: DemoBackend):
    """The gradio Blocks app around ``backend`` (launch it with :func:`launch`)."""
    import gradio as gr

    theme = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"],  # local fonts: no web font fetch
                           font_mono=["ui-monospace", "SFMono-Regular", "monospace"])
    with gr.Blocks(title="LLAVIDAL", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        demo.llavidal_theme, demo.llavidal_css = theme, CSS
        _wire(_layout(backend.cfg), DemoHandlers(backend), backend.cfg.concurrency)
    return demo


def launch(backend: DemoBackend, block: bool = True, **launch_kwargs):
    """Queue and serve the demo on ``cfg.host:cfg.port``; returns the Blocks (running in the background when
    ``block`` is False)."""
    cfg = backend.cfg
    demo = build_demo(backend)
    demo.queue(default_concurrency_limit=max(1, cfg.concurrency), max_size=64)
    kwargs = dict(server_name=cfg.host, server_port=cfg.port, share=cfg.share, show_error=False, ssr_mode=False,
                  max_file_size=f"{cfg.max_upload_mb:g}mb" if cfg.max_upload_mb else None,
                  prevent_thread_lock=not block, theme=demo.llavidal_theme, css=demo.llavidal_css,
                  footer_links=["api"], quiet=not block)
    kwargs.update(launch_kwargs)
    demo.launch(**kwargs)
    return demo


def run_demo(cfg: DemoConfig) -> int:
    """Load everything, then serve until interrupted."""
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this machine can use the demo", cfg.host)
    backend = DemoBackend.load(cfg)
    print(f"LLAVIDAL demo: model {cfg.base}" + (f" + {cfg.projector}" if cfg.projector else "") + f", CLIP {cfg.clip}")
    launch(backend, block=True)
    return 0


__all__ = ["DemoBackend", "DemoConfig", "DemoError", "build_demo", "launch", "run_demo",
           "video_header"]
