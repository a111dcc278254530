#!/usr/bin/env bash
# Run the six ADL-X benchmarks for one or more models and print one table.
#
#   bash evaluation/ADL-X/run_evals.sh [NUM_GPUS]
#
# Configure it as the original release's script: edit the variables below, or set them in the environment (same
# names). Video folders may hold raw videos (their CLIP features are extracted once, into OUTPUT_DIR/video_features,
# and reused by every later task and model) or feature files named after the videos. Benchmark files may be the
# release's current combined MCQ files or the legacy ones (the format is detected). A task whose benchmark file or
# video folder is not set is skipped with one line. Results are appended per item: a killed run resumes.
#
# PROTOCOL=clean (default) is ours; PROTOCOL=paper reproduces what produced the paper's numbers and reads the
# release's wording from ORIGINAL_REPO (a checkout of github.com/ADL-X/LLAVIDAL). The judge (description tasks,
# LLM answer parsing) is any OpenAI-compatible server: JUDGE_MODEL / JUDGE_BASE_URL, or $OPENAI_API_KEY and
# $OPENAI_BASE_URL as usual; without one, description tasks report offline metrics and say so.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

NUM_GPUS=${1:-${NUM_GPUS:-1}}

# ---- the original's variables ----------------------------------------------------------------------------------
CHARADES_VID_PATH=${CHARADES_VID_PATH:-}
LEMMA_VID_PATH=${LEMMA_VID_PATH:-}
SMARTHOME_VID_PATH=${SMARTHOME_VID_PATH:-}
TSU_TC_VID_PATH=${TSU_TC_VID_PATH:-}
TSU_DESC_VID_PATH=${TSU_DESC_VID_PATH:-}

CHARADES_AR=${CHARADES_AR:-}
LEMMA_TC=${LEMMA_TC:-}
SMARTHOME_AR=${SMARTHOME_AR:-}
TSU_TC=${TSU_TC:-}
CHARADES_DESCRIPTIONS=${CHARADES_DESCRIPTIONS:-}
TSU_DESCRIPTIONS=${TSU_DESCRIPTIONS:-}

BASE_LLAVA_PATH=${BASE_LLAVA_PATH:-/path/to/LLaVA-7B-Lightening-v1-1}
OUTPUT_DIR=${OUTPUT_DIR:-./adlx_eval_results}
DEBUG=${DEBUG:-}  # accepted; LIMIT below is the way to run a few items

# projector files (or our model folders) and a name for each; from the environment: space-separated strings
if [ -n "${MODEL_PATHS:-}" ] && ! declare -p MODEL_PATHS 2>/dev/null | grep -q "declare -a"; then
  read -r -a MODEL_PATHS <<< "$MODEL_PATHS"
fi
if [ -n "${OUTPUT_NAMES:-}" ] && ! declare -p OUTPUT_NAMES 2>/dev/null | grep -q "declare -a"; then
  read -r -a OUTPUT_NAMES <<< "$OUTPUT_NAMES"
fi
if [ -z "${MODEL_PATHS+x}" ] || [ ${#MODEL_PATHS[@]} -eq 0 ]; then
  MODEL_PATHS=("/path/to/llavidal_weights.bin")
fi
if [ -z "${OUTPUT_NAMES+x}" ] || [ ${#OUTPUT_NAMES[@]} -eq 0 ]; then
  OUTPUT_NAMES=()
  for p in "${MODEL_PATHS[@]}"; do n="$(basename "$p")"; OUTPUT_NAMES+=("${n%.*}"); done
fi
RUN_LEGACY_MCQ=${RUN_LEGACY_MCQ:-false}  # accepted: legacy and current files are told apart from their contents

# ---- ours --------------------------------------------------------------------------------------------------------
PROTOCOL=${PROTOCOL:-clean}                  # clean | paper
ORIGINAL_REPO=${ORIGINAL_REPO:-}             # PROTOCOL=paper: your checkout of the original release
CLIP=${CLIP:-openai/clip-vit-large-patch14}  # for raw videos (a folder or hub id)
TASKS=${TASKS:-"charades-ar lemma-tc smarthome-ar tsu-tc charades-desc tsu-desc"}
BATCH_SIZE=${BATCH_SIZE:-8}
LIMIT=${LIMIT:-}                             # only the first N items of each benchmark
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-}           # default: 256 (clean), 1024 (paper)
MCQ_MODE=${MCQ_MODE:-generate}               # generate | loglik (clean protocol)
MCQ_PARSER=${MCQ_PARSER:-rule}               # rule | llm | fallback (clean protocol)
JUDGE_MODEL=${JUDGE_MODEL:-${LLAVIDAL_JUDGE_MODEL:-}}
JUDGE_BASE_URL=${JUDGE_BASE_URL:-}
SUMMARIZER_MODEL=${SUMMARIZER_MODEL:-}       # PROTOCOL=paper, TSU-Description (default gpt-3.5-turbo-0125)
SUMMARIZER_BASE_URL=${SUMMARIZER_BASE_URL:-}
# optional object / pose feature folders per benchmark (the clean protocol feeds them; paper uses video only):
# CHARADES_OBJECT_PATH, CHARADES_POSE_PATH, LEMMA_OBJECT_PATH, ..., TSU_DESC_POSE_PATH

if [ "$PROTOCOL" != clean ] && [ "$PROTOCOL" != paper ]; then
  echo "run_evals.sh: PROTOCOL=$PROTOCOL; expected clean or paper" >&2; exit 2
fi
if [ ${#OUTPUT_NAMES[@]} -ne ${#MODEL_PATHS[@]} ]; then
  echo "run_evals.sh: ${#MODEL_PATHS[@]} MODEL_PATHS but ${#OUTPUT_NAMES[@]} OUTPUT_NAMES" >&2; exit 2
fi

# task -> its benchmark file, video folder, and the prefix of its optional object/pose variables
task_vars() { case "$1" in
  charades-ar)   echo "CHARADES_AR CHARADES_VID_PATH CHARADES";;
  lemma-tc)      echo "LEMMA_TC LEMMA_VID_PATH LEMMA";;
  smarthome-ar)  echo "SMARTHOME_AR SMARTHOME_VID_PATH SMARTHOME";;
  tsu-tc)        echo "TSU_TC TSU_TC_VID_PATH TSU_TC";;
  charades-desc) echo "CHARADES_DESCRIPTIONS CHARADES_VID_PATH CHARADES";;
  tsu-desc)      echo "TSU_DESCRIPTIONS TSU_DESC_VID_PATH TSU_DESC";;
  *) echo "run_evals.sh: unknown task $1" >&2; exit 2;;
