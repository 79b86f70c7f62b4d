"""Stage 1 of ReVisual-R1: cold-start SFT on text reasoning traces, loss on assistant tokens only
(paper §3.1, §5.1; how this differs from the released run: docs/paper_notes.md §1).

    python train_sft.py                                   # tiny model + toy data, CPU, ~1-2 min
    torchrun --nproc_per_node=8 train_sft.py --model Qwen/Qwen2.5-VL-7B-Instruct \
        --data grammar_sft.jsonl --out-dir runs/sft --grad-checkpointing 1

Writes OUT_DIR/step_XXXXXX/, OUT_DIR/final/ (the next stage's --model) and OUT_DIR/metrics.jsonl.
Unset flags take the model's preset (toy, or paper Table 5: docs/paper_notes.md §5).
"""

import argparse
import json
import math
import os
import sys
import time

import torch
from tqdm import tqdm

from nanorevisual import checkpoint, data, dist, prompts, toy
from nanorevisual.common import (MetricsLogger, UserError, autocast, check_flags, lr_multiplier,
                                 nonfinite_streak, one_line_errors, set_seed, truncate_jsonl)
from nanorevisual.dist import print0
from nanorevisual.logprobs import sequence_logps
from nanorevisual.model import check_model_path, count_params, is_toy_model, load_policy
from nanorevisual.processor import load_processor
from nanorevisual.prompts import INSTRUCTION

# ------------------------------------------------------------------------------------------------
# CLI
parser = argparse.ArgumentParser(description="Cold-start SFT (ReVisual-R1 stage 1)")
# Model / data
parser.add_argument("--model", default="tiny", help="hub id, HF folder, or 'tiny' (built locally)")
parser.add_argument("--data", default=None, help="SFT JSONL/parquet (default: the toy set)")
parser.add_argument("--val-data", default=None, help="held-out SFT file (default: toy val set)")
parser.add_argument("--out-dir", default="runs/sft", help="checkpoints and metrics.jsonl go here")
parser.add_argument("--instruction", type=int, default=1, help="1: append the paper's think/boxed "
                    "instruction to every problem (docs/paper_notes.md §6); 0: as written")
parser.add_argument("--skip-bad-rows", type=int, default=0, help="1: skip (count) malformed rows")
# Optimization (None = the model's preset)
parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default: epochs)")
parser.add_argument("--epochs", type=float, default=None, help="passes over the data (paper: 5)")
parser.add_argument("--lr", type=float, default=None, help="peak learning rate (paper: 2e-5)")
parser.add_argument("--min-lr-ratio", type=float, default=None, help="cosine floor / --lr")
parser.add_argument("--warmup-ratio", type=float, default=None, help="warmup / total steps (0.05)")
parser.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay")
parser.add_argument("--adam-beta2", type=float, default=None, help="AdamW beta2 (0.999, toy 0.95)")
parser.add_argument("--batch-size", type=int, default=None, help="rows per micro-batch, all ranks")
parser.add_argument("--grad-accum", type=int, default=None, help="micro-batches per optimizer step")
parser.add_argument("--max-length", type=int, default=None, help="max tokens per row (32768)")
parser.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm")
parser.add_argument("--grad-checkpointing", type=int, default=0, help="1: activation checkpointing")
parser.add_argument("--freeze-vision", type=int, default=1, help="1: vision tower frozen "
                    "(LLaMA-Factory default)")
# Runtime / checkpointing
parser.add_argument("--seed", type=int, default=0, help="seed for init, data order and dropout")
parser.add_argument("--deterministic", type=int, default=0, help="1: deterministic kernels only")
parser.add_argument("--resume", type=int, default=0, help="1: continue from OUT_DIR/step_*")
parser.add_argument("--overwrite", type=int, default=0, help="1: replace the run in --out-dir")
parser.add_argument("--save-every", type=int, default=0, help="step_XXXXXX every N steps (0: none)")
parser.add_argument("--eval-every", type=int, default=None, help="held-out loss every N steps")
parser.add_argument("--log-every", type=int, default=1, help="print a line every N steps")
parser.add_argument("--recipe", choices=["paper", "released"], default="paper", help="released: "
                    "<think>, </think>, <answer>, </answer> become tokens (spare embedding rows)")
