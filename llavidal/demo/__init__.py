"""Talking to LLAVIDAL about a video: a gradio web demo (``llavidal demo``) and a terminal chat (``llavidal chat``).

Both share :class:`~llavidal.demo.chat.Conversation` (one sample's features plus the turns so far) and the
generation code of :mod:`llavidal.inference`. Gradio is imported only by :mod:`llavidal.demo.app`.
"""
from .chat import Conversation, chat_loop, load_sample

__all__ = ["Conversation", "chat_loop", "load_sample"]
