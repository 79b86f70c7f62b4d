"""Stages 2 and 3 of ReVisual-R1: GRPO + PAD, multimodal (--stage mrl) then text-only (--stage trl).

    python train_grpo.py --stage mrl      # tiny model from runs/sft/final, toy colour-of-the-shape task, CPU
    python train_grpo.py --stage trl      # from runs/mrl/final, toy arithmetic, vision tower frozen, k3 KL
    torchrun --nproc_per_node=8 train_grpo.py --stage mrl --model runs/sft/final --data mmrl.jsonl \
        --val-data mm_val.jsonl --out-dir runs/mrl --grad-checkpointing 1

Each step (paper §4.1, Algorithm 1): prompts -> G rollouts per prompt -> rewards -> group advantages -> PAD
selection -> update plan -> (old / reference log-probs) -> clipped-surrogate updates, one optimizer step per
--optim-batch-seqs selected sequences. Flags left unset take the stage preset (and the toy preset for the tiny
model); the resolved values are printed and saved in every meta.json. docs/paper_notes.md has the equations.

Stage presets (paper §5.1, Table 5): mrl trains the vision tower, with no KL and no entropy bonus; trl freezes it and
adds a k3 KL of 2e-3 to its starting checkpoint and an entropy bonus of 0.02 after 140 updates, x0.985 per update.

Deviations from the paper / released code (released values in brackets):
1. PAD defaults to `--pad paper` (softmax over |A|/tau, tau 1.0 -> 0.3), our reading of §4.1.1; `--pad code` is the
   released configuration. nanorevisual/grpo.py lists the PAD deviations.
2. Stage presets follow the paper, not the released config [KL 1e-2 and entropy 0.02 with warm-up 20 in every
   stage]: MRL has no KL and no entropy bonus; TRL uses KL 2e-3 and warm-up 140 (Table 5).
3. The efficient-length reward (eq. 5-6) is off by default, as in the released config [use_efficient false],
   although the paper calls it crucial. Its released weight, 0.05 against 0.8 for accuracy, is --w-length 0.0625
   here; it only bites when --length-budget is below --max-new-tokens. The released code's three 0.05-weighted
   heuristic rewards are not implemented.
4. The loss is a token mean over each optimizer step (all micro-batches and ranks) [token mean per micro-batch,
   divided by the accumulation count]; PAD runs over the global rollout batch, as released.
5. The entropy coefficient follows the released `_anneal_entropy_coef` exactly (0 for the first warm-up + 1
   updates, then coef, coef x decay, ...) and is saved in the resume state [restarted on resume].
6. Images are bounded by the processor's min/max pixels [resized with PIL into the bounds, then the processor's
   own rounding]: the same sizes up to one 28-pixel step. Prompts longer than --max-prompt-length are dropped and
   counted, measured with image tokens expanded [one placeholder per image].
7. Rollouts use HF generate [vLLM]: no separate inference engine and no weight sync. In-training validation uses
   --eval-temperature / --eval-top-p (real-model preset 0.3 / 0.95, as released; toy: greedy).
"""

import argparse
import contextlib
import json
import math
import os
import sys
import time

import torch
from tqdm import tqdm

from nanorevisual import checkpoint, data, dist, prompts
from nanorevisual.prompts import INSTRUCTION
from nanorevisual.common import (MetricsLogger, Timer, UserError, autocast, check_flags,
                                 nonfinite_streak, one_line_errors, set_seed, truncate_jsonl)
from nanorevisual.dist import print0
from nanorevisual.grpo import (PAD_PRESETS, entropy_coef, group_advantages, pad_select, pad_tau,
                               policy_loss)
from nanorevisual.plan import plan_token_counts, plan_update
from nanorevisual.model import check_model_path, count_params, is_toy_model, load_policy
from nanorevisual.processor import load_processor, vision_token_ids
from nanorevisual.rewards import accuracy_reward, compute_rewards
from nanorevisual.logprobs import completion_logps
from nanorevisual.rollout import collate_rollouts, generate_rollouts