one_line_errors(parser)
args = parser.parse_args()
args.model = toy.ensure_tiny_model() if args.model == "tiny" else check_model_path(args.model)

TOY = {"epochs": 6, "lr": 2e-3, "min_lr_ratio": 0.1, "warmup_ratio": 0.05, "weight_decay": 0.0,
       "batch_size": 64, "grad_accum": 1, "max_length": 256, "eval_every": 50,
       "adam_beta2": 0.95}  # the toy recipe's measured settings
PAPER = {"epochs": 5, "lr": 2e-5, "min_lr_ratio": 0.0, "warmup_ratio": 0.05, "weight_decay": 0.0,
         "batch_size": 8, "grad_accum": 16, "max_length": 32768, "eval_every": 200,
         "adam_beta2": 0.999}  # Table 5 (128 rows per step); betas: LLaMA-Factory's (0.9, 0.999)
preset = TOY if is_toy_model(args.model) else PAPER
for key, value in preset.items():
    if getattr(args, key) is None:
        setattr(args, key, value)
if args.data is None:
    if not is_toy_model(args.model):
        raise UserError("--data is required for a real model (an SFT JSONL/JSON/parquet file)")
    toy_dir = toy.ensure_toy_data()
    args.data = os.path.join(toy_dir, "sft_train.jsonl")
    args.val_data = args.val_data or os.path.join(toy_dir, "sft_val.jsonl")
check_flags(args)  # every numeric flag, presets applied (nanorevisual/common.py FLAG_RULES)
# released cold start (LLaMA-Factory add_tokens; resize_vocab only grows a full table): the tags
# take unused rows of the embedding (Qwen2.5-VL: 152,064 rows for 151,665 tokens)
tags = ["<think>", "</think>", "<answer>", "</answer>"] if args.recipe == "released" else []
if tags:
    from transformers import AutoConfig
    tokenizer = load_processor(args.model).tokenizer
    rows = AutoConfig.from_pretrained(args.model).get_text_config().vocab_size  # no weights read
    missing = [t for t in tags if t not in tokenizer.get_vocab()]
    if len(tokenizer) + len(missing) > rows:
        raise UserError(f"--recipe released: {args.model} has {rows} embedding rows for "
                        f"{len(tokenizer)} tokens, no spare row for {missing}")
user_config = vars(args).copy()

# ------------------------------------------------------------------------------------------------
# Data: read and validate every file before any model loads
instruction, skip_bad = INSTRUCTION if args.instruction else "", bool(args.skip_bad_rows)
train_rows = data.load_sft_rows(args.data, skip_bad, instruction)
val_rows = data.load_sft_rows(args.val_data, skip_bad, instruction) if args.val_data else []
rows_per_step = args.batch_size * args.grad_accum
steps_per_epoch = len(train_rows) // rows_per_step
if steps_per_epoch == 0:
    raise UserError(f"{args.data}: {len(train_rows)} rows, fewer than one step of {rows_per_step} "
                    f"rows (--batch-size {args.batch_size} x --grad-accum {args.grad_accum})")
total_steps = args.max_steps or math.ceil(args.epochs * steps_per_epoch)
warmup_steps = max(1, round(args.warmup_ratio * total_steps))
checkpoint.claim_out_dir(args.out_dir)  # a second run into this folder stops here
resume_dir = checkpoint.prepare_out_dir(args.out_dir, resume=args.resume, overwrite=args.overwrite,
                                        user_config=user_config, total_steps=total_steps)

