"""``llavidal serve``: an OpenAI-compatible HTTP server over the generation engine (see :mod:`llavidal.serve.app`)."""
