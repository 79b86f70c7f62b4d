"""Stages 2 and 3 of ReVisual-R1: GRPO + PAD, multimodal (--stage mrl) then text-only (--stage trl).

    python train_grpo.py --stage mrl      # tiny model from runs/sft/final, toy colour task, CPU
    python train_grpo.py --stage trl      # from runs/mrl/final, toy arithmetic, vision frozen
    torchrun --nproc_per_node=8 train_grpo.py --stage mrl --model runs/sft/final --data mmrl.jsonl \
        --val-data mm_val.jsonl --out-dir runs/mrl --grad-checkpointing 1

One step (paper §4.1, Algorithm 1): prompts -> G rollouts each -> rewards -> group advantages ->
PAD selection -> update plan -> old / reference log-probs -> clipped-surrogate updates. Defaults:
the paper's values; STAGE: per stage; TOY: the tiny model's. Deviations: docs/paper_notes.md.
"""

import argparse
import json
import math
import os
import time
from contextlib import nullcontext

import torch

from nanorevisual import checkpoint, data, dist, prompts, toy
from nanorevisual.common import (MetricsLogger, Timer, UserError, autocast, check_flags,
                                 key_values, nonfinite_streak, one_line_errors, set_seed,
                                 truncate_jsonl)
from nanorevisual.dist import print0
from nanorevisual.grpo import (PAD_KNOBS, PAD_PRESETS, entropy_coef, group_advantages, loss_tokens,
                               pad_select, pad_tau, policy_loss)
from nanorevisual.logprobs import collate_rollouts, completion_logps
from nanorevisual.model import check_model_path, count_params, is_toy_model, load_policy
from nanorevisual.plan import plan_token_counts, plan_update
from nanorevisual.processor import load_processor, vision_token_ids
from nanorevisual.rewards import COMPONENTS, RELEASED_WEIGHTS, accuracy_reward, compute_rewards
from nanorevisual.rollout import generate_rollouts, sampling_kwargs

# -------------------------------------------------------------------------------------------------
# Configuration: the paper's values (Table 5, the released examples/config.yaml) are the defaults
parser = argparse.ArgumentParser(description="GRPO + PAD (ReVisual-R1 stages 2 and 3)")
add = parser.add_argument
add("--stage", choices=["mrl", "trl"], default="mrl", help="mrl: multimodal RL, trl: text RL")
add("--recipe", choices=["paper", "released"], default="paper", help="released: the released "
    "code's PAD, rewards, KL, entropy and loss aggregation (RECIPE below)")
add("--model", "--init", dest="model", default=None, help="the previous stage's final/ folder")
add("--data", default=None, help="RL JSONL/JSON/parquet: problem, answer, images")
add("--val-data", nargs="*", default=None, help="held-out files for the periodic eval")
add("--out-dir", default=None, help="checkpoints, metrics.jsonl, rollouts/ (default runs/<stage>)")
add("--instruction", type=int, default=1, help="1: append the paper's instruction to problems")
add("--skip-bad-rows", type=int, default=0, help="1: skip malformed rows (counted)")
add("--min-pixels", type=int, default=262144, help="images resized to at least this many pixels")
add("--max-pixels", type=int, default=4194304, help="... and at most this many")
add("--max-prompt-length", type=int, default=8192, help="drop longer prompts, counted (0: keep)")
# rollouts
add("--prompts-per-step", type=int, default=512, help="prompts per rollout step, all ranks")
add("--group-size", type=int, default=8, help="G: samples per prompt")
add("--temperature", type=float, default=1.0, help="sampling temperature")
add("--top-p", type=float, default=0.95, help="nucleus sampling (also the held-out eval's)")
add("--max-new-tokens", type=int, default=8192, help="completion length cap")
add("--generate-batch-seqs", type=int, default=64, help="sequences per generate call (KV memory)")
add("--gather-for-rollout", type=int, default=1, help="FSDP, 1: gather the weights once per "
    "rollout; 0: per layer at every decode step (no full copy in memory, slower)")
