#!/usr/bin/env bash
# One-command GPU check: the whole recipe on one CUDA GPU under torchrun (nccl, FSDP2 with bf16 mixed precision) on a
# random Qwen2.5-VL with the 7B vocabulary (152,064) and a realistic shape (text hidden 1024, 8 layers, vision width
# 1280 with 4 blocks), then generated tokens/s, the step-time split, peak GPU memory, static vs dynamic KV cache,
# the log-prob memory of the plain and chunked LM head at the 7B head shape (bench/bench_logps_memory.py), and the
# memory plan checked: bench/memory_plan.py's simulated peak of every phase next to the same phase run for real
# (torch.cuda.max_memory_allocated, and the live tensor bytes the simulation counts).
#
#   bash bench/gpu_check.sh                 # needs a CUDA GPU; about 5-8 minutes
#   DEVICE=cpu bash bench/gpu_check.sh      # the same entry points on CPU (gloo, fp32) at a tiny shape: a path check
#
# --pad none: a random model earns no reward, and every completion must still go through the update to time it.
# Everything is written under OUT (default runs/gpu_check); the summary is printed last (bench/gpu_report.py).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
DEVICE=${DEVICE:-cuda}
export HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
if [ "$DEVICE" = cuda ]; then
  python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh: no CUDA device (DEVICE=cpu runs the CPU path check)')"
  SHAPE="--hidden 1024 --layers 8 --heads 16 --kv-heads 4 --vision-hidden 1280 --vision-depth 4 --vision-heads 16 --vocab-size 152064"
  SFT="--max-steps 40 --batch-size 16 --max-length 512"; RL="--max-steps 6 --prompts-per-step 32 --group-size 8 --max-new-tokens 256"
  GEN="--generate-batch-seqs 256 --micro-batch-size 16"; PIX="--min-pixels 200704 --max-pixels 262144"; DTYPE=bfloat16
  MEM="--sft-batch-size 8 --max-length 2048 --micro-batch-size 4 --max-prompt-length 1024 --max-new-tokens 256
       --generate-batch-seqs 64 --eval-batch-size 32 --image-size 512"
else
  SHAPE="--hidden 128 --layers 2 --heads 4 --kv-heads 2 --vision-hidden 64 --vision-depth 2 --vision-heads 2 --vocab-size 1024"
  SFT="--max-steps 4 --batch-size 8 --max-length 256"; RL="--max-steps 2 --prompts-per-step 4 --group-size 4 --max-new-tokens 16"
  GEN="--generate-batch-seqs 16 --micro-batch-size 8"; PIX="--min-pixels 3136 --max-pixels 12544"; DTYPE=float32
  MEM="--tiny"
fi
RUN="python -m torch.distributed.run --standalone --nproc_per_node=1"
rm -rf "$OUT" && mkdir -p "$OUT"
python -m nanorevisual.toy --model-out "$OUT/model" $SHAPE
python -m nanorevisual.toy --out "$OUT/data" > /dev/null
D=$OUT/data
$RUN train_sft.py --model "$OUT/model" --data $D/sft_train.jsonl --val-data $D/sft_val.jsonl --out-dir "$OUT/sft" \
    $SFT --lr 2e-4 --epochs 1 --eval-every 0 --log-every 10
$RUN train_grpo.py --stage mrl --model "$OUT/sft/final" --data $D/mm_train.jsonl --val-data $D/mm_val.jsonl \
    --out-dir "$OUT/mrl" $RL $GEN $PIX --pad none --lr 1e-6 --eval-every 0 --eval-limit 32
$RUN train_grpo.py --stage trl --model "$OUT/mrl/final" --data $D/text_train.jsonl --val-data $D/text_val.jsonl \
    --out-dir "$OUT/trl" $RL $GEN --pad none --lr 1e-6 --eval-every 0
$RUN eval.py --model "$OUT/trl/final" --data $D/mm_val.jsonl $D/text_val.jsonl --out-dir "$OUT/eval" --limit 64 \
    --max-new-tokens 64 $PIX
python bench/bench_generate_cache.py --model "$OUT/trl/final" --device "$DEVICE" --dtype $DTYPE --repeats 3 \
    | tee "$OUT/generate_cache.txt"
if [ "$DEVICE" = cuda ]; then  # log-prob memory at the 7B head (152,064 x 3,584, bf16): seconds on a GPU
  python bench/bench_logps_memory.py --device cuda --shapes small,7b | tee "$OUT/logps_memory.txt"
fi
# the memory plan's method on this device: simulated (fake tensors, world size 1) vs the same phases run for real
python bench/memory_plan.py --model "$OUT/model" --world-size 1 --search 0 $MEM --json "$OUT/memory_sim.json" \
    > "$OUT/memory_sim.txt"
$RUN bench/memory_plan.py --model "$OUT/model" --real 1 $MEM --json "$OUT/memory_real.json" > "$OUT/memory_real.txt"
python bench/gpu_report.py "$OUT"
