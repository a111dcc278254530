"""What a person sees on the terminal, set once per command: log levels, progress bars, library warnings.

Every ``llavidal`` command takes ``--quiet`` and ``--verbose`` (anywhere on its command line):

* ``--quiet``: warnings and errors only; no progress bars (tqdm's own ``TQDM_DISABLE``, which the Trainer's and the
  libraries' bars honour too);
* default: llavidal's progress messages and one bar per stage; what the libraries say that a user cannot act on is
  filtered (transformers' info and warnings about its own internals, deprecation notices raised inside torch,
  transformers, accelerate, peft or huggingface_hub);
* ``--verbose``: llavidal's debug messages, and everything the libraries say.

The settings go through the environment as well, so worker processes (torchrun ranks, DataLoader workers, caption
shards) behave alike.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Sequence

__all__ = ["NORMAL", "QUIET", "VERBOSE", "configure", "library_quiet", "pop_verbosity"]

QUIET, NORMAL, VERBOSE = 0, 1, 2
_LIBRARIES = r"(transformers|torch|accelerate|peft|huggingface_hub|safetensors|gradio|tokenizers)(\.|$)"


def pop_verbosity(argv: Sequence[str]) -> tuple[list[str], int]:
    """``argv`` without ``--quiet`` / ``--verbose`` (``-v`` before the subcommand), and the level they ask for.
    The last one given wins; ``$LLAVIDAL_VERBOSITY`` (quiet, normal, verbose) is the default."""
    level = {"quiet": QUIET, "verbose": VERBOSE}.get(os.environ.get("LLAVIDAL_VERBOSITY", ""), NORMAL)
    rest: list[str] = []
    for i, a in enumerate(argv):
        if a == "--quiet":
            level = QUIET
        elif a == "--verbose" or (a == "-v" and i == 0):
            level = VERBOSE
        else:
            rest.append(a)
    return rest, level


class _PlainInfo(logging.Formatter):
    """Progress messages as plain lines; warnings and errors with their level and origin."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno == logging.INFO:
            return record.getMessage()
        return f"{record.levelname} {record.name}: {record.getMessage()}" + (
            "\n" + self.formatException(record.exc_info) if record.exc_info else "")


def configure(level: int = NORMAL) -> None:
    """Apply ``level`` to logging, progress bars and warnings, in this process and the ones it starts."""
    os.environ["LLAVIDAL_VERBOSITY"] = {QUIET: "quiet", NORMAL: "normal", VERBOSE: "verbose"}[level]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and level < VERBOSE:
            handler.setFormatter(_PlainInfo())
    logging.getLogger("llavidal").setLevel({QUIET: logging.WARNING, NORMAL: logging.INFO,
                                            VERBOSE: logging.DEBUG}[level])
    if level == QUIET:
        os.environ["TQDM_DISABLE"] = "1"
    if level < VERBOSE:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # its fork warning is about the library itself
        # deprecation notices that libraries raise about their own internals (or about each other)
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"),
                                                               "ignore::FutureWarning", "ignore::DeprecationWarning"]))
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=_LIBRARIES)
        warnings.filterwarnings("ignore", message=r".*TypedStorage is deprecated.*")
        # bitsandbytes (the 8/4-bit loading extra) reports at import that optional CPU kernels are not installed
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        try:  # already imported (a library command): apply now; otherwise the environment variable does it
            import sys

            if "transformers" in sys.modules:
                from transformers.utils import logging as hf_logging

                hf_logging.set_verbosity_error()
        except ImportError:  # pragma: no cover
            pass


@contextlib.contextmanager
def library_quiet() -> Iterator[None]:
    """transformers' messages at error level and its progress bars off for the duration: for loads of local folders
    whose per-tensor bar and load report say nothing a user can act on (``--verbose`` keeps them)."""
    if os.environ.get("LLAVIDAL_VERBOSITY") == "verbose":
        yield
        return
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