# ----------------------------------------------------------------------------------------------------------------
# CLI (None = take the stage / model preset)
parser = argparse.ArgumentParser(description="GRPO + PAD (ReVisual-R1 stages 2 and 3)")
parser.add_argument("--stage", choices=["mrl", "trl"], default="mrl", help="mrl: multimodal RL, trl: text RL")
# Model / data
parser.add_argument("--model", "--init", dest="model", default=None, help="checkpoint folder of the previous stage")
parser.add_argument("--data", default=None, help="RL JSONL/JSON/parquet: problem, answer, images")
parser.add_argument("--val-data", nargs="*", default=None, help="held-out files for the periodic eval")
parser.add_argument("--out-dir", default=None, help="checkpoints, metrics.jsonl, rollouts/ (default runs/<stage>)")
parser.add_argument("--instruction", type=int, default=1, help="1: append the paper's instruction (0: problems as is)")
parser.add_argument("--skip-bad-rows", type=int, default=0, help="1: skip malformed rows (counted)")
parser.add_argument("--min-pixels", type=int, default=None, help="images are resized to at least this many pixels")
parser.add_argument("--max-pixels", type=int, default=None, help="... and at most this many (real model: 4194304)")
parser.add_argument("--max-prompt-length", type=int, default=None, help="drop longer prompts, counted (0: keep all)")
# Rollout
parser.add_argument("--prompts-per-step", type=int, default=None, help="prompts per rollout step, all ranks (paper: 512)")
parser.add_argument("--group-size", type=int, default=None, help="G: samples per prompt")
parser.add_argument("--temperature", type=float, default=None, help="sampling temperature")
parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling")
parser.add_argument("--max-new-tokens", type=int, default=None, help="completion length cap")
parser.add_argument("--generate-batch-seqs", type=int, default=None, help="sequences per generate call (KV memory)")
parser.add_argument("--share-prefill", type=int, default=1, help="1: one prefill per prompt for its G samples")
parser.add_argument("--gather-for-rollout", type=int, default=1, help="FSDP: 1 = gather the weights once per rollout")
# GRPO
parser.add_argument("--lr", type=float, default=None, help="AdamW learning rate (constant)")
parser.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay")
parser.add_argument("--kl-coef", type=float, default=None, help="k3 KL coefficient; 0 = no reference model")
parser.add_argument("--clip-low", type=float, default=0.2, help="ε_low of the clipped ratio")
parser.add_argument("--clip-high", type=float, default=0.25, help="ε_high of the clipped ratio (clip-higher)")
parser.add_argument("--dual-clip", type=float, default=3.0, help="dual-clip constant c for A < 0")
parser.add_argument("--ppo-epochs", type=int, default=1, help="passes over the PAD-selected batch")
parser.add_argument("--optim-batch-seqs", type=int, default=None, help="sequences per optimizer step, all ranks (0: all)")
parser.add_argument("--micro-batch-size", type=int, default=None, help="max sequences per forward/backward per rank")
parser.add_argument("--micro-batch-tokens", type=int, default=0, help="padded-token budget per micro-batch (0: off)")
parser.add_argument("--scale-by-std", type=int, default=1, help="1: A = (r-mean)/std (GRPO), 0: r-mean (Dr. GRPO)")
parser.add_argument("--entropy-coef", type=float, default=None, help="entropy bonus after warm-up (code: 0.02)")
parser.add_argument("--entropy-warmup", type=int, default=None, help="updates with entropy coef 0 first")
parser.add_argument("--entropy-decay", type=float, default=0.985, help="entropy coef x this per update")
parser.add_argument("--entropy-min", type=float, default=0.0, help="entropy coef floor")
parser.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm")
parser.add_argument("--grad-checkpointing", type=int, default=0, help="1: activation checkpointing")
parser.add_argument("--freeze-vision", type=int, default=None, help="1: freeze the vision tower")
# Rewards (paper §2.1, §4.1.2)
parser.add_argument("--w-accuracy", type=float, default=1.0, help="weight of the boxed-answer accuracy reward")
parser.add_argument("--w-format", type=float, default=0.0, help="weight of the <think>..</think> \\boxed{} format reward")
parser.add_argument("--w-length", type=float, default=0.0, help="weight of the efficient-length reward (eq. 5-6)")
parser.add_argument("--length-budget", type=int, default=None, help="L_budget of the length reward")
# PAD (paper §4.1.1)
parser.add_argument("--pad", choices=list(PAD_PRESETS), default="paper", help="PAD preset (paper Table 4 rows)")
parser.add_argument("--pad-t-low", type=float, default=None, help="T_low: drop |A| <= this")
parser.add_argument("--pad-t-high", type=float, default=None, help="T_high: drop |A| >= this")
parser.add_argument("--pad-ratio", type=float, default=None, help="ρ: select ceil(ρ N) sequences")
parser.add_argument("--pad-weighting", default=None, choices=["softmax", "power", "uniform", "all"], help="priority")
parser.add_argument("--pad-tau-start", type=float, default=1.0, help="softmax τ at step 0")
parser.add_argument("--pad-tau-end", type=float, default=0.3, help="softmax τ at the last step")
parser.add_argument("--pad-alpha", type=float, default=None, help="α of the power weighting")
parser.add_argument("--pad-replacement", type=int, default=None, help="1: sample with replacement")
parser.add_argument("--pad-empty", choices=["skip", "full"], default="skip", help="PAD selects nothing: skip the step or train on the full batch")
# Runtime / eval / checkpointing
parser.add_argument("--max-steps", type=int, default=None, help="rollout steps")
parser.add_argument("--seed", type=int, default=0, help="seed for data order, sampling and PAD")
parser.add_argument("--deterministic", type=int, default=0, help="1: deterministic kernels only (slower on GPU)")
parser.add_argument("--resume", type=int, default=0, help="1: continue from the last OUT_DIR/step_* folder")
parser.add_argument("--overwrite", type=int, default=0, help="1: replace the run already in --out-dir")
parser.add_argument("--save-every", type=int, default=0, help="save OUT_DIR/step_XXXXXX every N steps (0: final only)")
parser.add_argument("--eval-every", type=int, default=None, help="held-out accuracy every N steps (0: never)")
parser.add_argument("--eval-samples", type=int, default=1, help="samples per held-out prompt")
parser.add_argument("--eval-temperature", type=float, default=None, help="held-out sampling temperature, 0 = greedy")
parser.add_argument("--eval-top-p", type=float, default=None, help="held-out nucleus sampling")
parser.add_argument("--eval-limit", type=int, default=0, help="evaluate only the first N held-out prompts (0: all)")
parser.add_argument("--dump-every", type=int, default=None, help="write OUT_DIR/rollouts/step_XXXXXX.jsonl every N steps")
parser.add_argument("--log-every", type=int, default=1, help="print a line every N steps")
one_line_errors(parser)
args = parser.parse_args()