# the update
add("--lr", type=float, default=1e-6, help="AdamW learning rate (constant)")
add("--weight-decay", type=float, default=1e-2, help="AdamW weight decay")
add("--kl-coef", type=float, default=None, help="k3 KL coefficient (stage); 0: no reference")
add("--clip-low", type=float, default=0.2, help="ε_low of the clipped ratio")
add("--clip-high", type=float, default=0.25, help="ε_high of the clipped ratio (clip-higher)")
add("--dual-clip", type=float, default=3.0, help="dual-clip constant c for A < 0")
add("--optim-batch-seqs", type=int, default=1024, help="sequences per optimizer step (0: all)")
add("--micro-batch-size", type=int, default=2, help="max sequences per forward/backward per rank")
add("--micro-batch-tokens", type=int, default=0, help="padded-token budget per micro-batch")
add("--loss-agg", choices=["step", "microbatch"], default="step", help="token mean per optimizer "
    "step, or per micro-batch / their count, averaged over ranks (released)")
add("--scale-by-std", type=int, default=1, help="1: A = (r-mean)/std (GRPO), 0: r-mean (Dr. GRPO)")
add("--entropy-coef", type=float, default=None, help="entropy bonus after the warm-up (stage)")
add("--entropy-warmup", type=int, default=None, help="updates with no entropy bonus (stage)")
add("--clip-grad", type=float, default=1.0, help="max gradient norm")
add("--grad-checkpointing", type=int, default=0, help="1: activation checkpointing")
add("--freeze-vision", type=int, default=None, help="1: freeze the vision tower (stage)")
# rewards (paper §2.1, §4.1.2) and PAD (§4.1.1)
add("--rewards", nargs="*", default=["accuracy=1"], help=f"NAME=WEIGHT, NAME in {COMPONENTS}")
add("--length-budget", type=int, default=8192, help="L_budget of the length reward (eq. 5-6)")
add("--pad", choices=list(PAD_PRESETS), default="paper", help="PAD preset (Table 4 rows)")
add("--pad-set", nargs="*", default=[], help="KEY=VALUE over the preset: t_low, t_high, ratio, "
    "weighting, alpha, replacement, tau_start, tau_end, empty (skip|full)")
# run, eval, checkpoints
add("--max-steps", type=int, default=200, help="rollout steps")
add("--seed", type=int, default=0, help="seed for data order, sampling and PAD")
add("--deterministic", type=int, default=0, help="1: deterministic kernels only (slower on GPU)")
add("--resume", type=int, default=0, help="1: continue from the last OUT_DIR/step_* folder")
add("--overwrite", type=int, default=0, help="1: replace the run already in --out-dir")
add("--save-every", type=int, default=0, help="save OUT_DIR/step_XXXXXX every N steps")
add("--eval-every", type=int, default=5, help="held-out accuracy and a rollout dump every N steps")
add("--eval-temperature", type=float, default=0.3, help="held-out sampling temperature, 0: greedy")
add("--eval-limit", type=int, default=0, help="evaluate the first N held-out prompts (0: all)")
one_line_errors(parser)
args, _ = parser.parse_known_args()  # --help stops here, showing the paper's values
paper = {k: parser.get_default(k) for k in vars(args)}

STAGE = {  # paper §5.1, Table 5: trl freezes vision, adds a k3 KL and an entropy bonus
    "mrl": dict(kl_coef=0.0, freeze_vision=0, entropy_coef=0.0, entropy_warmup=0),
    "trl": dict(kl_coef=2e-3, freeze_vision=1, entropy_coef=0.02, entropy_warmup=140)}[args.stage]
TOY = dict(  # measured on the toy (1e-4 collapsed); pixels: the tiny processor's own bounds
    prompts_per_step=16, top_p=1.0, max_new_tokens=24, generate_batch_seqs=128, lr=5e-5,
    weight_decay=0.0, optim_batch_seqs=0, micro_batch_size=64, length_budget=24, eval_every=25,
    max_steps={"mrl": 150, "trl": 60}[args.stage], eval_temperature=0.0, max_prompt_length=0,
    min_pixels=None, max_pixels=None)
RECIPE = {"paper": {}, "released": dict(  # released examples/config.yaml, every stage (Deviation 6)
    pad="code", kl_coef=1e-2, entropy_coef=0.02, entropy_warmup=20, loss_agg="microbatch",
    rewards=[f"{k}={w}" for k, w in RELEASED_WEIGHTS.items()])}[args.recipe]  # math.py's weights