# ------------------------------------------------------------------------------------------------
# Compute init, model, optimizer
ddp, rank, local_rank, world_size, device = dist.compute_init()
master_process = rank == 0
set_seed(args.seed, bool(args.deterministic))
print0(json.dumps(user_config, indent=1))
if args.batch_size % world_size:
    raise UserError(f"--batch-size {args.batch_size} must divide by the world size {world_size}")
local_batch = args.batch_size // world_size
model_path = resume_dir or args.model
model, processor = load_policy(model_path, device, ddp,
                               grad_checkpointing=bool(args.grad_checkpointing),
                               freeze_vision_tower=bool(args.freeze_vision))
processor.tokenizer.add_tokens(tags)  # no-op when resumed: the saved tokenizer has them
print0(f"model {model_path}: {count_params(model):,} params, {count_params(model, True):,} "
       f"trainable{' (FSDP shards)' if ddp else ''}")
params = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, args.adam_beta2),
                              weight_decay=args.weight_decay)
scheduler = torch.optim.lr_scheduler.LambdaLR(
    optimizer, lambda s: lr_multiplier(s, total_steps, warmup_steps, args.min_lr_ratio))
print0(f"{len(train_rows)} train rows, {len(val_rows)} val rows | {rows_per_step} rows/step "
       f"= batch {args.batch_size} x accum {args.grad_accum} | {local_batch} rows/micro-batch/rank"
       f" | {steps_per_epoch} steps/epoch | {total_steps} steps | warmup {warmup_steps}")


def step_rows(step):
    """This rank's rows of optimizer step `step`, per micro-batch."""
    idx = data.step_indices(len(train_rows), rows_per_step, step, args.seed)
    micro = [idx[m * args.batch_size:(m + 1) * args.batch_size] for m in range(args.grad_accum)]
    return [[train_rows[i] for i in m[rank * local_batch:(rank + 1) * local_batch]] for m in micro]


def encode(rows):
    encoded = [prompts.encode_sft_row(processor, r["messages"], args.max_length) for r in rows]
    kept = [e for e in encoded if e is not None]
    if not kept:
        raise UserError(f"{rows[0]['where']}: every row of this micro-batch has a prompt longer "
                        f"than --max-length {args.max_length}")
    return prompts.collate_sft(kept, processor.tokenizer.pad_token_id), len(encoded) - len(kept)


def loss_sum(batch):
    """Sum of next-token cross-entropy over the label tokens of a micro-batch, and their count."""
    batch = {k: v.to(device) for k, v in batch.items()}
    labels = batch.pop("labels")[:, 1:]  # (B, L-1) next-token targets
    mask = labels != prompts.IGNORE_INDEX  # (B, L-1)
    with autocast(device, ddp):  # the LM head runs chunk by chunk: no (B, L, V) logits
        logps = sequence_logps(model, batch, labels.clamp(min=0))  # (B, L-1) fp32
    return -torch.where(mask, logps, 0.0).sum(), mask.sum()


@torch.no_grad()
def eval_loss(step):
    """Token-mean loss on the held-out rows, printed and logged at `step`."""
    model.eval()
    total, count = 0.0, 0
    mine = val_rows[rank::world_size]
    for i in range(0, max(len(mine), 1), local_batch):
        chunk = mine[i:i + local_batch] or val_rows[:1]  # FSDP: every rank runs as many forwards
        s, n = loss_sum(encode(chunk)[0])
        if i < len(mine):
            total, count = total + s.item(), count + n.item()
    model.train()
    reduced = dist.all_reduce_dict({"loss": total, "tokens": count}, device)
    val = reduced["loss"] / max(reduced["tokens"], 1)
    print0(f"step {step:5d} | val_loss {val:.4f}")
    metrics.log({"step": step, "eval/loss": val})


