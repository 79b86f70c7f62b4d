"""The training forward + backward of a rollout batch three ways, side by side in one run:
    prompt once     each distinct prompt (its images and its tokens) runs once, the completions against its KV
                    cache (collate_rollouts' prefix keys, logprobs.shared_prompt_hidden)
    images once     every row runs whole, but each distinct image goes through the vision tower once (image_index)
    rows whole      every row runs whole with its own copy of the images (the plain HF inputs)

    python bench/bench_update_images.py                         # toy images (56 x 56: 4 image tokens), G 8
    python bench/bench_update_images.py --min-pixels 262144     # the released lower pixel bound: 361 image tokens
    python bench/bench_update_images.py --min-pixels 262144 --ranks 2   # FSDP2, gloo, 1 thread each

Interleaved repeats, medians, the ratio rows whole / prompt once printed last. It also prints the largest difference
of the log-probs and of the gradients from "rows whole" (the same computation up to float summation order).
--ranks N relaunches itself under torchrun: every rank samples its own prompts with a plain copy of
the model, then times prompt once against images once (the rows-whole path FSDP took before) on
the FSDP2-sharded model, each repeat's time the slowest rank's, and counts FSDP's all-gathers and
reduce-scatters in one micro-batch each way.
"""

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nanorevisual import dist  # noqa: E402
from nanorevisual.data import load_rl_rows  # noqa: E402
from nanorevisual.logprobs import collate_rollouts, completion_logps, expand_images  # noqa: E402
from nanorevisual.model import load_model_and_processor, load_policy  # noqa: E402
from nanorevisual.processor import vision_token_ids  # noqa: E402
from nanorevisual.rollout import generate_rollouts  # noqa: E402
from nanorevisual.toy import ensure_tiny_model, ensure_toy_data  # noqa: E402


@contextlib.contextmanager
def counted_collectives():
    """{collective: [calls, MB of its unsharded side]}: FSDP2's all-gathers, reduce-scatters."""
    names, counts = ("all_gather_single", "reduce_scatter_single"), {}
    originals = {n: getattr(torch.distributed, n) for n in names}

    def counted(name):
        def call(*args, **kwargs):
            big = args[0] if name == "all_gather_single" else kwargs.get("input", args[1:2] or None)
            calls, mb = counts.get(name, [0, 0.0])
            counts[name] = [calls + 1, mb + big.numel() * big.element_size() / 2 ** 20]
            return originals[name](*args, **kwargs)
        return call

    for n in names:
        setattr(torch.distributed, n, counted(n))
    try:
        yield counts
    finally:
        for n in names:
            setattr(torch.distributed, n, originals[n])