default_model = {"mrl": "runs/sft/final", "trl": "runs/mrl/final"}[args.stage]
if args.model is None and not os.path.exists(os.path.join(default_model, "config.json")):
    previous = "python train_sft.py" if args.stage == "mrl" else "python train_grpo.py --stage mrl"
    raise UserError(f"--model not given and {default_model} not found: run {previous} first")
args.model = args.model or default_model
model_path = toy.ensure_tiny_model() if args.model == "tiny" else check_model_path(args.model)
layers = [("paper", paper), (f"stage {args.stage}", STAGE), ("toy", TOY if is_toy_model(model_path)
          else {}), (f"recipe {args.recipe}", RECIPE)]  # later layers win, explicit flags over all
chosen = {k: v for _, layer in layers for k, v in layer.items()}
parser.set_defaults(**chosen)
args = parser.parse_args()
source = {k: "flag" if v != chosen.get(k) else next(n for n, layer in layers[::-1] if k in layer)
          for k, v in vars(args).items()}  # where each value came from, saved with it
args.model, args.out_dir = model_path, args.out_dir or f"runs/{args.stage}"
reward_weights = key_values("--rewards", args.rewards, dict.fromkeys(COMPONENTS, float), "w_")
pad_cfg = {**PAD_PRESETS[args.pad], "tau_start": 1.0, "tau_end": 0.3, "empty": "skip",  # §4.1.1
           **key_values("--pad-set", args.pad_set, PAD_KNOBS, "pad_")}  # the preset, then --pad-set
check_flags(args)  # every numeric flag in its interval (common.FLAG_RULES)
if not pad_cfg["t_low"] < pad_cfg["t_high"]:
    raise UserError(f"--pad {args.pad}: need t_low < t_high, got {pad_cfg}")
if args.group_size == 1 and args.scale_by_std:
    raise UserError("--group-size 1: every group-normalised advantage is 0; use G >= 2")
if is_toy_model(model_path) and (args.data is None or args.val_data is None):
    train_file, val_files = toy.rl_files(args.stage)
    source.update({k: "toy" for k in ("data", "val_data") if getattr(args, k) is None})
    args.data = args.data or train_file
    args.val_data = val_files if args.val_data is None else args.val_data  # --val-data alone: none
if not args.data:
    raise UserError("--data is required for a real model (an RL JSONL/JSON/parquet file)")
user_config = dict(vars(args), pad_config={k: str(v) for k, v in pad_cfg.items()},
                   source={k: v for k, v in source.items() if v != "paper"})
select_cfg = {k: v for k, v in pad_cfg.items() if k not in ("tau", "tau_start", "tau_end", "empty")}

# -------------------------------------------------------------------------------------------------
# Data: every file read and checked before any model loads
instruction = prompts.INSTRUCTION if args.instruction else ""  # paper Fig. 5
train_rows = data.load_rl_rows(args.data, bool(args.skip_bad_rows), instruction)
val_sets = {label: data.load_rl_rows(p, bool(args.skip_bad_rows), instruction)
            for label, p in zip(data.unique_labels(args.val_data or []), args.val_data or [])}
checkpoint.claim_out_dir(args.out_dir)  # a second run into this folder stops here
resume_dir = checkpoint.prepare_out_dir(args.out_dir, resume=args.resume, overwrite=args.overwrite,
                                        user_config=user_config, total_steps=args.max_steps)

# -------------------------------------------------------------------------------------------------
# Compute, processor, models, optimizer
ddp, rank, local_rank, world_size, device = dist.compute_init()
master_process = rank == 0
set_seed(args.seed, bool(args.deterministic))
print0(json.dumps(user_config, indent=1, default=str))
if args.prompts_per_step % world_size:
    raise UserError(f"--prompts-per-step {args.prompts_per_step}: not a multiple of {world_size}")
G, local_prompts = args.group_size, args.prompts_per_step // world_size
N_local, N_global = local_prompts * G, args.prompts_per_step * G
processor = load_processor(args.model, min_pixels=args.min_pixels, max_pixels=args.max_pixels)
if args.max_prompt_length:
    train_rows, dropped = prompts.filter_long_prompts(processor, train_rows, args.max_prompt_length)
    print0(f"{args.data}: dropped {dropped} prompts over {args.max_prompt_length} tokens")
    if not train_rows:
        raise UserError(f"{args.data}: every prompt is longer than --max-prompt-length")
