"""What the tokenization of span boundaries does to a trained model, on the quickstart's synthetic world.

The published projector files were trained on the original release's ids, which put a lone "▁" after a span's end
token when text follows; our clean tokenization does not (docs/design.md#template). This trains the quickstart's
MMPro model twice — with clean and with original ids — and scores each final model's held-out multiple-choice items
(option log-likelihood) with both tokenizations: the diagonal is a model prompted as it was trained, the other
cells a model prompted with the other ids, as a user of the published weights would be with the wrong setting.

    python bench/bench_tokenization.py [--out /tmp/bench_tok] [--json results.json]
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import _common  # noqa: F401 - the repository on sys.path

from llavidal.constants import PUBLISHED_MODALITIES
from llavidal.quickstart import QuickstartConfig, evaluate_mcq, run_quickstart


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/bench_tokenization")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    t0 = time.time()
    cells = {}
    for trained in ("clean", "original"):
        out = Path(args.out) / f"trained-{trained}"
        run_quickstart(QuickstartConfig(out=str(out), seed=args.seed, tokenization=trained))
        data = {"test": out / "data" / "test_mcq.json",
                **{f"{m}_folder": out / "data" / f"{m}_features" for m in PUBLISHED_MODALITIES}}
        final = out / "mmpro" / "stage3-video-object-pose"
        for prompted in ("clean", "original"):
            r = evaluate_mcq(final, data["test"], data, list(PUBLISHED_MODALITIES), tokenization=prompted)
            cells[(trained, prompted)] = r["accuracy"]
    cmd = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    print(f"\ncommand: {cmd}  ({time.time() - t0:.0f} s)")
    print("\n| trained on \\ prompted with | clean | original |\n|---|---:|---:|")
    for trained in ("clean", "original"):
        print(f"| {trained} | {cells[(trained, 'clean')]:.3f} | {cells[(trained, 'original')]:.3f} |")
    if args.json:
        _common.write_json(args.json, {"command": cmd, "accuracy": {f"{t}->{p}": v for (t, p), v in cells.items()},
                                       "machine": _common.machine_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