default_model = {"mrl": "runs/sft/final", "trl": "runs/mrl/final"}[args.stage]
if args.model is None and not os.path.exists(os.path.join(default_model, "config.json")):
    raise UserError(f"--model not given and {default_model} not found: run "
                    f"{'python train_sft.py' if args.stage == 'mrl' else 'python train_grpo.py --stage mrl'} first")
args.model = check_model_path(args.model or default_model)
tiny = is_toy_model(args.model)
STAGE = {
    "mrl": {"kl_coef": 0.0, "freeze_vision": 0, "entropy_coef": 0.0, "entropy_warmup": 0},
    "trl": {"kl_coef": 2e-3, "freeze_vision": 1, "entropy_coef": 0.02, "entropy_warmup": 140},  # paper Table 5
}[args.stage]
TOY = {  # G 8, 16 prompts, T 1.0, one optimizer step per rollout step; lr 5e-5 (1e-4 collapsed in a measured run)
    "prompts_per_step": 16, "group_size": 8, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 24,
    "generate_batch_seqs": 128, "lr": 5e-5, "weight_decay": 0.0, "optim_batch_seqs": 0, "micro_batch_size": 64,
    "max_steps": {"mrl": 150, "trl": 60}[args.stage], "eval_every": 25, "dump_every": 25, "length_budget": 24,
    "eval_temperature": 0.0, "eval_top_p": 1.0, "max_prompt_length": 0}  # pixels: the tiny processor's own
PAPER = {  # paper Table 5 and the released examples/config.yaml (docs/paper_notes.md §5)
    "prompts_per_step": 512, "group_size": 8, "temperature": 1.0, "top_p": 0.95, "max_new_tokens": 8192,
    "generate_batch_seqs": 64, "lr": 1e-6, "weight_decay": 1e-2, "optim_batch_seqs": 1024, "micro_batch_size": 2,
    "max_steps": 200, "eval_every": 5, "dump_every": 5, "length_budget": 8192, "eval_temperature": 0.3,
    "eval_top_p": 0.95, "min_pixels": 262144, "max_pixels": 4194304, "max_prompt_length": 8192}