model, _ = load_policy(resume_dir or args.model, device, ddp, grad_checkpointing=bool(
    args.grad_checkpointing), freeze_vision_tower=bool(args.freeze_vision))  # §5.1
print0(f"policy {resume_dir or args.model}: {count_params(model):,} params, "
       f"{count_params(model, True):,} trainable")
ref_model = None
if args.kl_coef > 0:  # mrl loads no reference; trl's is the stage's starting checkpoint
    ref_model = load_policy(args.model, device, ddp)[0].requires_grad_(False).eval()
    print0(f"reference {args.model}: frozen, for the k3 KL (coef {args.kl_coef})")
params = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999),
                              weight_decay=args.weight_decay)
suppress_ids, pad_id = vision_token_ids(processor), processor.tokenizer.pad_token_id
print0(f"{len(train_rows)} train prompts | {args.prompts_per_step} prompts x G {G} = {N_global} "
       f"rollouts/step | {args.max_steps} steps | PAD {args.pad}: {pad_cfg}")


def rollouts(rows, *, group_size, temperature, seed, offset):
    """G samples per prompt, seeded per global prompt: the same at any world size. Weights gathered
    once: no collectives while decoding, so a rank that finishes early stops (no synced_gpus)."""
    gathered = bool(args.gather_for_rollout)
    model.eval()
    with dist.gathered_params(model) if gathered else nullcontext(), autocast(device, ddp):
        seqs = generate_rollouts(
            model, processor, [r["messages"] for r in rows], group_size=group_size, seed=seed,
            max_new_tokens=args.max_new_tokens, temperature=temperature, top_p=args.top_p,
            micro_batch_size=args.generate_batch_seqs, suppress_ids=suppress_ids,
            prompt_offset=offset, synced_gpus=False if ddp and gathered else None)
    model.train()
    return seqs


def run_eval(step, state):
    """Held-out accuracy of every --val-data file: one line and one metrics record."""
    t0, record = time.perf_counter(), {"step": step}
    for name, rows in val_sets.items():
        mine = (rows[:args.eval_limit] if args.eval_limit else rows)[rank::world_size]
        outs = rollouts(mine, group_size=1, temperature=args.eval_temperature,
                        seed=args.seed + 7, offset=0)
        right = sum(accuracy_reward(o["text"], mine[o["prompt_index"]]["answer"]) for o in outs)
        total = dist.all_reduce_dict({"right": right, "count": len(outs)}, device)
        record[f"eval/{name}/accuracy"] = total["right"] / max(total["count"], 1)
    print0(f"step {step:4d} | eval " + " | ".join(
        f"{k.split('/')[1]} {v:.3f}" for k, v in record.items() if k != "step"))
    metrics.log({**record, "time/eval_s_cum": state["eval_s"], "time/train_s_cum": state["train_s"],
                 "train/tokens_cum": state["tokens"]})  # the budget spent so far
    state["eval_s"] += time.perf_counter() - t0


def micro_batch_logps(net, seqs, mb):
    """(B, T) log-probs of `net` and the (B, T) mask for local sequences `mb`; [] is a filler (one
    sequence, all masked) that keeps the FSDP collectives in step with the other ranks."""
    batch = collate_rollouts([seqs[i] for i in mb] or seqs[:1], pad_id)
    with autocast(device, ddp):
        logps = completion_logps(net, batch, temperature=args.temperature,
                                 suppress_ids=suppress_ids)  # (B, T)
    return logps, batch["completion_mask"].to(device) & bool(mb)


@torch.no_grad()
def stored_logps(net, seqs, my_plan):
    """{(optimizer step, micro-batch): (B, T) log-probs} of `net` before this step's updates."""
    out = {(s, m): micro_batch_logps(net, seqs, mb)[0].cpu()
           for s, micro_batches in enumerate(my_plan) for m, mb in enumerate(micro_batches)}
    dist.reshard_all(net)  # no-grad forwards leave the root gathered (pitfall 13): the reference's
    return out  # embeddings and LM head would stay whole through the update (2.1 GiB at 7B)


