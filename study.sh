#!/usr/bin/env bash
# The study on one CPU: data, the tiny base model, the paper's rows, evaluation, the table.
#
#   bash study.sh quick            # ~12 min on 2 cores: Sokoban, Ans. vs Diver.+Ans., 50 rooms a variant
#   bash study.sh sokoban          # every row of Table 1 on Sokoban (longer schedules; not yet timed)
#   bash study.sh gpoints          # every row on General Points (not yet timed)
#   OUT=elsewhere SEED=1 bash study.sh sokoban
#
# Every row fine-tunes the same tiny base model (make_data.py --tasks base, trained by sft.py),
# which plays the part of the pretrained LLM: it can read a mapping in its prompt and emit any
# token, which a model trained from scratch on Sokoban cannot. Results go to $OUT/results/*.json
# and a table to $OUT/results/TASK.md (eval.py --report, the paper's numbers beside ours).
set -euo pipefail
cd "$(dirname "$0")"
MODE=${1:-quick}
OUT=${OUT:-study}
SEED=${SEED:-0}
D=$OUT/data R=$OUT/runs RES=$OUT/results
mkdir -p "$RES"
log() { echo "[$(date +%H:%M:%S)] $*"; }

case $MODE in
  quick)   TASKS=sokoban ROWS="ans diverse_ans" ROOMS=1500 BASE_RECORDS=20000 BASE_STEPS=200 STEPS=350 LIMIT=50 ;;
  sokoban) TASKS=sokoban ROWS="ans diverse_ans cot diverse_cot rl" ROOMS=3000 BASE_RECORDS=30000 BASE_STEPS=600 STEPS=800 LIMIT=100 ;;
  gpoints) TASKS=gpoints ROWS="ans diverse_ans cot diverse_cot rl" ROOMS=3000 BASE_RECORDS=30000 BASE_STEPS=600 STEPS=800 LIMIT=500 ;;
  *) echo "usage: bash study.sh quick|sokoban|gpoints" >&2; exit 2 ;;
esac
declare -A LABEL=([ans]="Ans." [diverse_ans]="Diver.+Ans." [cot]="CoT" [diverse_cot]="Diver.+CoT" [rl]="RL (warm)")
SFT="python sft.py --seed $SEED --micro-batch-size 64 --log-every 50"

log "data ($MODE)"
python make_data.py --out "$D" --seed "$SEED" --style compact --tasks "$TASKS" base --sok-train-rooms "$ROOMS" \
  --sok-augment --sok-rl-rooms 200 --base-records "$BASE_RECORDS" 2>/dev/null
T=$D/$TASKS

if [ ! -f "$R/base/final/config.json" ]; then
  log "tiny base model: generic lookups, copies and arithmetic; tokenizer also trained on the $TASKS texts"
  $SFT --model tiny --data "$D/base/train.jsonl" --out "$R/base" --max-steps "$BASE_STEPS" \
    --tiny-tokenizer-data "$T/train_ans.jsonl" "$T/train_diverse_ans.jsonl" "$T/train_cot.jsonl" "$T/train_diverse_cot.jsonl"
fi

for row in $ROWS; do
  run=$R/$TASKS-$row t0=$SECONDS
  if [ "$row" = rl ]; then
    # RL (warm): GRPO from a short CoT-SFT checkpoint, as the paper does (10 steps there)
    log "$TASKS RL (warm): CoT-SFT warm start, then GRPO"
    $SFT --model "$R/base/final" --data "$T/train_cot.jsonl" --out "$R/$TASKS-cot-warm" --max-steps $(( STEPS / 8 ))
    python rl.py --algo grpo --model "$R/$TASKS-cot-warm/final" --data "$T/rl.jsonl" --out "$run" --seed "$SEED" \
      --prompts-per-step 32 --group-size 8 --lr 1e-4 --max-new-tokens 96 --max-steps $(( STEPS / 8 )) --log-every 5
  else
    log "$TASKS ${LABEL[$row]}: SFT on $T/train_$row.jsonl"
    $SFT --model "$R/base/final" --data "$T/train_$row.jsonl" --out "$run" --max-steps "$STEPS"
  fi
  log "$TASKS ${LABEL[$row]}: evaluation"
  python eval.py --model "$run/final" --task "$TASKS" --data "$D" --limit "$LIMIT" --seed "$SEED" \
    --max-new-tokens 96 --label "${LABEL[$row]}" --out "$RES/$TASKS-$row.json"
  echo "$TASKS ${LABEL[$row]}: $(( SECONDS - t0 )) s (training and evaluation)" | tee -a "$RES/$TASKS-walltime.txt"
done

python eval.py --task "$TASKS" --report $(for row in $ROWS; do echo "$RES/$TASKS-$row.json"; done) | tee "$RES/$TASKS.md"
log "done: $RES/$TASKS.md"
