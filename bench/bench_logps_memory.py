"""Peak memory of the log-prob forward + backward through the model: a plain full log_softmax over the (B, T, V) logits
against nanorevisual.logprobs.completion_logps, whose chunked LM head never holds a (B, T, V) tensor.

    python bench/bench_logps_memory.py                     # both shapes below (about two minutes on 2 cores)
    python bench/bench_logps_memory.py --device cuda       # on a GPU: real compute at both shapes, allocator peaks

Shapes (Qwen2.5-VL built from a config, vocabulary 152,064, one decoder layer, one sequence of 4,096 completion
tokens after a 16-token prompt, forward + backward of the summed log-probs; the LM head's weight gradient exists
on both sides; the input embedding is frozen on both sides, since its gradient (1.04 GiB at the 7B shape) has
nothing to do with the log-prob path):
    small   text hidden 128, fp32
    7b      text hidden 3584 (Qwen2.5-VL-7B's head: 152,064 x 3,584), bf16 weights and activations

Three ways to count, each measurement in a fresh process:
    rss      real compute on CPU; the peak RSS above the model and its inputs (the kernel's peak mark is reset
             through /proc/self/clear_refs, Linux >= 4.0, then VmHWM after forward + backward minus the RSS before)
    tensors  the same compute, counting bytes instead: every storage an op creates is added when it appears and
             subtracted when it is freed (a TorchDispatchMode with weak references), the peak of that sum; what
             torch.cuda.max_memory_allocated reports on a GPU, without the allocator's rounding
    fake     the tensors count under FakeTensorMode: every op runs on shapes only, no arithmetic. On this CPU a
             bf16 matmul with both operands untransposed falls back to a single-threaded ~1 GFLOPS kernel, so the
             real 7B-head backward would take hours; the fake count takes a second. The small shape is measured
             all three ways, so the agreement of fake with rss is printed next to the 7B result.
    cuda     (--device cuda) real compute, torch.cuda.max_memory_allocated() after a reset.

A third measurement, "floor", is what both paths share and no log-prob path can remove: the decoder's forward +
backward to the last hidden states (loss = their sum) plus an LM-head weight gradient of zeros. Each shape prints
plain and chunked peaks, what each adds above the floor, and the ratio plain / chunked last.
"""

import argparse
import functools
import json
import os
import subprocess
import sys
import weakref

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