for key, value in {**(TOY if tiny else PAPER), **STAGE}.items():
    if getattr(args, key) is None:
        setattr(args, key, value)
check_flags(args)  # every numeric flag, presets applied (nanorevisual/common.py FLAG_RULES)
if tiny and (args.data is None or args.val_data is None):
    from nanorevisual.toy import ensure_toy_data
    toy_dir = ensure_toy_data()
    first, second = ("mm", "text") if args.stage == "mrl" else ("text", "mm")
    args.data = args.data or os.path.join(toy_dir, f"{first}_train.jsonl")
    if args.val_data is None:  # also the other task, to see retention
        args.val_data = [os.path.join(toy_dir, f"{first}_val.jsonl"), os.path.join(toy_dir, f"{second}_val.jsonl")]
if not args.data:
    raise UserError("--data is required for a real model (an RL JSONL/JSON/parquet file)")
if args.group_size == 1 and args.scale_by_std:
    raise UserError("--group-size 1: every group-normalised advantage is 0 and nothing would train; use G >= 2")
args.out_dir = args.out_dir or f"runs/{args.stage}"
pad_flags = {k: getattr(args, "pad_" + k) for k in ("t_low", "t_high", "ratio", "weighting", "alpha", "replacement")}
pad_cfg = {**PAD_PRESETS[args.pad], **{k: bool(v) if k == "replacement" else v for k, v in pad_flags.items()
                                       if v is not None}}  # the preset, then each explicit --pad-* flag on top
if not pad_cfg["t_low"] < pad_cfg["t_high"] or pad_cfg.get("ratio", 1.0) <= 0:
    raise UserError(f"--pad {args.pad}: need t_low < t_high and ratio > 0, got {pad_cfg}")
# what generate samples from (rollout.sampling_kwargs): nothing from the checkpoint's generation_config.json
sampling = {"temperature": args.temperature, "top_p": args.top_p, "top_k": "off", "repetition_penalty": 1.0,
            "max_new_tokens": args.max_new_tokens, "eval_temperature": args.eval_temperature,
            "eval_top_p": args.eval_top_p, "stop_tokens": ["<|im_end|>", "<|endoftext|>"]}
user_config = dict(vars(args), pad_config={k: str(v) for k, v in pad_cfg.items()})

# ----------------------------------------------------------------------------------------------------------------
# Data: read and validate every file before any model loads
instruction = INSTRUCTION if args.instruction else ""  # appended to every problem (paper Fig. 5)
train_rows = data.load_rl_rows(args.data, bool(args.skip_bad_rows), instruction)
val_sets = {label: data.load_rl_rows(p, bool(args.skip_bad_rows), instruction)
            for label, p in zip(data.unique_labels(args.val_data or []), args.val_data or [])}
checkpoint.claim_out_dir(args.out_dir)  # a second run into this folder stops here
resume_dir = checkpoint.prepare_out_dir(args.out_dir, resume=args.resume, overwrite=args.overwrite,
                                        user_config=user_config, total_steps=args.max_steps)

# ----------------------------------------------------------------------------------------------------------------
# Compute init, processor, prompt filter
ddp, rank, local_rank, world_size, device = dist.compute_init()
master_process = rank == 0
set_seed(args.seed, bool(args.deterministic))
print0(json.dumps(user_config, indent=1, default=str))
if args.prompts_per_step % world_size:
    raise UserError(f"--prompts-per-step {args.prompts_per_step} must divide by the world size {world_size}")
local_prompts = args.prompts_per_step // world_size
G = args.group_size
N_local, N_global = local_prompts * G, args.prompts_per_step * G
processor = load_processor(args.model, min_pixels=args.min_pixels, max_pixels=args.max_pixels)
if args.max_prompt_length:
    train_rows, dropped = prompts.filter_long_prompts(processor, train_rows, args.max_prompt_length)
    print0(f"{args.data}: dropped {dropped} prompts longer than --max-prompt-length {args.max_prompt_length}")
    if not train_rows:
        raise UserError(f"{args.data}: every prompt is longer than --max-prompt-length {args.max_prompt_length}")

# ----------------------------------------------------------------------------------------------------------------
# Model, reference model, optimizer
model, _ = load_policy(resume_dir or args.model, device, ddp, grad_checkpointing=bool(args.grad_checkpointing),
                            freeze_vision_tower=bool(args.freeze_vision))  # paper §5.1: TRL freezes vision
