"""Stages 2 and 3 of ReVisual-R1: GRPO + PAD, multimodal (--stage mrl) then text-only (--stage trl).

    python train_grpo.py --stage mrl      # tiny model from runs/sft/final, toy colour-of-the-shape task, CPU
    python train_grpo.py --stage trl      # from runs/mrl/final, toy arithmetic, vision tower frozen, k3 KL
    torchrun --nproc_per_node=8 train_grpo.py --stage mrl --model runs/sft/final --data mmrl.jsonl \
        --val-data mm_val.jsonl --out-dir runs/mrl --grad-checkpointing 1

Each step (paper §4, Algorithm 1): prompts -> G rollouts per prompt -> rewards -> group advantages -> PAD
selection -> (old / reference log-probs) -> clipped-surrogate updates over micro-batches with the global token
count -> optimizer step. Flags left unset take the stage preset (and the toy preset for the tiny model); the
resolved values are printed and saved in every meta.json.

Stage presets (paper §5.1, paper.md §2):
    mrl: multimodal data, no KL and no reference model loaded, vision tower trainable.
    trl: text data, vision tower frozen (requires_grad False, out of the optimizer), k3 KL 2e-3 to the
         reference (the stage's starting checkpoint), entropy bonus 0.02 after a warm-up, decayed x0.985/update.

Deviations from the paper / released code:
1. PAD defaults to `--pad paper` (softmax over |A|/tau, tau 1.0 -> 0.3), our reading of §4.1.1; `--pad code` is the
   released configuration. See nanorevisual/grpo.py for the PAD deviations.
2. PAD runs over the global rollout batch (identical selection on every rank); ranks then train on the selected
   sequences they own, and pad their micro-batch count to the maximum over ranks with zero-weight micro-batches.
3. The loss is a token mean over each optimizer step (all micro-batches and ranks), not a per-micro-batch mean.
4. The entropy-coefficient schedule is saved in the resume state (the released code restarts it).
5. Rollouts use HF generate (the released code uses vLLM): no separate inference engine, no weight sync.
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

from nanorevisual import checkpoint, data, dist
from nanorevisual.common import MetricsLogger, Timer, autocast, set_seed, truncate_jsonl
from nanorevisual.dist import print0
from nanorevisual.grpo import PAD_PRESETS, group_advantages, pad_select, pad_tau, policy_loss
from nanorevisual.model import count_params, is_toy_model, vision_token_ids
from nanorevisual.rewards import accuracy_reward, compute_rewards
from nanorevisual.rollout import collate_rollouts, completion_logps, generate_rollouts

# ----------------------------------------------------------------------------------------------------------------
# CLI (None = take the stage / model preset)
parser = argparse.ArgumentParser(description="GRPO + PAD (ReVisual-R1 stages 2 and 3)")
parser.add_argument("--stage", choices=["mrl", "trl"], default="mrl", help="mrl: multimodal RL, trl: text RL")
# Model / data
parser.add_argument("--model", "--init", dest="model", default=None, help="checkpoint folder of the previous stage")
parser.add_argument("--data", default=None, help="RL JSONL/parquet: problem, answer, images")
parser.add_argument("--val-data", nargs="*", default=None, help="held-out files for the periodic eval")
parser.add_argument("--out-dir", default=None, help="checkpoints, metrics.jsonl, rollouts/ (default runs/<stage>)")
parser.add_argument("--skip-bad-rows", type=int, default=0, help="1: skip malformed rows (counted)")
# Rollout
parser.add_argument("--prompts-per-step", type=int, default=None, help="prompts per rollout step, all ranks together")
parser.add_argument("--group-size", type=int, default=None, help="G: samples per prompt")
parser.add_argument("--temperature", type=float, default=None, help="sampling temperature")
parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling")
parser.add_argument("--max-new-tokens", type=int, default=None, help="completion length cap")
parser.add_argument("--rollout-batch-size", type=int, default=None, help="sequences per generate call (KV memory)")
parser.add_argument("--gather-for-rollout", type=int, default=1, help="FSDP: 1 = all-gather the weights once per "
                    "rollout phase (fast, needs a full bf16 copy per GPU); 0 = per-layer gathers every token")
# GRPO
parser.add_argument("--lr", type=float, default=None, help="AdamW learning rate (constant)")
parser.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay")
parser.add_argument("--kl-coef", type=float, default=None, help="k3 KL coefficient; 0 = no reference model")
parser.add_argument("--clip-low", type=float, default=0.2, help="ε_low of the clipped ratio")
parser.add_argument("--clip-high", type=float, default=0.25, help="ε_high of the clipped ratio (clip-higher)")
parser.add_argument("--dual-clip", type=float, default=3.0, help="dual-clip constant c for A < 0")
parser.add_argument("--ppo-epochs", type=int, default=1, help="passes over the PAD-selected batch")
parser.add_argument("--mini-batches", type=int, default=None, help="optimizer steps per pass over the selected batch")
parser.add_argument("--micro-batch-size", type=int, default=None, help="sequences per forward/backward per rank")
parser.add_argument("--scale-by-std", type=int, default=1, help="1: A = (r-mean)/std (GRPO), 0: r-mean (Dr. GRPO)")
parser.add_argument("--entropy-coef", type=float, default=None, help="entropy bonus after warm-up (code: 0.02)")
parser.add_argument("--entropy-warmup", type=int, default=None, help="updates with entropy coef 0 first")
parser.add_argument("--entropy-decay", type=float, default=0.985, help="entropy coef x this per update")
parser.add_argument("--entropy-min", type=float, default=0.0, help="entropy coef floor")
parser.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm")
parser.add_argument("--grad-checkpointing", type=int, default=0, help="1: activation checkpointing")
parser.add_argument("--freeze-vision", type=int, default=None, help="1: freeze the vision tower")
# Rewards (paper §3)
parser.add_argument("--w-accuracy", type=float, default=1.0, help="weight of the boxed-answer accuracy reward")
parser.add_argument("--w-format", type=float, default=0.0, help="weight of the <think>..</think> \\boxed{} format reward")
parser.add_argument("--w-length", type=float, default=0.0, help="weight of the efficient-length reward (eq. 5-6)")
parser.add_argument("--length-budget", type=int, default=None, help="L_budget of the length reward")
# PAD (paper §4.1.1)
parser.add_argument("--pad", choices=list(PAD_PRESETS), default="paper", help="PAD preset (paper Table 4 rows)")
parser.add_argument("--pad-t-low", type=float, default=None, help="T_low: drop |A| <= this")
parser.add_argument("--pad-t-high", type=float, default=None, help="T_high: drop |A| >= this")
parser.add_argument("--pad-ratio", type=float, default=None, help="ρ: select ceil(ρ N) sequences")
parser.add_argument("--pad-weighting", default=None, help="softmax | power | uniform | all")
parser.add_argument("--pad-tau-start", type=float, default=1.0, help="softmax τ at step 0")
parser.add_argument("--pad-tau-end", type=float, default=0.3, help="softmax τ at the last step")
parser.add_argument("--pad-alpha", type=float, default=None, help="α of the power weighting")
parser.add_argument("--pad-replacement", type=int, default=None, help="1: sample with replacement")
parser.add_argument("--pad-empty", choices=["skip", "full"], default="skip", help="PAD selects nothing: skip the step or train on the full batch")
# Runtime / eval / checkpointing
parser.add_argument("--max-steps", type=int, default=None, help="rollout steps")
parser.add_argument("--seed", type=int, default=0, help="seed for data order, sampling and PAD")
parser.add_argument("--resume", type=int, default=0, help="1: continue from the last OUT_DIR/step_* folder")
parser.add_argument("--save-every", type=int, default=0, help="save OUT_DIR/step_XXXXXX every N steps (0: final only)")
parser.add_argument("--eval-every", type=int, default=None, help="held-out accuracy every N steps")
parser.add_argument("--eval-samples", type=int, default=1, help="samples per held-out prompt")
parser.add_argument("--eval-temperature", type=float, default=0.0, help="0 = greedy")
parser.add_argument("--eval-limit", type=int, default=0, help="evaluate only the first N held-out prompts (0: all)")
parser.add_argument("--dump-every", type=int, default=None, help="write OUT_DIR/rollouts/step_XXXXXX.jsonl every N steps")
parser.add_argument("--log-every", type=int, default=1, help="print a line every N steps")
args = parser.parse_args()

tiny = is_toy_model(args.model or {"mrl": "runs/sft/final", "trl": "runs/mrl/final"}[args.stage])
STAGE = {
    "mrl": {"kl_coef": 0.0, "freeze_vision": 0, "entropy_coef": 0.0, "entropy_warmup": 0},
    "trl": {"kl_coef": 2e-3, "freeze_vision": 1, "entropy_coef": 0.02, "entropy_warmup": 140},  # paper Table 5
}[args.stage]
TOY = {  # shared/toy-recipe.md §4 (G 8, 16 prompts, T 1.0, one update per batch); lr 5e-5: 1e-4 collapsed here
    "prompts_per_step": 16, "group_size": 8, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 24,
    "rollout_batch_size": 128, "lr": 5e-5, "weight_decay": 0.0, "mini_batches": 1, "micro_batch_size": 64,
    "max_steps": {"mrl": 150, "trl": 60}[args.stage], "eval_every": 25, "dump_every": 25, "length_budget": 24}
PAPER = {  # paper.md §2c-2d, Table 5: rollout 512 prompts x 8, 4 optimizer steps per rollout, lr 1e-6 constant
    "prompts_per_step": 512, "group_size": 8, "temperature": 1.0, "top_p": 0.95, "max_new_tokens": 8192,
    "rollout_batch_size": 64, "lr": 1e-6, "weight_decay": 1e-2, "mini_batches": 4, "micro_batch_size": 2,
    "max_steps": 200, "eval_every": 5, "dump_every": 5, "length_budget": 8192}
for key, value in {**(TOY if tiny else PAPER), **STAGE}.items():
    if getattr(args, key) is None:
        setattr(args, key, value)
if tiny:
    toy_dir = None
    if args.data is None or args.val_data is None:
        from nanorevisual.toy import ensure_toy_data
        toy_dir = ensure_toy_data()
    first, second = ("mm", "text") if args.stage == "mrl" else ("text", "mm")
    args.data = args.data or os.path.join(toy_dir, f"{first}_train.jsonl")
    if args.val_data is None:  # also the other task, to see retention
        args.val_data = [os.path.join(toy_dir, f"{first}_val.jsonl"), os.path.join(toy_dir, f"{second}_val.jsonl")]
    default_model = {"mrl": "runs/sft/final", "trl": "runs/mrl/final"}[args.stage]
    args.model = args.model or default_model
    if args.model != "tiny" and not os.path.exists(os.path.join(args.model, "config.json")):
        raise SystemExit(f"{args.model} not found: run {'python train_sft.py' if args.stage == 'mrl' else 'python train_grpo.py --stage mrl'} first")
assert args.data, "--data is required for a real model"
args.out_dir = args.out_dir or f"runs/{args.stage}"
pad_cfg = dict(PAD_PRESETS[args.pad])  # the preset, then each explicit --pad-* flag on top
for flag, key in (("pad_t_low", "t_low"), ("pad_t_high", "t_high"), ("pad_ratio", "ratio"),
                  ("pad_weighting", "weighting"), ("pad_alpha", "alpha"), ("pad_replacement", "replacement")):
    if getattr(args, flag) is not None:
        pad_cfg[key] = bool(getattr(args, flag)) if key == "replacement" else getattr(args, flag)
user_config = dict(vars(args), pad_config={k: str(v) for k, v in pad_cfg.items()})

# ----------------------------------------------------------------------------------------------------------------
# Compute init
ddp, rank, local_rank, world_size, device = dist.compute_init()
master_process = rank == 0
set_seed(args.seed)
print0(json.dumps(user_config, indent=1, default=str))
assert args.prompts_per_step % world_size == 0, f"--prompts-per-step must divide by world size {world_size}"
local_prompts = args.prompts_per_step // world_size
G = args.group_size
N_local, N_global = local_prompts * G, args.prompts_per_step * G

# ----------------------------------------------------------------------------------------------------------------
# Model, reference model, optimizer
resume_dir = checkpoint.find_last_step(args.out_dir) if args.resume else None
model, processor = dist.load_policy(resume_dir or args.model, device, ddp,
                                    grad_checkpointing=bool(args.grad_checkpointing),
                                    freeze_vision_tower=bool(args.freeze_vision))  # paper §5.1: TRL freezes vision
print0(f"policy {resume_dir or args.model}: {count_params(model):,} params, {count_params(model, True):,} trainable")
ref_model = None
if args.kl_coef > 0:  # mrl loads no reference model at all; trl's reference is the stage's starting checkpoint
    ref_model, _ = dist.load_policy(args.model, device, ddp)
    ref_model.requires_grad_(False).eval()
params = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), weight_decay=args.weight_decay)
suppress_ids = vision_token_ids(processor)
pad_token_id = processor.tokenizer.pad_token_id

# ----------------------------------------------------------------------------------------------------------------
# Data
train_rows = data.load_rl_rows(args.data, skip_bad=bool(args.skip_bad_rows))
val_sets = {os.path.basename(p).rsplit(".", 1)[0]: data.load_rl_rows(p, skip_bad=bool(args.skip_bad_rows))
            for p in args.val_data or []}
steps_per_epoch = max(1, len(train_rows) // args.prompts_per_step)
print0(f"{len(train_rows)} train prompts | {args.prompts_per_step} prompts x G {G} = {N_global} rollouts/step "
       f"({N_local} per rank) | {args.mini_batches} optimizer steps per pass | {args.max_steps} steps | "
       f"PAD {args.pad}: {pad_cfg}")


def step_prompts(step):
    """This rank's prompts for `step`: a seeded permutation per epoch, so resume needs only the step number."""
    epoch, offset = divmod(step, steps_per_epoch)
    order = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
    idx = order[offset * args.prompts_per_step:(offset + 1) * args.prompts_per_step].tolist()
    idx = (idx * math.ceil(args.prompts_per_step / len(idx)))[:args.prompts_per_step]  # tiny datasets wrap around
    return [train_rows[i] for i in idx[rank * local_prompts:(rank + 1) * local_prompts]]