def byte_counter(existing):
    """A TorchDispatchMode whose .peak is the largest sum of live bytes of the storages created under it; storages
    of `existing` tensors (views of them allocate nothing) are known from the start and never counted."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
    from torch.utils.weak import WeakIdKeyDictionary

    class ByteCounter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen, self.current, self.peak = WeakIdKeyDictionary(), 0, 0
            for t in existing:
                self.seen[t.untyped_storage()] = None

        def _freed(self, nbytes, _ref):
            self.current -= nbytes

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.untyped_storage() not in self.seen:
                    storage = t.untyped_storage()
                    self.seen[storage] = weakref.ref(storage, functools.partial(self._freed, storage.nbytes()))
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
            return out

    return ByteCounter()


def measure(shape, method, engine, vocab, seq_len):
    """One measurement in this (fresh) process -> peak bytes above the model and its inputs."""
    import torch
    import torch.nn.functional as F
    from torch._subclasses.fake_tensor import FakeTensorMode

    sys.path.insert(0, ROOT)
    from nanorevisual.logprobs import completion_logps
    from nanorevisual.tiny import build_tokenizer, tiny_config
    from transformers import Qwen2_5_VLForConditionalGeneration

    cfg = SHAPES[shape]
    tok = build_tokenizer(["What is 3+4? The answer is 7."])
    config = tiny_config(tok, hidden=cfg["hidden"], layers=1, heads=cfg["heads"], kv_heads=cfg["kv_heads"],
                         vocab_size=vocab)
    fake = FakeTensorMode() if engine == "fake" else None
    if fake:
        fake.__enter__()
    torch.manual_seed(0)
    torch.set_default_dtype(getattr(torch, cfg["dtype"]))  # built in its dtype (a fake model cannot be cast)
    with torch.device("cuda" if engine == "cuda" else "cpu"):
        model = Qwen2_5_VLForConditionalGeneration(config)
        torch.set_default_dtype(torch.float32)
        model.get_input_embeddings().weight.requires_grad_(False)  # same on both sides (module docstring)
        prompt, T = 16, seq_len
        ids = torch.randint(10, vocab, (1, prompt + T))  # (1, L)
        # no attention_mask (no padding): the causal mask then stays implicit in every engine (a fake tensor cannot
        # tell that an all-ones mask is all ones, and would build an L x L mask that real compute never holds)
        batch = {"input_ids": ids, "mm_token_type_ids": torch.zeros_like(ids), "completion_ids": ids[:, prompt:],
                 "completion_mask": torch.ones_like(ids[:, prompt:], dtype=torch.bool)}
    counter = None
    if engine == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    elif engine == "rss":
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base = rss_now()
    else:
        counter = byte_counter([*model.parameters(), *model.buffers(), *batch.values()])
        counter.__enter__()
    inputs = {k: batch[k] for k in ("input_ids", "mm_token_type_ids")}
    if method == "plain":
        logits = model(**inputs, use_cache=False, logits_to_keep=T + 1).logits[:, :-1]  # (1, T, V)
        logps = F.log_softmax(logits.float(), -1).gather(-1, batch["completion_ids"][..., None]).squeeze(-1)  # (1, T)
    elif method == "floor":
        hidden = model.model(**inputs, use_cache=False).last_hidden_state  # (1, L, H)
        model.lm_head.weight.grad = torch.zeros_like(model.lm_head.weight)  # (V, H) the head gradient both paths hold
        logps = hidden[:, -T - 1:-1].float().sum(-1)  # (1, T)
    else:
        logps = completion_logps(model, batch)  # (1, T)
    logps.sum().backward()
    assert model.lm_head.weight.grad is not None
    if counter is not None:
        counter.__exit__(None, None, None)
        return counter.peak
    if engine == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return rss_peak() - base


def run_worker(shape, method, engine, args):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", f"{shape},{method},{engine}",
                          "--vocab", str(args.vocab), "--seq-len", str(args.seq_len)],
                         capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="2"))
    if out.returncode != 0:
        sys.exit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])["peak"]


def main():
    parser = argparse.ArgumentParser(description="log-prob memory through the model: plain vs chunked LM head")
    parser.add_argument("--shapes", default="small,7b", help="comma list of: small, 7b")
    parser.add_argument("--vocab", type=int, default=152064, help="vocabulary size")
    parser.add_argument("--seq-len", type=int, default=4096, help="completion tokens")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)  # "shape,method,engine": one measurement
    args = parser.parse_args()
    if args.worker:
        shape, method, engine = args.worker.split(",")
        print(json.dumps({"peak": measure(shape, method, engine, args.vocab, args.seq_len)}))
        return
    shapes = args.shapes.split(",")
    plan = {shape: ["cuda"] if args.device == "cuda" else (["rss", "tensors", "fake"] if shape == "small" else ["fake"])
            for shape in shapes}
    ratios = {}
    for shape in shapes:
        cfg = SHAPES[shape]
        for engine in plan[shape]:
            peaks = {method: run_worker(shape, method, engine, args) for method in ("floor", "plain", "chunked")}
            floor, plain, chunked = peaks["floor"], peaks["plain"], peaks["chunked"]
            ratios[shape, engine] = plain / chunked
            print(f"{shape} ({engine}): hidden {cfg['hidden']} {cfg['dtype']}, V {args.vocab}, T {args.seq_len} | "
                  f"plain {plain / MB:,.0f} MB | chunked {chunked / MB:,.0f} MB | floor {floor / MB:,.0f} MB | "
                  f"above the floor: plain {(plain - floor) / MB:,.0f} MB, chunked {(chunked - floor) / MB:,.0f} MB "
                  f"({(plain - floor) / max(chunked - floor, 1):.0f}x) | plain / (floor alone) = {plain / floor:.1f}x "
                  f"(the most any log-prob path could reach)")
    for shape in shapes:
        for engine in plan[shape]:
            print(f"{shape} ({engine}): peak plain / chunked = {ratios[shape, engine]:.1f}x")


if __name__ == "__main__":
    main()
