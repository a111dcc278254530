#!/usr/bin/env bash
# Regenerate ADL-X from NTU RGB+D 120: crop -> stitch-map -> stitch -> captions -> describe -> qa.
#
#   bash adlx_curation/gen_adlx_videos_and_QA.sh
#
# Edit the configuration block below (or set the same names in the environment). API keys are never written
# here: export OPENAI_API_KEY (or LLAVIDAL_CURATION_API_KEY) when an endpoint needs one; local servers need none.
# Every step is resumable and idempotent: run the script again after an interruption, a crash or a failed
# endpoint and it continues where it stopped; finished work is never redone. A step whose items partly failed
# (exit code 1: recorded in its failures.jsonl and manifest) does not stop the pipeline: the next steps skip
# those videos and say so. Any other error (bad configuration, endpoint down, nothing succeeded) stops it.
# See adlx_curation/README.md.
set -euo pipefail

# ==================================================== configuration ==================================================
NTU_ROOT=${NTU_ROOT:-/path/to/NTU120}              # holds rgb/SsssCcccPpppRrrrAaaa_rgb.avi and skeletons/*.skeleton.npy
WORK=${WORK:-./adlx_work}                          # every output goes under here
SEED=${SEED:-0}                                    # seed of the stitching map
STITCH_MAP=${STITCH_MAP:-}                         # an existing map (e.g. the released video_mapping.json) or build one
CROP_WORKERS=${CROP_WORKERS:-4}                    # processes for the crops
# frame captions: an OpenAI-compatible vision endpoint ...
VLM_ENDPOINT=${VLM_ENDPOINT:-http://localhost:8000/v1}
VLM_MODEL=${VLM_MODEL:-Qwen/Qwen2.5-VL-7B-Instruct}
# ... or a local transformers VLM folder / hub id (AutoModelForImageTextToText); set it to use it instead
VLM_LOCAL=${VLM_LOCAL:-}
CAPTION_FPS=${CAPTION_FPS:-2}                      # frames captioned per second of video
CAPTION_PROCS=${CAPTION_PROCS:-1}                  # caption processes (shards); with VLM_LOCAL, one per GPU
CAPTION_CONCURRENCY=${CAPTION_CONCURRENCY:-16}     # requests in flight per caption process
# descriptions and QA: an OpenAI-compatible chat endpoint
LLM_ENDPOINT=${LLM_ENDPOINT:-http://localhost:8001/v1}
LLM_MODEL=${LLM_MODEL:-meta-llama/Llama-3.1-8B-Instruct}
LLM_CONCURRENCY=${LLM_CONCURRENCY:-16}
LLM_TEMPERATURE=${LLM_TEMPERATURE:-0.7}
LIMIT=${LIMIT:-}                                   # e.g. 20: a trial run on the first 20 stitched videos
LLAVIDAL=${LLAVIDAL:-llavidal}                     # the command; "python -m llavidal" works too
# =====================================================================================================================

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then sed -n '2,12p' "$0"; exit 0; fi

read -r -a CLI <<< "$LLAVIDAL"
LIMIT_ARGS=()
if [ -n "$LIMIT" ]; then LIMIT_ARGS=(--limit "$LIMIT"); fi
mkdir -p "$WORK"

# run_step NAME COMMAND...: exit code 1 (some items failed, recorded) goes on; anything else non-zero stops.
run_step() {
  local name=$1 rc=0
  shift
  echo "==> $name: $*"
  "$@" || rc=$?
  if [ "$rc" -eq 1 ]; then
    echo "==> $name: some items failed (see its failures.jsonl / manifest); going on without them" >&2
  elif [ "$rc" -ne 0 ]; then
    echo "==> $name: failed with exit code $rc; fix the cause and run this script again to continue" >&2
    exit "$rc"
  fi
}

# 1. person-augmented crops (224x224 around the skeleton, 64 px slack)
run_step crop "${CLI[@]}" curate crop --ntu-root "$NTU_ROOT" --out "$WORK/crops" --workers "$CROP_WORKERS"

# 2. stitching map: deterministic for (NTU clips, seed); kept once written so a rerun cannot change it
if [ -z "$STITCH_MAP" ]; then
  STITCH_MAP="$WORK/stitch_map.json"
  if [ -f "$STITCH_MAP" ]; then
    echo "==> stitch-map: $STITCH_MAP exists, kept (delete it to build a new one)"
  else
    run_step stitch-map "${CLI[@]}" curate stitch-map --ntu-root "$NTU_ROOT" --out "$STITCH_MAP" --seed "$SEED"
  fi
fi

# 3. stitched videos + actions.json
run_step stitch "${CLI[@]}" curate stitch --crops "$WORK/crops" --map "$STITCH_MAP" --out "$WORK/stitched"

# 4. frame captions, 2 per second
if [ -n "$VLM_LOCAL" ]; then
  CAPTION_BACKEND=(--local-vlm "$VLM_LOCAL")
else
  CAPTION_BACKEND=(--endpoint "$VLM_ENDPOINT" --model "$VLM_MODEL" --concurrency "$CAPTION_CONCURRENCY")
fi
run_step captions "${CLI[@]}" curate captions --videos "$WORK/stitched" --out "$WORK/captions" --fps "$CAPTION_FPS" \
  --procs "$CAPTION_PROCS" "${CAPTION_BACKEND[@]}" ${LIMIT_ARGS[@]+"${LIMIT_ARGS[@]}"}

# 5. weakly supervised descriptions (150-300 words)
run_step describe "${CLI[@]}" curate describe --captions "$WORK/captions/captions.json" \
  --actions "$WORK/stitched/actions.json" --out "$WORK/descriptions.json" --endpoint "$LLM_ENDPOINT" \
  --model "$LLM_MODEL" --concurrency "$LLM_CONCURRENCY" --temperature "$LLM_TEMPERATURE" \
  ${LIMIT_ARGS[@]+"${LIMIT_ARGS[@]}"}

# 6. 3 summary + 3 detail QAs per video -> the training JSON
run_step qa "${CLI[@]}" curate qa --descriptions "$WORK/descriptions.json" --actions "$WORK/stitched/actions.json" \
  --out "$WORK/adlx_train.json" --endpoint "$LLM_ENDPOINT" --model "$LLM_MODEL" --concurrency "$LLM_CONCURRENCY" \
  --temperature "$LLM_TEMPERATURE" ${LIMIT_ARGS[@]+"${LIMIT_ARGS[@]}"}

echo "==> done: $WORK/adlx_train.json (llavidal train --data_path $WORK/adlx_train.json ...)"
