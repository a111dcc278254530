#!/usr/bin/env bash
# MMPro, the published curriculum (stage 1 video / object / pose, stage 2 video+pose, stage 3 all three), with
# merges by name between stages. Completed stages are skipped on a re-run; an interrupted stage resumes.
#
# Set the paths below (or export them), then: bash scripts/mmpro_training.sh
# Extra training flags for every stage go after the script's arguments, e.g.
#   bash scripts/mmpro_training.sh --bf16 True --tf32 True --gradient_checkpointing True
set -euo pipefail

BASE_MODEL=${BASE_MODEL:-/path/to/LLaVA-7B-Lightening-v1-1}
DATA_PATH=${DATA_PATH:-/path/to/NTU_QA-for-training.json}
VIDEO_FEATURES=${VIDEO_FEATURES:-/path/to/video_features}
OBJECT_FEATURES=${OBJECT_FEATURES:-/path/to/object_features}
POSE_FEATURES=${POSE_FEATURES:-/path/to/pose_features}
OUTPUT_DIR=${OUTPUT_DIR:-./work_dirs/mmpro_training}
NPROC=${NPROC:-8}
MASTER_PORT=${MASTER_PORT:-29001}

cd "$(dirname "$0")/.."
exec python -m llavidal mmpro \
  --model_name_or_path "$BASE_MODEL" --data_path "$DATA_PATH" \
  --video_folder "$VIDEO_FEATURES" --object_folder "$OBJECT_FEATURES" --pose_folder "$POSE_FEATURES" \
  --output_dir "$OUTPUT_DIR" --nproc_per_node "$NPROC" --master_port "$MASTER_PORT" \
  -- "$@"
