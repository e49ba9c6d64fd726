#!/usr/bin/env bash
# One training process.
#
#   bash run_1p.sh                       the embedded demo: builds the synthetic shapes dataset and its
#                                        TFRecords, trains SSD300-ResNet34 (the real preset's code path,
#                                        scaled down by flags only) with train_and_eval, prints COCO stats,
#                                        then draws what the model finds on a few validation pictures
#   bash run_1p.sh TRAIN_GLOB VAL_GLOB [VAL_JSON] [MODEL_DIR] [more ssd_main flags]
#                                        a real training with the ssd_resnet34 recipe
#   bash run_1p.sh --flag=value ...      every argument passed to ssd_main.py as is
#
# The environment (.venv) is created on first use unless a virtual environment is active.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")" && pwd)"
# Relative paths in the arguments are the caller's: ssd_main.py runs in the caller's directory.
. "$ROOT/scripts/ensure_env.sh"

if [ $# -gt 0 ] && [[ "$1" == --* ]]; then
  exec python "$ROOT/ssd_main.py" "$@"
fi

if [ $# -gt 0 ]; then
  TRAIN="$1"; VAL="$2"; shift 2
  VAL_JSON=""; MODEL_DIR="${MODEL_DIR:-$ROOT/training/model_1p}"
  if [ $# -gt 0 ] && [[ "$1" != --* ]]; then VAL_JSON="$1"; shift; fi
  if [ $# -gt 0 ] && [[ "$1" != --* ]]; then MODEL_DIR="$1"; shift; fi
  exec python "$ROOT/ssd_main.py" --mode=train_and_eval --model="${MODEL:-ssd_resnet34}" \
    --training_file_pattern="$TRAIN" --validation_file_pattern="$VAL" \
    ${VAL_JSON:+--val_json_file="$VAL_JSON"} --model_dir="$MODEL_DIR" \
    --train_batch_size="${BATCH_SIZE:-32}" --num_epochs="${EPOCHS:-115.2}" "$@"
fi

# ---- the embedded demo ----------------------------------------------------------------------------
WORK="${DEMO_DIR:-$ROOT/demo_work}"
mkdir -p "$WORK"
start=$(date +%s)
if [ ! -f "$WORK/shapes/annotations/instances_val.json" ]; then
  python -m data_tools.make_shapes_dataset --output_dir="$WORK/shapes" \
    --num_train="${DEMO_TRAIN_IMAGES:-1200}" --num_val="${DEMO_VAL_IMAGES:-200}"
fi
for split in train val; do
  if [ ! -f "$WORK/tfrecords/$split.meta.json" ]; then
    python -m data_tools.create_coco_tfrecord --image_dir="$WORK/shapes/$split" \
      --object_annotations_file="$WORK/shapes/annotations/instances_$split.json" \
      --output_file_prefix="$WORK/tfrecords/$split" --num_shards=4 --num_processes=2
  fi
done
python -m data_tools.inspect_tfrecord --input_pattern="$WORK/tfrecords/val-*.tfrecord" | tail -n 12

DEMO_MODEL="${DEMO_MODEL:-ssd_resnet34}"
case "$DEMO_MODEL" in
  ssd_resnet34)
    # The ssd_resnet34 code path (MLPerf model, cosine recipe, MLPerf augmentation and loss) scaled down through
    # flags only: channels x0.25, a short schedule with a higher LR for the small batch.
    MODEL_DIR="$WORK/model"
    MODEL_FLAGS=(--width_multiplier="${DEMO_WIDTH:-0.25}" --train_batch_size="${DEMO_BATCH:-16}"
      --num_epochs="${DEMO_EPOCHS:-24}" --base_learning_rate="${DEMO_LR:-0.02}" --lr_reference_batch=16
      --warmup_epochs=0.5 --checkpoint_every_steps=150 --log_every_steps=25 --steps_per_loop=25
      --eval_batch_size=16) ;;
  faster_rcnn_r50_fpn)
    # torchvision's Faster R-CNN R50-FPN code path (its recipe's LR per image, multistep at 16/26 and 22/26,
    # linear warmup) trained from scratch: channels x0.25, 256-pixel images, and trainable BatchNorm in the
    # backbone (torchvision's choice without pretrained weights).
    MODEL_DIR="$WORK/model_faster_rcnn"
    MODEL_FLAGS=(--width_multiplier="${DEMO_WIDTH:-0.25}" --train_batch_size="${DEMO_BATCH:-8}"
      --num_epochs="${DEMO_EPOCHS:-10}" --base_learning_rate="${DEMO_LR:-0.02}" --lr_reference_batch=16
      --min_size="${DEMO_SIZE:-256}" --max_size="${DEMO_SIZE:-256}" --trainable_backbone_layers=5
      --params_override=model.backbone.norm=batch --warmup_steps=100 --checkpoint_every_steps=150
      --log_every_steps=25 --steps_per_loop=25 --eval_batch_size=8) ;;
  *) echo "run_1p.sh: DEMO_MODEL must be ssd_resnet34 or faster_rcnn_r50_fpn, got '$DEMO_MODEL'" >&2; exit 2 ;;
esac
python "$ROOT/ssd_main.py" --mode=train_and_eval --model="$DEMO_MODEL" \
  --training_file_pattern="$WORK/tfrecords/train-*.tfrecord" \
  --validation_file_pattern="$WORK/tfrecords/val-*.tfrecord" \
  --val_json_file="$WORK/shapes/annotations/instances_val.json" \
  --model_dir="$MODEL_DIR" --eval_every_epochs=0 "${MODEL_FLAGS[@]}" "$@"

# What the trained model finds: boxes, class names and scores drawn on a few validation pictures.
# (a glob, not `ls | head`: head leaving early kills ls with SIGPIPE, which pipefail makes the demo's exit status)
VAL_PICTURES=("$WORK/shapes/val/"*.jpg)
PICTURES="$(IFS=,; echo "${VAL_PICTURES[*]:0:${DEMO_PREDICT_IMAGES:-8}}")"
python "$ROOT/ssd_main.py" --mode=predict --model_dir="$MODEL_DIR" --input_pattern="$PICTURES" \
  --output_dir="$MODEL_DIR/predictions"
PLOTS="$(ls -d "$MODEL_DIR/eval_plots/step_"* 2>/dev/null | sort -t_ -k3 -n | tail -n 1)"
echo "Demo finished in $(( $(date +%s) - start )) s; results: $MODEL_DIR/eval_results.json"
echo "Pictures: $MODEL_DIR/predictions/*.jpg (detections drawn; all boxes in $MODEL_DIR/predictions/detections.json)"
echo "          ${PLOTS:-$MODEL_DIR/eval_plots} (PR curves, AP per class, ground truth | detections)"
