#!/usr/bin/env bash
# Run the ADL-X benchmarks for one or more models and print the final table.
#
# Configure with environment variables (defaults below) or flags:
#   bash evaluation/ADL-X/run_evals.sh [--tasks "smarthome-ar charades-ar"] [--nproc N] [--mcq-mode generate|loglik]
#                                      [--output DIR] [--base DIR] [--models "name=projector ..."] [--limit N]
# Each task reads its benchmark file and a folder of cached features (one file per video, named after the
# video: {video}.pkl / .npy / .safetensors). A task whose file is not configured is skipped with a message.
# Results are appended per item: a killed run resumes where it stopped when started again.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

BASE_MODEL=${BASE_MODEL:-/path/to/LLaVA-7B-Lightening-v1-1}
# models to evaluate: "name=projector_file_or_folder" (space separated); a bare model folder works too
MODELS=${MODELS:-"llavidal=/path/to/llavidal_weights.bin"}
OUTPUT_DIR=${OUTPUT_DIR:-./adlx_eval_results}
NPROC=${NPROC:-1}
MCQ_MODE=${MCQ_MODE:-generate}
BATCH_SIZE=${BATCH_SIZE:-8}
LIMIT=${LIMIT:-}
TASKS=${TASKS:-"smarthome-ar charades-ar lemma-tc tsu-tc charades-desc tsu-desc"}

SMARTHOME_AR=${SMARTHOME_AR:-}; SMARTHOME_FEATURES=${SMARTHOME_FEATURES:-}
CHARADES_AR=${CHARADES_AR:-};   CHARADES_FEATURES=${CHARADES_FEATURES:-}
LEMMA_TC=${LEMMA_TC:-};         LEMMA_FEATURES=${LEMMA_FEATURES:-}
TSU_TC=${TSU_TC:-};             TSU_TC_FEATURES=${TSU_TC_FEATURES:-}
CHARADES_DESC=${CHARADES_DESC:-}; CHARADES_DESC_FEATURES=${CHARADES_DESC_FEATURES:-$CHARADES_FEATURES}
TSU_DESC=${TSU_DESC:-};         TSU_DESC_FEATURES=${TSU_DESC_FEATURES:-}

while [ $# -gt 0 ]; do
  case "$1" in
    --tasks) TASKS="$2"; shift 2 ;;
    --nproc) NPROC="$2"; shift 2 ;;
    --mcq-mode) MCQ_MODE="$2"; shift 2 ;;
    --output) OUTPUT_DIR="$2"; shift 2 ;;
    --base) BASE_MODEL="$2"; shift 2 ;;
    --models) MODELS="$2"; shift 2 ;;
    --batch-size) BATCH_SIZE="$2"; shift 2 ;;
    --limit) LIMIT="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "run_evals.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

qa_of() { case "$1" in
  smarthome-ar) echo "$SMARTHOME_AR";; charades-ar) echo "$CHARADES_AR";; lemma-tc) echo "$LEMMA_TC";;
  tsu-tc) echo "$TSU_TC";; charades-desc) echo "$CHARADES_DESC";; tsu-desc) echo "$TSU_DESC";; esac; }
features_of() { case "$1" in
  smarthome-ar) echo "$SMARTHOME_FEATURES";; charades-ar) echo "$CHARADES_FEATURES";; lemma-tc) echo "$LEMMA_FEATURES";;
  tsu-tc) echo "$TSU_TC_FEATURES";; charades-desc) echo "$CHARADES_DESC_FEATURES";; tsu-desc) echo "$TSU_DESC_FEATURES";; esac; }

if [ "$NPROC" -gt 1 ]; then
  LAUNCH=(python -m torch.distributed.run --nproc_per_node="$NPROC" -m llavidal.eval.runner)
else
  LAUNCH=(python -m llavidal.eval.runner)
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

ran=()
for entry in $MODELS; do
  name="${entry%%=*}"; weights="${entry#*=}"
  if [ -d "$weights" ] && [ -f "$weights/config.json" ]; then model_args=(--base "$weights")
  else model_args=(--base "$BASE_MODEL" --projector "$weights"); fi
  for task in $TASKS; do
    qa="$(qa_of "$task")"; feats="$(features_of "$task")"
    if [ -z "$qa" ] || [ -z "$feats" ]; then
      echo "skip $task for $name: set its benchmark file and feature folder (see the top of this script)"; continue
    fi
    out="$OUTPUT_DIR/$name/$task"
    echo "== $name / $task -> $out"
    "${LAUNCH[@]}" --task "$task" --qa-file "$qa" --video-dir "$feats" "${model_args[@]}" --output "$out" \
      --mcq-mode "$MCQ_MODE" --batch-size "$BATCH_SIZE" ${LIMIT:+--limit "$LIMIT"}
    ran+=("$out/summary.json")
  done
done

if [ ${#ran[@]} -eq 0 ]; then echo "nothing was run"; exit 1; fi
python - "${ran[@]}" <<'PY'
import json, sys
rows = [json.load(open(p)) for p in sys.argv[1:]]
print("\n| model | task | score | items | missing videos |")
print("| --- | --- | --- | --- | --- |")
for p, r in zip(sys.argv[1:], rows):
    name = p.split("/")[-3]
    score = "n/a" if r.get("score") is None else f"{r['score']:.2f}"
    print(f"| {name} | {r['task']} | {score} | {r['items_in_file']} | {r['missing_videos']} |")
PY