@torch.no_grad()
def evaluate(rows):
    """Mean accuracy (and (sum, count) over ranks) of `eval_samples` samples per held-out prompt."""
    rows = rows[:args.eval_limit] if args.eval_limit else rows
    mine = rows[rank::world_size]
    model.eval()
    with dist.gathered_params(model), autocast(device, ddp):
        outs = generate_rollouts(model, processor, [r["messages"] for r in mine], group_size=args.eval_samples,
                                 max_new_tokens=args.max_new_tokens, temperature=args.eval_temperature,
                                 top_p=1.0, micro_batch_size=args.rollout_batch_size, suppress_ids=suppress_ids,
                                 seed=args.seed + 7, synced_gpus=False if ddp else None)
    correct = sum(accuracy_reward(o["text"], mine[o["prompt_index"]]["answer"]) for o in outs)
    model.train()
    correct, count = dist.all_reduce_sum([correct, len(outs)], device)
    return correct / max(count, 1)


def run_eval(step):
    """Held-out accuracy on every --val-data file: one print line and one metrics record {"step", "eval/*"}."""
    record = {"step": step, **{f"eval/{name}/accuracy": evaluate(rows) for name, rows in val_sets.items()}}
    print0(f"step {step:4d} | eval " + " | ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in record.items() if k != "step"))
    metrics.log(record)


def stored_logps(mb, key, like):
    """Per-sequence (Tc,) log-probs saved under `key` -> (B, T) on like's device (positions past Tc are masked)."""
    out = like.detach().clone()  # (B, T)
    for i, s in enumerate(mb or []):
        out[i, :s[key].numel()] = s[key].to(like.device)
    return out


def sequence_batches(seqs, size):
    return [seqs[i:i + size] for i in range(0, len(seqs), size)]


# ----------------------------------------------------------------------------------------------------------------
# Resume
start_step, entropy_updates, pad_empty_steps = 0, 0, 0
if resume_dir:
    extra = checkpoint.load_resume(resume_dir, model, optimizer, ddp)
    checkpoint.set_rng_state(extra["rng"])
    start_step, entropy_updates, pad_empty_steps = extra["step"], extra["entropy_updates"], extra["pad_empty_steps"]
    print0(f"resumed from {resume_dir} at step {start_step}")
    if master_process:
        truncate_jsonl(os.path.join(args.out_dir, "metrics.jsonl"), start_step)
metrics = MetricsLogger(args.out_dir, enabled=master_process)


def save(name, step):
    """Collective under FSDP. Step folders carry the resume state; final/ is the HF folder the next stage loads."""
    extra = {"rng": checkpoint.rng_state(), "step": step, "entropy_updates": entropy_updates,
             "pad_empty_steps": pad_empty_steps}
    checkpoint.save_checkpoint(os.path.join(args.out_dir, name), model, processor,
                               {"user_config": user_config, "step": step, "stage": args.stage},
                               optimizer=None if name == "final" else optimizer, extra=extra, ddp=ddp)


def entropy_coef_now():
    """Released code's schedule: 0 for the warm-up updates, then coef * decay^k, floored at entropy_min."""
    if args.entropy_coef == 0 or entropy_updates < args.entropy_warmup:
        return 0.0
    return max(args.entropy_min, args.entropy_coef * args.entropy_decay ** (entropy_updates - args.entropy_warmup))


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
    record = {"step": step + 1}  # finished steps, as in train_sft.py

    # ---- 1. rollouts: G samples per prompt (paper §4, Algorithm 1 line 3)
    rows = step_prompts(step)
    model.eval()
    gathered = dist.gathered_params(model) if args.gather_for_rollout else contextlib.nullcontext()
    with timer("generate"), gathered, autocast(device, ddp):
        # sampling seeds derive from (seed, step, global prompt index): the same rollouts at any world size
        seqs = generate_rollouts(model, processor, [r["messages"] for r in rows], group_size=G,
                                 max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                                 micro_batch_size=args.rollout_batch_size, suppress_ids=suppress_ids,
                                 seed=args.seed * 1_000_003 + step, prompt_offset=rank * local_prompts,
                                 synced_gpus=False if ddp and args.gather_for_rollout else None)
    # gathered: no collectives while decoding, so a rank that finishes early stops (no synced_gpus)
    model.train()

    # ---- 2. rewards (paper §3) and group advantages (DeepSeekMath §4.1.2; groups are contiguous, on one rank)
    golds = [rows[s["prompt_index"]]["answer"] for s in seqs]
    totals, components = compute_rewards([s["text"] for s in seqs], golds, [s["num_tokens"] for s in seqs],
                                         weights={"accuracy": args.w_accuracy, "format": args.w_format,
                                                  "length": args.w_length}, length_budget=args.length_budget)
    rewards = torch.tensor(totals, dtype=torch.float32)  # (N_local,)
    advantages = group_advantages(rewards, G, scale_by_std=bool(args.scale_by_std))  # (N_local,)

    # ---- 3. PAD over the global batch (paper §4.1.1): same generator seed on every rank -> same selection
    global_adv = torch.cat([torch.as_tensor(a) for a in dist.all_gather_objects(advantages)])  # (N_global,)
    pad_kwargs = dict(pad_cfg)
    if pad_kwargs.get("weighting") == "softmax":
        pad_kwargs["tau"] = pad_tau(step, args.max_steps, args.pad_tau_start, args.pad_tau_end)
    selected = pad_select(global_adv, **pad_kwargs,
                          generator=torch.Generator().manual_seed(args.seed * 7919 + step))  # (k,) global indices
    if selected.numel() == 0:
        pad_empty_steps += 1
        if args.pad_empty == "full":
            selected = torch.arange(N_global)  # (N_global,) the released code's fallback
    def owned(idx):  # global indices -> this rank's local indices (rank r generated [r*N_local, (r+1)*N_local))
        return (idx[(idx >= rank * N_local) & (idx < (rank + 1) * N_local)] - rank * N_local).tolist()

    mine = torch.tensor(owned(selected), dtype=torch.long)  # (k_rank,) repeats kept

    # ---- 4. updates: mini-batches x ppo epochs, each an optimizer step over micro-batches
    # Every rank must run the same number of forwards (FSDP collectives): pad to the max micro-batch count with
    # zero-weight micro-batches. The loss of a mini-batch is its token SUM / its global token count.
    stats_sum = {"clip_frac_low": 0.0, "clip_frac_high": 0.0, "dual_clip_frac": 0.0, "ratio_mean": 0.0, "kl": 0.0,
                 "entropy": 0.0}
    stats_tokens, grad_norms, updates = 0, [], 0
    # the selection (in PAD's sampled order) splits into mini-batches globally, so which sequences share an
    # optimizer step does not depend on the world size; each rank then trains on the ones it owns
    mini_size = math.ceil(selected.numel() / args.mini_batches)
    minis = [[dict(seqs[i], advantage=float(advantages[i])) for i in owned(selected[m * mini_size:(m + 1) * mini_size])]
             for m in range(args.mini_batches)]
    train_seqs = [s for mini in minis for s in mini]
    num_micro = [len(sequence_batches(m, args.micro_batch_size)) for m in minis]
    num_micro = [int(dist.all_reduce_max(n, device)) for n in num_micro]
    multi_update = args.ppo_epochs * args.mini_batches > 1
    skip = selected.numel() == 0  # identical on every rank (PAD is global)
    if not skip:
        # old log-probs (needed once the policy moves within a step) and reference log-probs, no grad
        # (FSDP: every rank runs the same number of forwards, so ranks with fewer sequences run dummy ones)
        with timer("logprobs"), torch.no_grad(), autocast(device, ddp):
            lp_batches = sequence_batches(train_seqs, args.micro_batch_size)
            num_lp = int(dist.all_reduce_max(len(lp_batches), device)) if multi_update or ref_model else 0
            for j in range(num_lp):
                mb = lp_batches[j] if j < len(lp_batches) else []
                batch = collate_rollouts(mb or seqs[:1], pad_token_id)
                if multi_update:
                    old = completion_logps(model, batch, temperature=args.temperature, suppress_ids=suppress_ids)
                if ref_model is not None:
                    ref = completion_logps(ref_model, batch, temperature=args.temperature, suppress_ids=suppress_ids)
                for i, s in enumerate(mb):
                    n = s["num_tokens"]
                    s["old_logps"] = old[i, :n].cpu() if multi_update else None
                    s["ref_logps"] = ref[i, :n].cpu() if ref_model is not None else None
        # -------- TRAINING SECTION BEGIN --------
        with timer("update"):
            for epoch in range(args.ppo_epochs):
                for mini, n_micro in zip(minis, num_micro):
                    local_tokens = sum(s["num_tokens"] for s in mini)
                    (global_tokens,) = dist.all_reduce_sum([local_tokens], device)
                    micro = sequence_batches(mini, args.micro_batch_size)
                    for j in range(n_micro):
                        mb = micro[j] if j < len(micro) else None
                        dummy = mb is None  # this rank ran out: a zero-weight forward keeps collectives in step
                        batch = collate_rollouts(mb or train_seqs[:1] or seqs[:1], pad_token_id)
                        with autocast(device, ddp):
                            logps = completion_logps(model, batch, temperature=args.temperature,
                                                     suppress_ids=suppress_ids)  # (B, T) fp32
                        mask = batch["completion_mask"].to(device)  # (B, T)
                        if dummy:
                            mask = torch.zeros_like(mask)
                        old_logps = stored_logps(mb, "old_logps", logps) if multi_update else logps.detach()  # (B, T) ratio 1 on-policy
                        ref_logps = stored_logps(mb, "ref_logps", logps) if ref_model is not None else None  # (B, T)
                        adv = torch.tensor([s["advantage"] for s in mb] if mb else [0.0], device=device)  # (B,)
                        loss, stats = policy_loss(logps, old_logps, adv, mask, clip_low=args.clip_low,
                                                  clip_high=args.clip_high, dual_clip=args.dual_clip,
                                                  ref_logps=ref_logps, kl_coef=args.kl_coef,
                                                  entropy_coef=entropy_coef_now(),
                                                  num_tokens=max(global_tokens, 1))
                        # FSDP averages gradients over ranks: x world_size makes it the sum / global token count
                        (loss * world_size).backward()
                        n_tok = int(stats["tokens"])
                        for key in stats_sum:
                            stats_sum[key] += float(stats[key]) * n_tok
                        stats_tokens += n_tok
                    norm = torch.nn.utils.clip_grad_norm_(params, args.clip_grad)
                    grad_norms.append(dist.grad_norm_value(norm))
                    if math.isfinite(grad_norms[-1]):
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    entropy_updates += 1
                    updates += 1
        # -------- TRAINING SECTION END --------

    # ---- 5. metrics: (sum, count) reductions over ranks, one line, metrics.jsonl, rollout dumps
    times = timer.pop()
    lengths = [s["num_tokens"] for s in seqs]
    zero_adv = int((advantages == 0).sum())
    sums = dist.all_reduce_sum([sum(totals), sum(components["accuracy"]), sum(components["format"]),
                                sum(components["length"]), sum(lengths), sum(s["truncated"] for s in seqs), zero_adv,
                                len(seqs), stats_tokens, *stats_sum.values()], device)
    n = sums[7]
    max_len = dist.all_reduce_max(max(lengths), device)
    sel_abs = global_adv[selected].abs() if selected.numel() else torch.zeros(1)
    record.update({
        "reward/total": sums[0] / n, "reward/accuracy": sums[1] / n, "reward/format": sums[2] / n,
        "reward/length": sums[3] / n, "rollout/len_mean": sums[4] / n, "rollout/len_max": max_len,
        "rollout/truncated": sums[5] / n, "grpo/zero_adv_frac": sums[6] / n,
        "pad/effective": int(((global_adv.abs() > pad_cfg["t_low"]) & (global_adv.abs() < pad_cfg["t_high"])).sum()),
        "pad/selected": int(selected.numel()), "pad/unique": int(selected.unique().numel()),
        "pad/adv_abs_selected": float(sel_abs.mean()), "pad/adv_abs_all": float(global_adv.abs().mean()),
        "pad/empty_steps": pad_empty_steps, "pad/tau": pad_kwargs.get("tau"),
        "train/updates": updates, "train/grad_norm": max(grad_norms) if grad_norms else 0.0, "train/lr": args.lr,
        "train/entropy_coef": entropy_coef_now(), "train/tokens": sums[8],
        **{f"train/{k}": v / max(sums[8], 1) for k, v in zip(stats_sum, sums[9:])},
        **{f"time/{k}": v for k, v in times.items()},
        "time/step": time.perf_counter() - t_step,
    })
    record["time/tokens_per_s"] = sums[4] / record["time/step"]
    metrics.log(record)
    pbar.update(1)
    if (step + 1) % args.log_every == 0 or step == args.max_steps - 1:
        print0(f"step {step + 1:4d}/{args.max_steps} | reward {record['reward/total']:.3f} | acc {record['reward/accuracy']:.3f} | "
               f"zero_adv {record['grpo/zero_adv_frac']:.2f} | pad {record['pad/selected']}/{N_global} (E {record['pad/effective']}) | "
               f"len {record['rollout/len_mean']:.1f} | kl {record['train/kl']:.4f} | clip {record['train/clip_frac_low'] + record['train/clip_frac_high']:.3f} | "
               f"gnorm {record['train/grad_norm']:.3f} | gen {times.get('generate', 0):.2f}s upd {times.get('update', 0):.2f}s | dt {record['time/step']:.2f}s")
    if args.dump_every and step % args.dump_every == 0:
        chosen = set(mine.tolist())
        dump = [{"prompt_id": rows[s["prompt_index"]]["id"], "completion": s["text"], "answer": golds[i],
                 "reward": totals[i], **{f"reward_{k}": v[i] for k, v in components.items()},
                 "advantage": float(advantages[i]), "selected": i in chosen,
                 "times_selected": int((mine == i).sum())} for i, s in enumerate(seqs)]
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