def main():
    parser = argparse.ArgumentParser(description="the update forward: prompt once, images once, or rows whole")
    parser.add_argument("--prompts", type=int, default=4, help="image prompts")
    parser.add_argument("--group-size", type=int, default=8, help="G samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="completion length cap")
    parser.add_argument("--min-pixels", type=int, default=None, help="processor's lower pixel bound (released: 262144)")
    parser.add_argument("--repeats", type=int, default=7, help="timed forward + backward of each, interleaved")
    parser.add_argument("--threads", type=int, default=None, help="threads per rank (2 / ranks)")
    parser.add_argument("--ranks", type=int, default=1, help="N > 1: FSDP2, gloo, torchrun")
    parser.add_argument("--grad-checkpointing", type=int, default=0, help="1: the timed model's")
    args = parser.parse_args()
    args.threads = args.threads or max(1, 2 // args.ranks)
    if args.ranks > 1 and not dist.is_ddp():  # relaunch this script under torchrun
        ensure_tiny_model(), ensure_toy_data()  # built once, not raced by the ranks
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        sys.exit(subprocess.call([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                  f"--nproc_per_node={args.ranks}", os.path.abspath(__file__),
                                  *sys.argv[1:]], env=env))
    torch.set_num_threads(args.threads)
    ddp, rank, _, world_size, device = dist.compute_init()

    pixels = dict(min_pixels=args.min_pixels, max_pixels=4194304 if args.min_pixels else None)
    model, processor = load_model_and_processor(ensure_tiny_model(), **pixels)
    suppress = vision_token_ids(processor)
    rows = load_rl_rows(os.path.join(ensure_toy_data(), "mm_val.jsonl"))
    rows = rows[rank * args.prompts:(rank + 1) * args.prompts]  # each rank its own prompts
    model.eval()
    seqs = generate_rollouts(model, processor, [r["messages"] for r in rows], group_size=args.group_size,
                             max_new_tokens=args.max_new_tokens, suppress_ids=suppress, seed=rank)
    if ddp or args.grad_checkpointing:  # the timed model, as train_grpo.py loads it
        model, _ = load_policy(ensure_tiny_model(), device, ddp,
                               grad_checkpointing=bool(args.grad_checkpointing))
    model.train()
    shared = collate_rollouts(seqs, processor.tokenizer.pad_token_id)
    images_once = {k: v for k, v in shared.items() if k != "row_prompt" and not k.startswith("prefix")}
    batches = {"prompt once": shared, "images once": images_once, "rows whole": expand_images(shared)}
    if ddp:
        del batches["rows whole"]  # FSDP's path before prompt once was images once
    reference_name = list(batches)[-1]

    def forward_backward(name):
        logps = completion_logps(model, batches[name], suppress_ids=suppress,
                                 share_prompt=name == "prompt once")  # (B, T)
        (logps * batches[name]["completion_mask"]).sum().backward()
        grads = [getattr(p.grad, "_local_tensor", p.grad).clone() for p in model.parameters()
                 if p.grad is not None]  # this rank's shard under FSDP
        model.zero_grad(set_to_none=True)
        return logps.detach(), grads

    results = {name: forward_backward(name) for name in batches}
    reference, reference_grads = results[reference_name]
    mask = shared["completion_mask"]
    if ddp:  # FSDP's collectives in one micro-batch's forward + backward, each way
        comms = {}
        for name in batches:
            with counted_collectives() as comms[name]:
                forward_backward(name)
    times = {name: [] for name in batches}
    for _ in range(args.repeats):
        for name in batches:
            dist.barrier()
            t0 = time.perf_counter()
            forward_backward(name)
            elapsed = time.perf_counter() - t0
            times[name].append(dist.all_reduce_dict({"t": elapsed}, op="max")["t"])  # slowest rank
    med = {name: statistics.median(v) for name, v in times.items()}
    paired = statistics.median(a / b for a, b in zip(times[reference_name], times["prompt once"]))
    diffs = {}
    for name in batches:
        logps, grads = results[name]
        diffs[name] = dist.all_reduce_dict({
            "logps": (logps - reference)[mask].abs().max(),
            "grads": max((x - y).abs().max().item() for x, y in zip(grads, reference_grads))},
            op="max")
    tokens = int(shared["mm_token_type_ids"][0].sum())
    where = f" per rank, {world_size} ranks FSDP2 gloo" if ddp else ""
    dist.print0(f"{args.prompts} image prompts ({tokens} image tokens each) x G {args.group_size}"
                f"{where}, {args.max_new_tokens} new tokens, {args.threads} threads"
                f"{' per rank' if ddp else ''}, median of {args.repeats}"
                f"{', activation checkpointing' if args.grad_checkpointing else ''}")
    for name in list(batches)[:-1]:
        dist.print0(f"{name}: max |difference| from {reference_name}: log-probs "
                    f"{diffs[name]['logps']:.2e}, gradients {diffs[name]['grads']:.2e}")
    if ddp:
        for name, counts in comms.items():
            dist.print0(f"FSDP collectives per micro-batch, {name}: " + ", ".join(
                f"{n} {c} calls {mb:.1f} MB" for n, (c, mb) in sorted(counts.items())))
    dist.print0("forward + backward: " + " | ".join(f"{name} {t:.3f} s" for name, t in med.items()))
    if "rows whole" in med:
        dist.print0(f"images once vs rows whole: {med['rows whole'] / med['images once']:.2f}x")
    dist.print0(f"speed-up of running each prompt once ({reference_name} / prompt once): "
                f"{med[reference_name] / med['prompt once']:.2f}x "
                f"(median of paired ratios {paired:.2f}x)")
    dist.compute_cleanup()


if __name__ == "__main__":
    main()
