"""Multi-turn chat about one sample: the conversation state shared by the web demo, and the terminal chat.

``llavidal chat --base DIR --video clip.mp4 [--object o.pkl] [--pose p.pickle]`` reads questions from stdin and
streams the replies to stdout. ``/reset`` starts a new conversation about the same features, ``/exit`` (or EOF,
or Ctrl-C) quits. Input that is not a terminal is echoed, so ``llavidal chat ... < questions.txt`` prints a
readable transcript (``USER: ...`` / ``ASSISTANT: ...``) on stdout; notes and the banner go to stderr.

Turn 2 onwards sees the earlier turns; the modality spans sit in the first user turn only (as in training). When
the conversation no longer fits the model's positions, the oldest turns are dropped, and that is reported.
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..constants import MODALITIES

log = logging.getLogger("llavidal.demo")

COMMANDS = {"/reset": "start a new conversation about the same features", "/exit": "quit (also /quit, EOF, Ctrl-C)",
            "/help": "show this help"}


@dataclass
class Conversation:
    """One sample's features (validated arrays or None) and the finished turns ``[(question, reply), ...]``.

    The web demo keeps one per browser session (``gr.State``); nothing here is shared between users.
    """

    # modality -> validated array: video [N, mm_hidden_size] (e.g. [356, 1024]; a pooled model's per-frame tokens
    # [T, P, mm_hidden_size], pooled when asked about), object [n, 8, 512], pose [N, 216]
    arrays: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # modality -> what the features came from (for display)
    history: list[tuple[str, str]] = field(default_factory=list)
    busy: bool = False  # a reply is being generated (the web demo refuses a second one meanwhile)
    epoch: int = 0  # bumped by every reset / change of features; a reply from an older epoch is not kept

    def features(self) -> dict[str, Any]:
        return {m: self.arrays.get(m) for m in MODALITIES}

    def modalities(self) -> list[str]:
        return [m for m in MODALITIES if self.arrays.get(m) is not None]

    def set_feature(self, modality: str, array, source: str | None = None) -> None:
        """Set (or with ``array=None`` remove) one modality. The conversation restarts: earlier replies were about
        other inputs."""
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; expected one of {tuple(MODALITIES)}")
        if array is None:
            self.arrays.pop(modality, None)
            self.sources.pop(modality, None)
        else:
            self.arrays[modality] = array
            self.sources[modality] = source or "<array>"
        self.reset()

    def reset(self) -> None:
        """A new conversation about the same features."""
        self.history.clear()
        self.epoch += 1

    def fit(self, model, tokenizer, question: str, options) -> int:
        """Drop the oldest turns until the prompt for ``question`` plus ``options.max_new_tokens`` fits the model's
        positions; returns how many turns were dropped. (A prompt that does not fit even without history is left
        for :func:`llavidal.inference.prepare_inputs` to report.)"""
        from ..features import validate_feature
        from ..inference import resolve_template, resolve_tokenization
        from ..prompting import encode_turns, inference_turns
        from ..representation import span_rows

        config = model.config
        # the tokens the prompt will hold: a pooled model's per-frame tokens count as its grid, a two-token model's
        # frames as two tokens each
        rows = span_rows({m: (validate_feature(a, m, config) if a is not None else None)
                          for m, a in self.features().items()}, config)
        limit = config.max_position_embeddings
        dropped = 0
        while self.history:
            turns = inference_turns(question, rows, self.history, use_start_end=config.mm_use_vid_start_end,
                                    use_string_prefix=config.use_modality_string_prefix)
            n = len(encode_turns(tokenizer, turns, template=resolve_template(model, options), system=options.system,
                                 tokenization=resolve_tokenization(model, options))[0])
            if n + options.max_new_tokens <= limit:
                break
            self.history.pop(0)
            dropped += 1
        return dropped

    def stream(self, model, tokenizer, question: str, options) -> Iterator[str]:
        """Yields the reply to ``question`` piece by piece; once it is complete, the turn joins the history (a
        reply abandoned half-way does not, nor one whose conversation was reset meanwhile)."""
        from ..inference import stream_answer

        epoch, pieces = self.epoch, []
        feats = self.features()
        named = {m: feats.pop(m) for m in ("video", "object", "pose")}
        for piece in stream_answer(model, tokenizer, question, history=tuple(self.history), options=options,
                                   more={m: a for m, a in feats.items() if a is not None}, **named):
            pieces.append(piece)
            yield piece
        if self.epoch == epoch:
            self.history.append((question, "".join(pieces).strip()))


# ---------------------------------------------------------------- loading a sample
def featurizer_for(clip: str, config, device=None, dtype=None, max_frames: int = 100, decoder: str = "auto"):
    """A featurizer of raw videos for the model's video representation whose feature width fits its video
    projector: :class:`~llavidal.video.extract.VideoFeaturizer` (``max_frames`` frames → spatio-temporal rows, or
    the per-frame patch tokens of the frames a pooled model keeps), or for a two-token model
    :class:`~llavidal.video.longvideo.LongVideoFeaturizer` (every second at the model's rate, streamed;
    docs/design.md#two-token-video)."""
    from ..constants import MODALITIES
    from ..representation import two_token_spec
    from ..video.extract import VideoFeaturizer
    from ..video.pool import frame_pooling

    spec = two_token_spec(config)
    if spec is not None:
        from ..video.longvideo import LongVideoConfig, LongVideoFeaturizer

        fz = LongVideoFeaturizer(LongVideoConfig.for_spec(spec, clip=clip, device=device, dtype=dtype, decoder=decoder))
    else:
        pooling = frame_pooling(MODALITIES["video"], config)
        fz = VideoFeaturizer(clip, device=device, dtype=dtype, max_frames=max_frames, decoder=decoder,
                             kept=pooling.frames if pooling is not None else None)
    if fz.model.hidden_size != config.mm_hidden_size:
        raise ValueError(f"--clip {clip}: its vision width is {fz.model.hidden_size}, but the model's video projector "
                         f"expects {config.mm_hidden_size}-wide features (mm_hidden_size); use the CLIP the model "
                         "was trained with (openai/clip-vit-large-patch14 for the published weights)")
    return fz


def load_sample(config, video: str | None = None, object: str | None = None, pose: str | None = None,
                featurizer=None, feature_cache: str | None = None) -> Conversation:
    """A conversation about one sample. ``video`` is a raw video (features computed with ``featurizer``, cached
    under ``feature_cache`` when given) or a feature file; ``object``/``pose`` are feature files."""
    from ..features import load_validated, validate_feature
    from ..video.io import is_video

    conv = Conversation()
    if video is not None:
        if is_video(video):
            if featurizer is None:
                raise ValueError(f"--video {video}: a raw video needs a CLIP to compute its features (--clip)")
            arr = featurizer.cached(video, feature_cache) if feature_cache else featurizer(video)
            conv.set_feature("video", validate_feature(arr, "video", config, str(video), pool=False), str(video))
        else:
            conv.set_feature("video", load_validated(video, "video", config, pool=False), str(video))
    for modality, path in (("object", object), ("pose", pose)):
        if path is None:
            continue
        if is_video(path):
            raise ValueError(f"--{modality} {path}: expected a {modality} feature file (.pkl, .pickle, .npy, .npz, "
                             ".safetensors, .pt), not a video")
        conv.set_feature(modality, load_validated(path, modality, config, pool=False), str(path))
    return conv


def describe(conv: Conversation) -> str:
    parts = []
    for m in conv.modalities():
        arr = conv.arrays[m]
        parts.append(f"{m} {list(arr.shape)} from {Path(conv.sources.get(m, '?')).name}")
    return ", ".join(parts) if parts else "no features (text only)"


# ---------------------------------------------------------------- the terminal loop
def chat_loop(model, tokenizer, conv: Conversation, options, stdin: TextIO | None = None,
              stdout: TextIO | None = None, stderr: TextIO | None = None, echo: bool | None = None) -> int:
    """Read questions line by line and stream the replies until ``/exit``, EOF or Ctrl-C; returns 0.

    ``echo`` (default: when ``stdin`` is not a terminal) writes each question after the prompt, so that a piped
    session leaves a transcript.
    """
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    interactive = bool(getattr(stdin, "isatty", lambda: False)())
    echo = (not interactive) if echo is None else echo
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    stderr.write(f"Chatting about: {describe(conv)}. Commands: /reset, /exit, /help.\n")
    stderr.flush()
    try:
        while True:
            stdout.write("USER: ")
            stdout.flush()
            line = stdin.readline()
            if not line:  # EOF
                stdout.write("\n")
                break
            question = line.strip()
            if echo:
                stdout.write(question + "\n")
            if not question:
                continue
            command = question.lower()
            if command in ("/exit", "/quit"):
                break
            if command == "/reset":
                conv.reset()
                stderr.write("(new conversation; same features)\n")
                stderr.flush()
                continue
            if command in ("/help", "/?"):
                stderr.write("".join(f"  {c:8s} {what}\n" for c, what in COMMANDS.items()))
                continue
            if command.startswith("/") and " " not in command:
                stderr.write(f"unknown command {question}; commands: {', '.join(COMMANDS)}\n")
                continue
            dropped = conv.fit(model, tokenizer, question, options)
            if dropped:
                stderr.write(f"(dropped the {dropped} oldest turn(s) to fit the model's context)\n")
            stdout.write("ASSISTANT: ")
            stdout.flush()
            try:
                for piece in conv.stream(model, tokenizer, question, options):
                    stdout.write(piece)
                    stdout.flush()
            except ValueError as e:  # e.g. a prompt longer than the model's positions
                stdout.write("\n")
                stderr.write(f"error: {e}\n")
                stderr.flush()
                continue
            stdout.write("\n")
            stdout.flush()
    except KeyboardInterrupt:
        stdout.write("\n")
    stdout.flush()
    return 0


def cmd_chat(args) -> int:
    """``llavidal chat``: load the model and the sample, then :func:`chat_loop` on stdin/stdout."""
    from ..cli import load_model
    from ..inference import GenerationOptions
    from ..video.io import is_video

    for flag in ("video", "object", "pose"):
        value = getattr(args, flag)
        if value is not None and not Path(value).is_file():
            raise FileNotFoundError(f"--{flag} {value}: no such file")
    model, tokenizer = load_model(args)
    featurizer = None
    if args.video is not None and is_video(args.video):
        featurizer = featurizer_for(args.clip, model.config, device=args.device,
                                    max_frames=args.max_frames, decoder=args.decoder)
    conv = load_sample(model.config, video=args.video, object=args.object, pose=args.pose, featurizer=featurizer,
                       feature_cache=args.feature_cache)
    if not conv.modalities():
        log.warning("no --video/--object/--pose given: chatting text-only")
    options = GenerationOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                                seed=args.seed, template=args.template, system=args.system,
                                tokenization=args.tokenization)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return chat_loop(model, tokenizer, conv, options)


__all__ = ["Conversation", "chat_loop", "cmd_chat", "describe", "featurizer_for", "load_sample"]