print0(f"policy {resume_dir or args.model}: {count_params(model):,} params, {count_params(model, True):,} trainable")
ref_model = None
if args.kl_coef > 0:  # mrl loads no reference model at all; trl's reference is the stage's starting checkpoint
    ref_model, _ = load_policy(args.model, device, ddp)
    ref_model.requires_grad_(False).eval()
    print0(f"reference {args.model}: frozen, for the k3 KL (coef {args.kl_coef})")
params = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), weight_decay=args.weight_decay)
suppress_ids = vision_token_ids(processor)
pad_token_id = processor.tokenizer.pad_token_id
print0(f"{len(train_rows)} train prompts | {args.prompts_per_step} prompts x G {G} = {N_global} rollouts/step "
       f"({N_local} per rank) | {args.optim_batch_seqs or 'all'} selected sequences per optimizer step | "
       f"{args.max_steps} steps | PAD {args.pad}: {pad_cfg}")


def step_prompts(step):
    """This rank's prompts for `step` (a seeded permutation per epoch: resume needs only the step number)."""
    idx = data.step_indices(len(train_rows), args.prompts_per_step, step, args.seed)
    return [train_rows[i] for i in idx[rank * local_prompts:(rank + 1) * local_prompts]]


@torch.no_grad()
def evaluate(rows):
    """Mean accuracy over ranks of `eval_samples` samples per held-out prompt."""
    rows = rows[:args.eval_limit] if args.eval_limit else rows
    mine = rows[rank::world_size]
    model.eval()
    with dist.gathered_params(model), autocast(device, ddp):
        outs = generate_rollouts(model, processor, [r["messages"] for r in mine], group_size=args.eval_samples,
                                 max_new_tokens=args.max_new_tokens, temperature=args.eval_temperature,
                                 top_p=args.eval_top_p, micro_batch_size=args.generate_batch_seqs,
                                 suppress_ids=suppress_ids, seed=args.seed + 7, synced_gpus=False if ddp else None)
    model.train()
    correct = sum(accuracy_reward(o["text"], mine[o["prompt_index"]]["answer"]) for o in outs)
    total = dist.all_reduce_dict({"correct": correct, "count": len(outs)}, device)
    return total["correct"] / max(total["count"], 1)


