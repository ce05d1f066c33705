#!/usr/bin/env bash
# Reproduce the embedded default drafter for SmolLM2-135M-Instruct from scratch:
#   1. data: target-generated answers to templated chat/math/code prompts and stdlib function stubs, plus
#      target greedy labels on Python stdlib source (no HumanEval anywhere), cached as target features;
#   2. training per build_configs/train_smollm2_135m.yaml, in stages of STAGE_MIN minutes (each stage
#      resumes from the last checkpoint and picks up data shards written since);
#   3. tau of the best checkpoint on the held-out prompts (greedy, block 4 and 8) and the loss curve;
#   4. stage 2: the target's answers to 1,536 more diverse prompts (the v2 data), and a fine-tune of stage 1's
#      best checkpoint on them (build_configs/train_smollm2_135m_finetune.yaml);
#   5. stage 3: the v2 data grown to 3,648 prompts, and a longer run from stage 2's best checkpoint
#      (build_configs/train_smollm2_135m_stage3.yaml); its held-out acceptance (acceptance.json, for
#      generate's block choice);
#   6. its draft vocabulary: the 8,192 tokens the fp32 target answers the first 256 v2 prompts with most often
#      (draft_vocab.json), then its held-out acceptance with it;
#   7. the stage-3 checkpoint copied into dflash_trt/assets/drafter/.
# Every step resumes where it stopped when re-run. Long; run it detached, e.g.
#   nohup scripts/train_default_drafter.sh > train.log 2>&1 &
# Env: PYTHON (default python), DATA, OUT (default: the recipe's paths), GEN_LIMIT / TF_LIMIT (prompts /
# windows, default 1216 / 576 as in the shipped run), STAGE_MIN (default 15), RESULTS (default results/train_smollm2).
# Stages 2 and 3 use the paths of their recipes (~/.cache/dflash-trt/train/smollm2-data-v2, smollm2-drafter-ft,
# smollm2-drafter-s3) and read the previous stage's checkpoint from there: keep OUT at its default for them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
RECIPE=build_configs/train_smollm2_135m.yaml
DATA=${DATA:-$HOME/.cache/dflash-trt/train/smollm2-data}
OUT=${OUT:-$HOME/.cache/dflash-trt/train/smollm2-drafter}
RESULTS=${RESULTS:-results/train_smollm2}
STAGE_MIN=${STAGE_MIN:-15}

# 1. data (two single-threaded workers side by side: generation is latency-bound, teacher forcing is not)
$PY scripts/make_train_data.py --source generated --out "$DATA" --threads 1 --batch-size 32 \
    --max-new-tokens 256 --heldout 48 --limit "${GEN_LIMIT:-1216}" &
GEN=$!
$PY scripts/make_train_data.py --source teacher --out "$DATA" --threads 1 --heldout 16 --shard-size 32 \
    --limit "${TF_LIMIT:-576}" &
TF=$!
# training starts once the validation shards and some training shards exist
until [ -n "$(ls "$DATA"/val/shard-gen-* 2>/dev/null)" ] && [ "$(ls "$DATA"/train 2>/dev/null | wc -l)" -ge 4 ]; do
    sleep 30
done

# 2. training in resumable stages
RESUME=""
[ -f "$OUT/train_state.pt" ] && RESUME=--resume
while true; do
    $PY -m dflash_trt.cli train --config "$RECIPE" --data "$DATA" --output "$OUT" $RESUME --time-limit "$STAGE_MIN"
    RESUME=--resume
    $PY - "$OUT" <<'PYEOF' && break
import sys, torch
state = torch.load(f"{sys.argv[1]}/train_state.pt", weights_only=False)
sys.exit(0 if state["step"] >= state["recipe"]["steps"] else 1)
PYEOF
done
wait $GEN $TF

# 3. tau on held-out prompts, loss curve, results JSON
mkdir -p "$RESULTS"
$PY -m dflash_trt.train.evaluate --drafter "$OUT/best" --prompts "$DATA/heldout_prompts.jsonl" \
    --block-sizes 4 8 --limit 24 --max-new-tokens 128 --batch-size 12 --json "$RESULTS/tau.json" > /dev/null
$PY -m dflash_trt.train.report --log "$OUT/train_log.json" --tau "$RESULTS/tau.json" --out "$RESULTS"

# 4. stage 2: v2 data (the first 48 prompts held out: their answers validate, 24 of them measure acceptance)
#    and the fine-tune
DATA2=$HOME/.cache/dflash-trt/train/smollm2-data-v2
OUT2=$HOME/.cache/dflash-trt/train/smollm2-drafter-ft
$PY scripts/make_train_data.py --source generated --out "$DATA2" --threads 1 --batch-size 64 \
    --max-new-tokens 256 --heldout 48 --limit 1536
RESUME=""
[ -f "$OUT2/train_state.pt" ] && RESUME=--resume
$PY -m dflash_trt.cli train --config build_configs/train_smollm2_135m_finetune.yaml $RESUME
$PY -m dflash_trt.train.evaluate --drafter "$OUT2/best" --prompts "$DATA2/heldout_prompts.jsonl" \
    --block-sizes 8 --limit 24 --max-new-tokens 128 --batch-size 12 --json "$RESULTS/tau_stage2.json" > /dev/null

# 5. stage 3: the same data set grown to 3,648 prompts (57 shards of 64), and a longer run from stage 2
$PY scripts/make_train_data.py --source generated --out "$DATA2" --threads 2 --batch-size 64 \
    --max-new-tokens 256 --heldout 48 --limit 3648
OUT3=$HOME/.cache/dflash-trt/train/smollm2-drafter-s3
RESUME=""
[ -f "$OUT3/train_state.pt" ] && RESUME=--resume
$PY -m dflash_trt.cli train --config build_configs/train_smollm2_135m_stage3.yaml $RESUME
$PY -m dflash_trt.train.evaluate --drafter "$OUT3/best" --prompts "$DATA2/heldout_prompts.jsonl" \
    --block-sizes 8 --limit 48 --max-new-tokens 128 --batch-size 12 --json "$RESULTS/tau_stage3.json" > /dev/null

# 6. the draft vocabulary (from the fp32 target's own answers, the same prompts as DATA2's first 4 shards), and
#    the held-out acceptance drafting from it (acceptance.json, for generate's block choice)
DATA_VOCAB=$HOME/.cache/dflash-trt/train/smollm2-data-v2-fp32
$PY scripts/make_train_data.py --source generated --out "$DATA_VOCAB" --threads 2 --batch-size 64 \
    --max-new-tokens 256 --heldout 48 --limit 256 --dtype fp32
$PY -m dflash_trt.train.draft_vocab --data "$DATA_VOCAB" --size 8192 --out "$OUT3/best"
$PY -m dflash_trt.train.evaluate --drafter "$OUT3/best" --prompts "$DATA2/heldout_prompts.jsonl" \
    --block-sizes 8 --limit 48 --max-new-tokens 128 --batch-size 12 --json "$RESULTS/tau_stage3_vocab.json" \
    --write-acceptance "$OUT3/best" > /dev/null

# 7. ship it
mkdir -p dflash_trt/assets/drafter
cp "$OUT3/best/config.json" "$OUT3/best/model.safetensors" "$OUT3/best/acceptance.json" \
    "$OUT3/best/draft_vocab.json" dflash_trt/assets/drafter/
echo "drafter copied to dflash_trt/assets/drafter/ (update its README.md with $RESULTS/summary.json)"
