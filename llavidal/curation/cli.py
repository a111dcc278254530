"""``llavidal curate <step>``: the ADL-X curation steps, one subcommand each.

Each step module has ``register_step(steps)`` that adds its subcommand to the ``curate`` subparsers; heavy imports
stay inside the step functions so that ``llavidal --help`` stays fast.
"""
from __future__ import annotations

import importlib

STEP_MODULES: tuple[str, ...] = (
    "llavidal.curation.crop",
    "llavidal.curation.stitch",
    "llavidal.curation.captions",
    "llavidal.curation.describe",
    "llavidal.curation.qa",
)


def register(sub) -> None:
    p = sub.add_parser("curate", help="ADL-X curation from NTU RGB+D 120: crop, stitch-map, stitch, captions, "
                                      "describe, qa (see adlx_curation/README.md)")
    steps = p.add_subparsers(dest="step", required=True, metavar="STEP")
    for module in STEP_MODULES:
        importlib.import_module(module).register_step(steps)