def run_eval(step):
    """Held-out accuracy on every --val-data file: one print line and one metrics record {"step", "eval/*"}, which
    also carries the budget spent so far (training seconds and tokens: equal-time / equal-token comparisons)."""
    t0 = time.perf_counter()
    record = {"step": step, **{f"eval/{name}/accuracy": evaluate(rows) for name, rows in val_sets.items()}}
    print0(f"step {step:4d} | eval " + " | ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in record.items() if k != "step"))
    metrics.log({**record, **budget_so_far(), "time/eval_s_cum": spent["eval_s"]})
    spent["eval_s"] += time.perf_counter() - t0


def budget_so_far():
    """Cumulative training wall-clock (the sum of time/step: rollouts, PAD, updates; no evals, dumps, saves or
    start-up) and trained tokens (completion tokens through the policy-gradient update, repeats and epochs counted)."""
    return {"time/train_s_cum": spent["train_s"], "train/tokens_cum": spent["tokens"]}


def micro_batch(local_idx):
    """Model inputs for this rank's sequences `local_idx`; an empty list is a zero-weight filler (one real sequence,
    all of its tokens masked) that keeps the FSDP collectives in step with the other ranks."""
    return collate_rollouts([seqs[i] for i in local_idx] or seqs[:1], pad_token_id)


def stored_logps(local_idx, store, like):
    """(B, T) log-probs stored per sequence (old or reference) for the micro-batch, aligned with `like`."""
    out = like.detach().clone()  # (B, T) positions past a sequence's length are masked anyway
    for row, i in enumerate(local_idx):
        out[row, :store[i].numel()] = store[i].to(like.device)
    return out


def entropy_coef_now():  # grpo.entropy_coef at this update (the counter the loop advances)
    return entropy_coef(entropy_updates, args.entropy_coef, args.entropy_warmup, args.entropy_decay,
                        args.entropy_min)


def optimizer_step(micro_batches, old, ref):
    """One optimizer step over this rank's micro-batches (local sequence indices); returns summed token stats.
    The loss of each micro-batch is its token SUM / the token count of the whole step over all ranks (§3 of
    docs/paper_notes.md), so the update does not depend on how sequences are grouped or spread over ranks."""
    local_tokens = sum(seqs[i]["num_tokens"] for mb in micro_batches for i in mb)
    global_tokens = dist.all_reduce_dict({"tokens": local_tokens}, device)["tokens"]
    totals = {}
    for mb in micro_batches:
        batch = micro_batch(mb)
        with autocast(device, ddp):
            logps = completion_logps(model, batch, temperature=args.temperature, suppress_ids=suppress_ids)  # (B, T)
        mask = batch["completion_mask"].to(device) & bool(mb)  # (B, T) all False for a filler
        adv = torch.tensor([float(advantages[i]) for i in mb] or [0.0], device=device)  # (B,)
        loss, stats = policy_loss(logps, stored_logps(mb, old, logps) if old else logps.detach(), adv, mask,
                                  clip_low=args.clip_low, clip_high=args.clip_high, dual_clip=args.dual_clip,
                                  ref_logps=stored_logps(mb, ref, logps) if ref else None, kl_coef=args.kl_coef,
                                  entropy_coef=entropy_coef_now(), num_tokens=max(global_tokens, 1))
        (loss * world_size).backward()  # FSDP averages gradients over ranks: x world_size makes it the global sum
        tokens = float(stats.pop("tokens"))
        for key, value in stats.items():
            totals[key] = totals.get(key, 0.0) + float(value) * tokens
        totals["tokens"] = totals.get("tokens", 0.0) + tokens
    norm = dist.grad_norm_value(torch.nn.utils.clip_grad_norm_(params, args.clip_grad))
    if math.isfinite(norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return totals, norm


# ----------------------------------------------------------------------------------------------------------------
# Resume
start_step, entropy_updates, pad_empty_steps, bad_steps = 0, 0, 0, 0
spent = {"train_s": 0.0, "eval_s": 0.0, "tokens": 0.0}  # budget counters, saved in the resume state
if resume_dir:
    extra = checkpoint.load_resume(resume_dir, model, optimizer, ddp)
    checkpoint.set_rng_state(extra["rng"])
    start_step, entropy_updates, pad_empty_steps = extra["step"], extra["entropy_updates"], extra["pad_empty_steps"]
    spent.update(extra.get("spent", {}))
    print0(f"resumed from {resume_dir} at step {start_step}")
if args.resume and master_process:  # drop what was logged after the checkpoint (everything, without one)
    truncate_jsonl(os.path.join(args.out_dir, "metrics.jsonl"), start_step)
metrics = MetricsLogger(args.out_dir, enabled=master_process)


def save(name, step):
    """Collective under FSDP. Step folders carry the resume state; final/ is the HF folder the next stage loads."""
    extra = {"rng": checkpoint.rng_state(), "step": step, "entropy_updates": entropy_updates,
             "pad_empty_steps": pad_empty_steps, "spent": dict(spent)}
    checkpoint.save_checkpoint(os.path.join(args.out_dir, name), model, processor,
                               {"user_config": user_config, "sampling": sampling, "step": step, "stage": args.stage},
                               optimizer=None if name == "final" else optimizer, extra=extra, ddp=ddp)


# ----------------------------------------------------------------------------------------------------------------
# Training loop
timer = Timer(sync_cuda=device.type == "cuda")
model.train()
# a progress bar in terminals only (logs and pipes get the one-line-per-step prints alone)
pbar = tqdm(total=args.max_steps, initial=start_step, desc=args.stage, disable=not (master_process and sys.stderr.isatty()))
for step in range(start_step, args.max_steps):
    if args.eval_every and step % args.eval_every == 0 and val_sets:
        run_eval(step)
    t_step = time.perf_counter()

    # ---- 1. rollouts: G samples per prompt (paper §4.1, Algorithm 1 input B)
    rows = step_prompts(step)
    model.eval()
    gathered = dist.gathered_params(model) if args.gather_for_rollout else contextlib.nullcontext()
    with timer("generate"), gathered, autocast(device, ddp):
        # seeds derive from (seed, step, global prompt index): the same rollouts at any world size; with the weights
        # gathered there are no collectives while decoding, so a rank that finishes early stops (no synced_gpus)
        seqs = generate_rollouts(model, processor, [r["messages"] for r in rows], group_size=G,
                                 max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                                 micro_batch_size=args.generate_batch_seqs, suppress_ids=suppress_ids,
                                 seed=args.seed * 1_000_003 + step, prompt_offset=rank * local_prompts,
                                 synced_gpus=False if ddp and args.gather_for_rollout else None,
                                 share_prefill=bool(args.share_prefill))
    model.train()

    # ---- 2. rewards (paper §2.1, eq. 5-6) and group advantages (eq. 3; a prompt's G samples sit on one rank)
    golds = [rows[s["prompt_index"]]["answer"] for s in seqs]
    totals, components = compute_rewards([s["text"] for s in seqs], golds, [s["num_tokens"] for s in seqs],
                                         weights={"accuracy": args.w_accuracy, "format": args.w_format,
                                                  "length": args.w_length}, length_budget=args.length_budget)
    advantages = group_advantages(torch.tensor(totals), G, scale_by_std=bool(args.scale_by_std))  # (N_local,)

    # ---- 3. PAD over the global batch (paper §4.1.1, Algorithm 1): same generator on every rank -> same selection
    global_adv = torch.cat([torch.as_tensor(a) for a in dist.all_gather_objects(advantages)])  # (N_global,)
    tau = pad_tau(step, args.max_steps, args.pad_tau_start, args.pad_tau_end)
    selected = pad_select(global_adv, **{**pad_cfg, "tau": tau},
                          generator=torch.Generator().manual_seed(args.seed * 7919 + step))  # (k,) global indices
    if selected.numel() == 0:
        pad_empty_steps += 1
        if args.pad_empty == "full":
            selected = torch.arange(N_global)  # (N_global,) the released code's fallback

    # ---- 4. the update plan: optimizer steps of --optim-batch-seqs, micro-batches per rank, fillers
    lengths = [n for part in dist.all_gather_objects([(s["prompt_ids"].numel(), s["num_tokens"]) for s in seqs])
               for n in part]
    plan = plan_update(selected.tolist(), lengths, world_size=world_size, seqs_per_rank=N_local,
                       optim_batch_seqs=args.optim_batch_seqs, micro_batch_size=args.micro_batch_size,
                       micro_batch_tokens=args.micro_batch_tokens)
    my_plan = [step_plan[rank] for step_plan in plan]  # [optimizer step][micro-batch] -> local indices

    # ---- 5. old log-probs (the policy moves within the step) and reference log-probs, no grad, same forwards
    multi_update = args.ppo_epochs * len(plan) > 1
    old, ref = {}, {}
    with timer("logprobs"), torch.no_grad(), autocast(device, ddp):
        for mb in (mb for micro_batches in my_plan for mb in micro_batches if multi_update or ref_model):
            batch = micro_batch(mb)
            if multi_update:
                old.update(zip(mb, completion_logps(model, batch, temperature=args.temperature, suppress_ids=suppress_ids).cpu()))
            if ref_model is not None:
                ref.update(zip(mb, completion_logps(ref_model, batch, temperature=args.temperature, suppress_ids=suppress_ids).cpu()))

    # -------- TRAINING SECTION BEGIN --------
    stats = {k: 0.0 for k in ("clip_frac_low", "clip_frac_high", "dual_clip_frac", "ratio_mean", "kl", "entropy", "tokens")}
    grad_norms, coef_logged = [], entropy_coef_now()  # the coefficient of this step's first update, for the log
    with timer("update"):
        for epoch in range(args.ppo_epochs):
            for micro_batches in my_plan:
                step_stats, norm = optimizer_step(micro_batches, old, ref)
                bad_steps = nonfinite_streak(norm, bad_steps)  # stops after 3 non-finite in a row
                stats = {k: stats.get(k, 0.0) + v for k, v in step_stats.items()}
                grad_norms.append(norm)
                entropy_updates += 1
    # -------- TRAINING SECTION END --------

    # ---- 6. metrics: named (sum, count) reductions over ranks, one line, metrics.jsonl, rollout dumps
    times = timer.pop()
    lengths_local = [s["num_tokens"] for s in seqs]
    sums = dist.all_reduce_dict({
        "reward/total": sum(totals), **{f"reward/{k}": sum(v) for k, v in components.items()},
        "rollout/len_mean": sum(lengths_local), "rollout/truncated": sum(s["truncated"] for s in seqs),
        "grpo/zero_adv_frac": int((advantages == 0).sum()), "count": len(seqs),
        **{f"train/{k}": v for k, v in stats.items()}}, device)
    n, trained_tokens = sums.pop("count"), sums.get("train/tokens", 0.0)
    record = {"step": step + 1, **{k: v / n for k, v in sums.items() if not k.startswith("train/")},
              **{k: v / max(trained_tokens, 1) for k, v in sums.items() if k.startswith("train/") and k != "train/tokens"}}
    sel_abs = global_adv[selected].abs() if selected.numel() else torch.zeros(1)
    real_tokens, padded_tokens = plan_token_counts(plan, lengths, N_local)
    record.update({
        "rollout/len_max": dist.all_reduce_dict({"m": max(lengths_local)}, device, op="max")["m"],
        "pad/effective": int(((global_adv.abs() > pad_cfg["t_low"]) & (global_adv.abs() < pad_cfg["t_high"])).sum()),
        "pad/selected": int(selected.numel()), "pad/unique": int(selected.unique().numel()),
        "pad/adv_abs_selected": float(sel_abs.mean()), "pad/adv_abs_all": float(global_adv.abs().mean()),
        "pad/empty_steps": pad_empty_steps, "pad/tau": tau if pad_cfg.get("weighting") == "softmax" else None,
        "train/updates": len(grad_norms), "train/micro_batches": sum(len(p[0]) for p in plan) * world_size,
        "train/padded_frac": 1 - real_tokens / padded_tokens if padded_tokens else 0.0,
        "train/grad_norm": max(grad_norms) if grad_norms else 0.0, "train/lr": args.lr,
        "train/entropy_coef": coef_logged, "train/tokens": trained_tokens,
        **{f"time/{k}": v for k, v in times.items()}, "time/step": time.perf_counter() - t_step})
    record["time/tokens_per_s"] = sums["rollout/len_mean"] / record["time/step"]
    record["time/gen_tokens_per_s"] = sums["rollout/len_mean"] / max(times.get("generate", 0.0), 1e-9)  # all ranks
    if device.type == "cuda":
        record["gpu/peak_gb"] = torch.cuda.max_memory_allocated(device) / 1e9  # this rank, since the start
    spent["train_s"] += record["time/step"]
    spent["tokens"] += trained_tokens
    record.update(budget_so_far())
    metrics.log(record)
    pbar.update(1)
    if (step + 1) % args.log_every == 0 or step == args.max_steps - 1:
        print0(f"step {step + 1:4d}/{args.max_steps} | reward {record['reward/total']:.3f} | acc {record['reward/accuracy']:.3f} | "
               f"zero_adv {record['grpo/zero_adv_frac']:.2f} | pad {record['pad/selected']}/{N_global} (E {record['pad/effective']}) | "
               f"updates {record['train/updates']} | len {record['rollout/len_mean']:.1f} | kl {record['train/kl']:.4f} | "
               f"gnorm {record['train/grad_norm']:.3f} | gen {times.get('generate', 0):.2f}s upd {times.get('update', 0):.2f}s | dt {record['time/step']:.2f}s")
    if args.dump_every and step % args.dump_every == 0:
        picked = torch.tensor([i - rank * N_local for i in selected.tolist() if i // N_local == rank], dtype=torch.long)
        dump = [{"prompt_id": rows[s["prompt_index"]]["id"], "completion": s["text"], "answer": golds[i],
                 "reward": totals[i], **{f"reward_{k}": v[i] for k, v in components.items()},
                 "advantage": float(advantages[i]), "selected": bool((picked == i).any()),
                 "times_selected": int((picked == i).sum())} for i, s in enumerate(seqs)]
        parts = dist.all_gather_objects(dump)
        if master_process:
            os.makedirs(os.path.join(args.out_dir, "rollouts"), exist_ok=True)
            with open(os.path.join(args.out_dir, "rollouts", f"step_{step:06d}.jsonl"), "w") as f:
                for part in parts:
                    f.writelines(json.dumps(r) + "\n" for r in part)
    if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < args.max_steps:
        save(f"step_{step + 1:06d}", step + 1)

pbar.close()
if val_sets:
    run_eval(args.max_steps)
save("final", args.max_steps)
print0(f"PAD selected nothing on {pad_empty_steps} steps ({args.pad_empty}) | done: {os.path.join(args.out_dir, 'final')}")
dist.compute_cleanup()