esac; }

# one feature cache per video folder, shared by every task and model that reads it
cache_of() { echo "$OUTPUT_DIR/video_features/$(printf '%s' "$(cd "$1" && pwd)" | cksum | cut -d' ' -f1)"; }

if [ "$NUM_GPUS" -gt 1 ]; then
  LAUNCH=(python3 -m torch.distributed.run --nproc_per_node="$NUM_GPUS" -m llavidal.eval.runner)
else
  LAUNCH=(python3 -m llavidal.eval.runner)
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

common=(--protocol "$PROTOCOL" --batch-size "$BATCH_SIZE" --clip "$CLIP")
[ -n "$LIMIT" ] && common+=(--limit "$LIMIT")
[ -n "$MAX_NEW_TOKENS" ] && common+=(--max-new-tokens "$MAX_NEW_TOKENS")
[ -n "$ORIGINAL_REPO" ] && common+=(--original-repo "$ORIGINAL_REPO")
[ -n "$JUDGE_MODEL" ] && common+=(--judge-model "$JUDGE_MODEL")
[ -n "$JUDGE_BASE_URL" ] && common+=(--judge-base-url "$JUDGE_BASE_URL")
[ -n "$SUMMARIZER_MODEL" ] && common+=(--summarizer-model "$SUMMARIZER_MODEL")
[ -n "$SUMMARIZER_BASE_URL" ] && common+=(--summarizer-base-url "$SUMMARIZER_BASE_URL")
if [ "$PROTOCOL" = clean ]; then common+=(--mcq-mode "$MCQ_MODE" --mcq-parser "$MCQ_PARSER"); fi

ran=()
for i in "${!MODEL_PATHS[@]}"; do
  weights="${MODEL_PATHS[$i]}"; name="${OUTPUT_NAMES[$i]}"
  if [ -d "$weights" ] && [ -f "$weights/config.json" ]; then model_args=(--base "$weights")
  else model_args=(--base "$BASE_LLAVA_PATH" --projector "$weights"); fi
  for task in $TASKS; do
    read -r qa_var vid_var prefix <<< "$(task_vars "$task")"
    qa="${!qa_var}"; videos="${!vid_var}"
    if [ -z "$qa" ] || [ -z "$videos" ]; then
      echo "skip $task: set $qa_var and $vid_var"; continue
    fi
    extra=()
    obj_var="${prefix}_OBJECT_PATH"; pose_var="${prefix}_POSE_PATH"
    [ -n "${!obj_var:-}" ] && extra+=(--object-dir "${!obj_var}")
    [ -n "${!pose_var:-}" ] && extra+=(--pose-dir "${!pose_var}")
    out="$OUTPUT_DIR/$PROTOCOL/$name/$task"
    echo "== $name / $task ($PROTOCOL protocol) -> $out"
    "${LAUNCH[@]}" --task "$task" --qa-file "$qa" --video-dir "$videos" --feature-dir "$(cache_of "$videos")" \
      "${model_args[@]}" --output "$out" "${common[@]}" "${extra[@]}"
    ran+=("$out/summary.json")
  done
done

if [ ${#ran[@]} -eq 0 ]; then echo "nothing was run: set the benchmark files and video folders above"; exit 1; fi
python3 - "${ran[@]}" <<'PY'
import json, sys

def kind(r):
    if "paper_mcq" in r or "mcq" in r:
        return "accuracy (%)"
    if "paper_descriptions" in r:
        return "judge, paper protocol (0-100)"
    if r.get("judge"):
        return "judge (0-100)"
    return "offline metrics (no judge): ROUGE-L"

def judge(r):
    j = r.get("judge") or {}
    return f"{j.get('model')} @ {j.get('base_url')}" if j else "-"

print("\n| model | task | protocol | score | score kind | items | missing videos | judge |")
print("| --- | --- | --- | ---: | --- | ---: | ---: | --- |")
for path in sys.argv[1:]:
    r = json.load(open(path))
    name = path.split("/")[-3]
    score = "n/a" if r.get("score") is None else f"{r['score']:.2f}"
    print(f"| {name} | {r['task']} | {r.get('protocol', 'clean')} | {score} | {kind(r)} | {r['items_in_file']} "
          f"| {r['missing_videos']} | {judge(r)} |")
PY