def optimizer_step(seqs, advantages, s, micro_batches, old, ref, coef):
    """One optimizer step over this rank's micro-batches of step `s` -> (token-summed stats, norm).
    --loss-agg step: each loss is a token SUM / the step's token count on all ranks (Deviation 4);
    microbatch: a token mean / the micro-batch count, FSDP's average over ranks kept (released)."""
    mine = sum(seqs[i]["num_tokens"] for mb in micro_batches for i in mb)
    step_tokens = max(dist.all_reduce_dict({"tokens": mine}, device)["tokens"], 1)
    totals = {}
    for m, mb in enumerate(micro_batches):
        logps, mask = micro_batch_logps(model, seqs, mb)  # (B, T), (B, T)
        adv = torch.tensor([float(advantages[i]) for i in mb] or [0.0], device=device)  # (B,)
        loss, stats = policy_loss(
            logps, old[s, m].to(device) if old else logps.detach(), adv, mask,
            ref_logps=ref[s, m].to(device) if ref else None, kl_coef=args.kl_coef,
            clip_low=args.clip_low, clip_high=args.clip_high, dual_clip=args.dual_clip,
            entropy_coef=coef, num_tokens=loss_tokens(args.loss_agg, mask, step_tokens,
                                                      len(micro_batches)))
        # FSDP averages over ranks: x world_size turns it into the sum; released keeps the average
        (loss * (world_size if args.loss_agg == "step" else 1)).backward()
        tokens = float(stats.pop("tokens"))
        for key, value in {**stats, "tokens": 1.0}.items():
            totals[key] = totals.get(key, 0.0) + float(value) * tokens
    norm = dist.grad_norm_value(torch.nn.utils.clip_grad_norm_(params, args.clip_grad))
    if math.isfinite(norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return totals, norm


def step_metrics(seqs, totals, components, advantages, global_adv, selected, plan, lengths,
                 trained, norms):
    """The step's record: rollout and reward means over all ranks, PAD counts, per-token training
    means, the update plan's shape."""
    n_tokens = [s["num_tokens"] for s in seqs]
    sums = dist.all_reduce_dict({
        "reward/total": sum(totals), **{f"reward/{k}": sum(v) for k, v in components.items()},
        "rollout/len_mean": sum(n_tokens), "rollout/truncated": sum(s["truncated"] for s in seqs),
        "grpo/zero_adv_frac": int((advantages == 0).sum()), "count": len(seqs),
        **{f"train/{k}": v for k, v in trained.items()}}, device)
    count, tokens = sums.pop("count"), sums.pop("train/tokens")
    abs_adv, (real, padded) = global_adv.abs(), plan_token_counts(plan, lengths, N_local)
    effective = (abs_adv > pad_cfg["t_low"]) & (abs_adv < pad_cfg["t_high"])  # (N_global,)
    return {**{k: v / (max(tokens, 1) if k.startswith("train/") else count)
               for k, v in sums.items()}, "train/tokens": tokens,
            "rollout/tokens": sums["rollout/len_mean"],  # all ranks
            "rollout/len_max": dist.all_reduce_dict({"m": max(n_tokens)}, device, op="max")["m"],
            "pad/effective": int(effective.sum()), "pad/selected": selected.numel(),
            "pad/unique": selected.unique().numel(), "pad/adv_abs_all": float(abs_adv.mean()),
            "pad/adv_abs_selected": float(abs_adv[selected].mean()) if len(selected) else 0.0,
            "train/updates": len(norms), "train/grad_norm": max(norms, default=0.0),
            "train/micro_batches": sum(len(p[0]) for p in plan) * world_size,
            "train/padded_frac": 1 - real / padded if padded else 0.0, "train/lr": args.lr}


LOG_LINE = [  # the per-step line: (label, metrics key, format)
    ("reward", "reward/total", ".3f"), ("acc", "reward/accuracy", ".3f"),
    ("zero_adv", "grpo/zero_adv_frac", ".2f"), ("pad", "pad/selected", "d"),
    ("effective", "pad/effective", "d"), ("updates", "train/updates", "d"),
    ("len", "rollout/len_mean", ".1f"), ("kl", "train/kl", ".4f"),
    ("gnorm", "train/grad_norm", ".3f"),
    ("gen_s", "time/generate", ".2f"), ("upd_s", "time/update", ".2f"), ("dt", "time/step", ".2f")]


def dump_rollouts(step, rows, seqs, totals, components, advantages, selected):
    """OUT_DIR/rollouts/step_XXXXXX.jsonl: every rollout of the step, its reward and selection."""
    mine = [i - rank * N_local for i in selected.tolist() if i // N_local == rank]
    dump = [{"prompt_id": rows[s["prompt_index"]]["id"], "completion": s["text"],
             "answer": rows[s["prompt_index"]]["answer"], "reward": totals[i],
             **{f"reward_{k}": v[i] for k, v in components.items()},
             "advantage": float(advantages[i]), "selected": i in mine,
             "times_selected": mine.count(i)} for i, s in enumerate(seqs)]
    parts = dist.all_gather_objects(dump)
    if master_process:
        os.makedirs(os.path.join(args.out_dir, "rollouts"), exist_ok=True)
        with open(os.path.join(args.out_dir, "rollouts", f"step_{step:06d}.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for part in parts for r in part)


def save(name, state):
    """Collective under FSDP. step_* folders carry the resume state; final/ is the next stage's."""
    meta = {"user_config": user_config, "step": state["step"], "stage": args.stage,
            "sampling": sampling_kwargs(args.temperature, args.top_p)}  # all generate gets
    checkpoint.save_checkpoint(os.path.join(args.out_dir, name), model, processor, meta,
                               optimizer=None if name == "final" else optimizer, ddp=ddp,
                               extra={"rng": checkpoint.rng_state(), "state": dict(state)})


# -------------------------------------------------------------------------------------------------
# Resume: the loop's counters live in `state`, saved with every checkpoint
state = {"step": 0, "updates": 0, "pad_empty_steps": 0, "bad_steps": 0,
         "train_s": 0.0, "eval_s": 0.0, "tokens": 0.0}
if resume_dir:
    extra = checkpoint.load_resume(resume_dir, model, optimizer, ddp)
    checkpoint.set_rng_state(extra["rng"])
    state.update(extra["state"])
    print0(f"resumed from {resume_dir} at step {state['step']}")
if args.resume and master_process:  # drop what was logged after the checkpoint
    truncate_jsonl(os.path.join(args.out_dir, "metrics.jsonl"), state["step"])
metrics = MetricsLogger(args.out_dir, enabled=master_process)

# -------------------------------------------------------------------------------------------------
# Training loop
timer = Timer(sync_cuda=device.type == "cuda")
model.train()
for step in range(state["step"], args.max_steps):
    evaluating = bool(args.eval_every) and step % args.eval_every == 0
    if evaluating and val_sets:
        run_eval(step, state)
    t_step = time.perf_counter()

    # ---- 1. rollouts: G samples per prompt (paper §4.1, Algorithm 1 input)
    order = data.step_indices(len(train_rows), args.prompts_per_step, step, args.seed)  # resumable
    rows = [train_rows[i] for i in order[rank * local_prompts:(rank + 1) * local_prompts]]
    with timer("generate"):
        seqs = rollouts(rows, group_size=G, temperature=args.temperature,
                        seed=args.seed * 1_000_003 + step, offset=rank * local_prompts)

    # ---- 2. rewards (§2.1, eq. 5-6) and group advantages (eq. 3; a group sits on one rank)
    golds = [rows[s["prompt_index"]]["answer"] for s in seqs]
    totals, components = compute_rewards([s["text"] for s in seqs], golds,
                                         [s["num_tokens"] for s in seqs], weights=reward_weights,
                                         length_budget=args.length_budget)
    advantages = group_advantages(torch.tensor(totals), G, bool(args.scale_by_std))  # (N_local,)

    # ---- 3. PAD over the global batch (§4.1.1, Algorithm 1): one generator seed on every rank
    global_adv = torch.cat([torch.as_tensor(a) for a in dist.all_gather_objects(advantages)])
    tau = pad_tau(step, args.max_steps, pad_cfg["tau_start"], pad_cfg["tau_end"])
    generator = torch.Generator().manual_seed(args.seed * 7919 + step)
    selected = pad_select(global_adv, **select_cfg, tau=tau, generator=generator)  # (k,) global
    if selected.numel() == 0:
        state["pad_empty_steps"] += 1
        if pad_cfg["empty"] == "full":
            selected = torch.arange(N_global)  # (N_global,) the released code's fallback

    # ---- 4. the update plan: optimizer steps of --optim-batch-seqs, micro-batches per rank
    lengths = [n for part in dist.all_gather_objects(
        [(s["prompt_ids"].numel(), s["num_tokens"]) for s in seqs]) for n in part]
    plan = plan_update(selected.tolist(), lengths, world_size=world_size, seqs_per_rank=N_local,
                       micro_batch_size=args.micro_batch_size,
                       optim_batch_seqs=args.optim_batch_seqs,
                       micro_batch_tokens=args.micro_batch_tokens)
    my_plan = [step_plan[rank] for step_plan in plan]  # [optimizer step][micro-batch] -> local idx

    # ---- 5. old log-probs (if the policy moves within the step), reference log-probs (trl)
    with timer("logprobs"):
        old = stored_logps(model, seqs, my_plan) if len(plan) > 1 else {}
        ref = stored_logps(ref_model, seqs, my_plan) if ref_model else {}

    # -------- TRAINING SECTION BEGIN --------
    trained = dict.fromkeys(("clip_frac_low", "clip_frac_high", "dual_clip_frac", "ratio_mean",
                             "kl", "entropy", "tokens"), 0.0)
    norms, first_coef = [], entropy_coef(state["updates"], args.entropy_coef, args.entropy_warmup)
    with timer("update"):
        for s, micro_batches in enumerate(my_plan):  # one pass over the selection, as released
            coef = entropy_coef(state["updates"], args.entropy_coef, args.entropy_warmup)
            stats, norm = optimizer_step(seqs, advantages, s, micro_batches, old, ref, coef)
            state["bad_steps"] = nonfinite_streak(norm, state["bad_steps"])  # stops at 3
            trained = {k: trained.get(k, 0.0) + v for k, v in stats.items()}
            norms.append(norm)
            state["updates"] += 1
    # -------- TRAINING SECTION END --------

    # ---- 6. metrics (named sums over ranks), the step line, rollout dumps, checkpoints
    record = {"step": step + 1, **step_metrics(seqs, totals, components, advantages, global_adv,
                                               selected, plan, lengths, trained, norms),
              **{f"time/{k}": v for k, v in timer.pop().items()}, "train/entropy_coef": first_coef,
              "time/step": time.perf_counter() - t_step, "pad/tau": tau if pad_cfg["weighting"]
              == "softmax" else None, "pad/empty_steps": state["pad_empty_steps"]}
    record["time/tokens_per_s"] = record["rollout/tokens"] / record["time/step"]
    record["time/gen_tokens_per_s"] = record["rollout/tokens"] / max(record["time/generate"], 1e-9)
    if device.type == "cuda":
        record["gpu/peak_gb"] = torch.cuda.max_memory_allocated(device) / 1e9  # this rank
    state["train_s"] += record["time/step"]  # training seconds: rollouts, PAD, updates
    state["tokens"] += record["train/tokens"]  # trained completion tokens
    state["step"] = step + 1
    metrics.log({**record, "time/train_s_cum": state["train_s"],
                 "train/tokens_cum": state["tokens"]})
    print0(f"step {step + 1:4d}/{args.max_steps} | " + " | ".join(
        f"{label} {record[key]:{fmt}}" for label, key, fmt in LOG_LINE))
    if evaluating:
        dump_rollouts(step, rows, seqs, totals, components, advantages, selected)
    if args.save_every and state["step"] % args.save_every == 0 and state["step"] < args.max_steps:
        save(f"step_{state['step']:06d}", state)

if val_sets:
    run_eval(args.max_steps, state)
save("final", state)
print0(f"PAD selected nothing on {state['pad_empty_steps']} steps ({pad_cfg['empty']}) | done: "
       f"{os.path.join(args.out_dir, 'final')}")
dist.compute_cleanup()
