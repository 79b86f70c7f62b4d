"""Peak memory of the log-prob forward + backward through the model: a plain full log_softmax over the (B, T, V) logits
against nanorevisual.logprobs.completion_logps, whose chunked LM head never holds a (B, T, V) tensor.

    python bench/bench_logps_memory.py                     # both shapes below, each measurement in a fresh process
    python bench/bench_logps_memory.py --shapes small      # only the 128-hidden model (about a minute)

Shapes (Qwen2.5-VL built from a config, vocabulary 152,064, one decoder layer, one sequence of 4,096 completion
tokens after a 16-token prompt, forward + backward of the summed log-probs; the LM head's weight gradient exists
on both sides):
    small   text hidden 128, fp32
    7b      text hidden 3584 (Qwen2.5-VL-7B's head: 152,064 x 3,584), bf16 weights and activations

What is measured: the peak RSS ABOVE the model and its inputs. After building them the kernel's peak-RSS mark is
reset (write "5" to /proc/self/clear_refs, Linux >= 4.0), then the peak (VmHWM) after forward + backward minus
the RSS before it is reported. On CUDA, torch.cuda.max_memory_allocated() after a reset. The ratio plain / chunked
is printed last for each shape.
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = {"small": dict(hidden=128, heads=4, kv_heads=2, dtype="float32"),
          "7b": dict(hidden=3584, heads=28, kv_heads=4, dtype="bfloat16")}
MB = 2 ** 20


def rss_now():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_peak():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def measure(shape, method, vocab, seq_len, device):
    """One measurement in this (fresh) process -> peak bytes above the model and inputs."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, ROOT)
    from nanorevisual.logprobs import completion_logps
    from nanorevisual.tiny import build_tokenizer, tiny_config
    from transformers import Qwen2_5_VLForConditionalGeneration

    cfg = SHAPES[shape]
    dtype = getattr(torch, cfg["dtype"])
    torch.manual_seed(0)
    tok = build_tokenizer(["What is 3+4? The answer is 7."])
    config = tiny_config(tok, hidden=cfg["hidden"], layers=1, heads=cfg["heads"], kv_heads=cfg["kv_heads"],
                         vocab_size=vocab)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config).to(dtype)
    prompt, T = 16, seq_len
    ids = torch.randint(10, vocab, (1, prompt + T), device=device)  # (1, L)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": torch.zeros_like(ids),
             "completion_ids": ids[:, prompt:], "completion_mask": torch.ones_like(ids[:, prompt:], dtype=torch.bool)}
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base = rss_now()
    if method == "plain":
        logits = model(input_ids=ids, attention_mask=batch["attention_mask"], mm_token_type_ids=batch["mm_token_type_ids"],
                       use_cache=False, logits_to_keep=T + 1).logits[:, :-1]  # (1, T, V)
        logps = F.log_softmax(logits.float(), -1).gather(-1, batch["completion_ids"][..., None]).squeeze(-1)  # (1, T)
    else:
        logps = completion_logps(model, batch)  # (1, T)
    logps.sum().backward()
    assert model.lm_head.weight.grad is not None
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return rss_peak() - base


def main():
    parser = argparse.ArgumentParser(description="log-prob memory through the model: plain vs chunked LM head")
    parser.add_argument("--shapes", default="small,7b", help="comma list of: small, 7b")
    parser.add_argument("--vocab", type=int, default=152064, help="vocabulary size")
    parser.add_argument("--seq-len", type=int, default=4096, help="completion tokens")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)  # "shape,method": one measurement
    args = parser.parse_args()
    if args.worker:
        shape, method = args.worker.split(",")
        print(json.dumps({"peak": measure(shape, method, args.vocab, args.seq_len, args.device)}))
        return
    for shape in args.shapes.split(","):
        peaks = {}
        for method in ("plain", "chunked"):
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", f"{shape},{method}",
                                  "--vocab", str(args.vocab), "--seq-len", str(args.seq_len), "--device", args.device],
                                 capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="2"))
            if out.returncode != 0:
                sys.exit(out.stderr[-3000:])
            peaks[method] = json.loads(out.stdout.strip().splitlines()[-1])["peak"]
        cfg = SHAPES[shape]
        print(f"{shape}: hidden {cfg['hidden']} {cfg['dtype']}, V {args.vocab}, T {args.seq_len}, {args.device} | "
              f"plain {peaks['plain'] / MB:.0f} MB | chunked {peaks['chunked'] / MB:.0f} MB | "
              f"per completion token: plain {peaks['plain'] / args.seq_len / 1024:.0f} KB, chunked "
              f"{peaks['chunked'] / args.seq_len / 1024:.0f} KB")
        print(f"{shape}: peak plain / chunked = {peaks['plain'] / peaks['chunked']:.1f}x")


if __name__ == "__main__":
    main()
