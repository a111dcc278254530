"""Same seed, same numbers: two training runs in separate processes (different PYTHONHASHSEED, the same thread
count) give bit-identical adapters and identical held-out results; the op that used to break this (gradients of the
trainable token rows accumulated in a thread-dependent order) is pinned down on its own."""
from __future__ import annotations

import json
import subprocess
import textwrap

import torch
from safetensors.torch import load_file

from helpers_train import PYTHON, subprocess_env

RUN = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from llavidal.quickstart import evaluate_mcq
    from llavidal.synthetic import WorldSpec, make_dataset
    from llavidal.train.train import train
    base, root, out = sys.argv[1:4]
    data = make_dataset(Path(root) / "data", n_train=96, n_test=16, seed=0, spec=WorldSpec(video_rows=36, pose_rows=32))
    train(["--model_name_or_path", base, "--data_path", str(data["train"]), "--output_dir", out,
           "--tune_mm_mlp_adapter", "True", "--mm_use_vid_start_end", "True", "--per_device_train_batch_size", "8",
           "--num_train_epochs", "1", "--learning_rate", "1e-2", "--warmup_ratio", "0.05", "--save_strategy", "no",
           "--report_to", "none", "--use_cpu", "True", "--logging_steps", "4", "--disable_tqdm", "True",
           "--seed", "0", "--object_folder", str(data["object_folder"]), "--dataloader_num_workers", "0"])
    result = evaluate_mcq(Path(out), data["test"], data, ["object"])
    Path(out, "mcq.json").write_text(json.dumps(result))
""")


def test_token_row_gradients_do_not_depend_on_thread_scheduling():
    from torch import nn

    from llavidal.model.modeling_llavidal import EmbeddingWithTrainableRows

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gen = torch.Generator().manual_seed(0)
        emb = EmbeddingWithTrainableRows(nn.Embedding(300, 64), ids=[290, 291, 292, 293, 294, 295])
        ids = torch.randint(0, 300, (8, 400), generator=gen)
        ids[:, ::3] = 290 + torch.randint(0, 6, ids[:, ::3].shape, generator=gen)  # many repeats of each row
        upstream = torch.randn(8, 400, 64, generator=gen)
        grads = set()
        for _ in range(20):
            emb.rows.grad = None
            emb(ids).backward(upstream)
            grads.add(emb.rows.grad.numpy().tobytes())
        assert len(grads) == 1
    finally:
        torch.set_num_threads(threads)


def test_two_processes_give_bit_identical_adapters_and_results(tiny_base, tmp_path):
    outs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"run{hash_seed}"
        env = {**subprocess_env(), "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "2"}
        proc = subprocess.run([PYTHON, "-c", RUN, str(tiny_base), str(tmp_path / f"w{hash_seed}"), str(out)],
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs.append(out)
    a, b = (load_file(str(o / "adapter.safetensors")) for o in outs)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra, rb = (json.loads((o / "mcq.json").read_text()) for o in outs)
    assert ra == rb
    sa, sb = (json.loads((o / "train_summary.json").read_text()) for o in outs)
    assert sa["train_loss"] == sb["train_loss"]


def test_loading_a_base_neither_uses_nor_moves_the_global_rng(tiny_base):
    """The object/pose projectors a base folder lacks start random: from a generator seeded by ``init_seed``, so a
    load gives the same model whatever ran before it (they used to be drawn from the global RNG)."""
    from llavidal.model import load_pretrained

    torch.manual_seed(1)
    a, _ = load_pretrained(tiny_base, device="cpu")
    torch.manual_seed(2)
    state = torch.get_rng_state()
    b, _ = load_pretrained(tiny_base, device="cpu")
    assert torch.equal(torch.get_rng_state(), state)
    c, _ = load_pretrained(tiny_base, device="cpu", init_seed=5)
    for name in ("mm_projector_forobject", "mm_projector_forpose"):
        wa, wb, wc = (getattr(m.model, name).weight for m in (a, b, c))
        assert torch.equal(wa, wb) and not torch.equal(wa, wc)
        assert abs(float(wa.std()) - 0.02) < 0.002