# ------------------------------------------------------------------------------------------------
# Resume
start_step = 0
if resume_dir:
    extra = checkpoint.load_resume(resume_dir, model, optimizer, ddp)
    scheduler.load_state_dict(extra["scheduler"])
    checkpoint.set_rng_state(extra["rng"])
    start_step = extra["step"]
    print0(f"resumed from {resume_dir} at step {start_step}")
if args.resume and master_process:  # drop what was logged after the checkpoint (all, without one)
    truncate_jsonl(os.path.join(args.out_dir, "metrics.jsonl"), start_step)
metrics = MetricsLogger(args.out_dir, enabled=master_process)


def save(name, step):
    """Collective under FSDP; step folders carry the resume state."""
    extra = {"scheduler": scheduler.state_dict(), "rng": checkpoint.rng_state(), "step": step}
    meta = {"user_config": user_config, "step": step, "stage": "sft"}
    checkpoint.save_checkpoint(os.path.join(args.out_dir, name), model, processor, meta, ddp=ddp,
                               optimizer=None if name == "final" else optimizer, extra=extra)


# ------------------------------------------------------------------------------------------------
# Training loop
model.train()
dropped_total, bad_steps = 0, 0
pbar = tqdm(total=total_steps, initial=start_step, desc="sft",  # terminals only
            disable=not (master_process and sys.stderr.isatty()))
for step in range(start_step, total_steps):
    t0 = time.perf_counter()
    if args.eval_every and val_rows and step % args.eval_every == 0:
        eval_loss(step)

    # -------- TRAINING SECTION BEGIN --------
    encoded = [encode(rows) for rows in step_rows(step)]
    micro_batches = [batch for batch, _ in encoded]
    dropped_total += sum(dropped for _, dropped in encoded)
    local_tokens = sum(int((b["labels"][:, 1:] != prompts.IGNORE_INDEX).sum())
                       for b in micro_batches)
    global_tokens = dist.all_reduce_dict({"tokens": local_tokens}, device)["tokens"]
    step_loss = 0.0
    for batch in micro_batches:
        s, _ = loss_sum(batch)
        # token mean over the whole step: FSDP averages gradients over ranks, world_size undoes it
        (s * world_size / global_tokens).backward()
        step_loss += s.item()
    grad_norm = dist.grad_norm_value(torch.nn.utils.clip_grad_norm_(params, args.clip_grad))
    lr = scheduler.get_last_lr()[0]
    bad_steps = nonfinite_streak(grad_norm, bad_steps)  # stops after MAX_NONFINITE_STEPS in a row
    if math.isfinite(grad_norm):  # a NaN/inf gradient would poison every weight: skip the step
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    # -------- TRAINING SECTION END --------

    loss_total = dist.all_reduce_dict({"loss": step_loss}, device)["loss"]
    dt = time.perf_counter() - t0
    record = {"step": step + 1, "train/loss": loss_total / global_tokens, "train/lr": lr,
              "train/grad_norm": grad_norm, "train/tokens": global_tokens, "time/step": dt,
              "time/tokens_per_s": global_tokens / dt, "data/dropped_rows": dropped_total}
    if device.type == "cuda":
        record["gpu/peak_gb"] = torch.cuda.max_memory_allocated(device) / 1e9  # this rank, all run
    metrics.log(record)
    pbar.update(1)
    if (step + 1) % args.log_every == 0 or step == start_step:
        print0(f"step {step + 1:5d}/{total_steps} | loss {record['train/loss']:.4f} | "
               f"lr {lr:.2e} | grad_norm {grad_norm:.3f} | "
               f"tok/s {record['time/tokens_per_s']:.0f} | dt {dt * 1000:.0f}ms")
    if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < total_steps:
        save(f"step_{step + 1:06d}", step + 1)

pbar.close()
if val_rows:
    eval_loss(total_steps)
save("final", total_steps)
if dropped_total:
    print0(f"dropped {dropped_total} rows whose prompt exceeded --max-length {args.max_length}")
print0(f"done: {os.path.join(args.out_dir, 'final')}")
dist.compute_cleanup()
