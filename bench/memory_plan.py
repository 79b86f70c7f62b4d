"""Peak memory per GPU of every phase of the README's 8-GPU recipe, simulated on CPU: no GPU, no
weights, minutes on 2 cores.

    python bench/memory_plan.py                    # Qwen2.5-VL-7B, 8 x 80 GB, the recipe's flags
    python bench/memory_plan.py --world-size 4     # 4 x 80 GB
    python bench/memory_plan.py --gpu-gb 40        # 8 x 40 GB
    python bench/memory_plan.py --model-size 32b   # 3b | 7b | 32b (config.json numbers below)
    python bench/memory_plan.py --model DIR        # a Qwen2.5-VL folder (its config, tokenizer)
    torchrun --nproc_per_node=2 bench/memory_plan.py --tiny --real 1   # real tensors (the check)

Stages and phases (the README recipe; unset flags take the scripts' PAPER presets):
    sft   step            --batch-size 8 rows over the ranks x --max-length 32768 tokens, text
    mrl   rollout         one generate call of --generate-batch-seqs 32 (G 8: 4 image prompts)
          validation      train_grpo.evaluate: one call of --generate-batch-seqs prompts (G 1)
          old log-probs   the micro-batch, no grad (PAD's released 6 optimizer steps per rollout)
          update          --micro-batch-size 2 rows of prompt + completion, an image each
          ..., one prompt the same rows all of one prompt: run once, its KV cache kept to backward
    trl   the same on text, vision frozen, and the reference model (its shards, its forward)
    eval  generate        eval.py's --batch-size 64 prompts, images within [262144, 1048576] px

How. The training code runs on fake tensors (FakeTensorMode: shapes and dtypes, no data) over a
fake process group of --world-size ranks. The model is built as model.load_sharded_model builds it
(meta device, activation checkpointing, vision freezing, dist.shard_model with its bf16-parameter
/ fp32-reduction MixedPrecisionPolicy, warmup_forward), and the phases call the project's functions:
logprobs.sequence_logps (SFT), rollout.generate_rollouts in dist.gathered_params (rollouts, eval),
rollout.collate_rollouts, logprobs.completion_logps and grpo.policy_loss (log-probs, update), AdamW
with foreach=True as on CUDA. LiveBytes adds up the bytes of every storage an op creates until it is
freed, FSDP2's storage resizes included: torch.cuda.max_memory_allocated without the allocator's
rounding. A phase's peak is that count's maximum plus the parameters present when counting starts.

Worst case of the flags: every sequence at the longest length and one padded position per batch
(padding makes transformers build the (B, 1, L, L) attention mask that real batches carry), prompts
of --max-prompt-length tokens, square images of --image-size px within the stage's pixel bounds,
every row of a micro-batch its own prompt and image. In the update the fp32 sharded gradients of
earlier micro-batches and the AdamW state are present (gradient accumulation). Shortcuts, checked:
- Decoding 8,192 tokens on fake tensors would take an hour: generate runs DECODE_STEPS steps, and
  the last step's peak grows by the measured growth per step (one token of KV cache) up to
  --max-new-tokens. The real-run check decodes every token (tests/test_memory_plan.py).
- Vision blocks attend over whole images instead of 112-px windows (full_attention_everywhere):
  the same bytes, 361 times fewer attention calls for a 2048-px image (vision_peak, the test).
- Data-dependent index work (M-RoPE positions, vision windows, the image-token count check,
  generate's stop checks) runs on real values: an op with no fake input runs for real, and the
  sampled tokens are real (one fixed token).

Not simulated, hence the margin (MARGIN_GIB + MARGIN_FRACTION of the GPU): the CUDA context and
cuBLAS workspace (~0.5-1 GiB), NCCL's buffers (~0.5-1 GiB at 8 ranks), the caching allocator's
fragmentation (reserved above allocated, often 5-15% under FSDP). bash bench/gpu_check.sh prints
these predictions next to torch.cuda.max_memory_allocated for every phase.
"""

import argparse
import contextlib
import functools
import gc
import json
import math
import os
import sys
import time
import types
import weakref

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

GIB, MIB = 2 ** 30, 2 ** 20
MARGIN_GIB, MARGIN_FRACTION = 2.0, 0.10  # CUDA context + NCCL; allocator fragmentation
DECODE_STEPS = 4  # generate steps simulated; the peak is extended linearly to --max-new-tokens
SEARCH_CAPS = {"sft_rows": 4, "micro_batch": 16, "generate_seqs": 256}  # real masks in this RAM
VISION = dict(depth=32, hidden_size=1280, num_heads=16, patch_size=14, spatial_merge_size=2,
              temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31])
CONFIGS = {  # the public config.json of Qwen/Qwen2.5-VL-{3B,7B,32B}-Instruct: architecture numbers
    "3b": dict(text=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                         num_attention_heads=16, num_key_value_heads=2, vocab_size=151936),
               vision=dict(intermediate_size=3420, out_hidden_size=2048),
               tie_word_embeddings=True),
    "7b": dict(text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4, vocab_size=152064),
               vision=dict(intermediate_size=3420, out_hidden_size=3584),
               tie_word_embeddings=False),
    "32b": dict(text=dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
                          num_attention_heads=40, num_key_value_heads=8, vocab_size=152064),
                vision=dict(intermediate_size=3456, out_hidden_size=5120),
                tie_word_embeddings=False),
}
# the README recipe's flags (train_grpo.py's --generate-batch-seqs preset: 64), the PAPER presets
PRESETS = dict(sft_batch_size=8, sft_max_length=32768, micro_batch_size=2, max_prompt_length=8192,
               max_new_tokens=8192, generate_batch_seqs=32, group_size=8, image_size=2048,
               rl_pixels=(262144, 4194304), eval_pixels=(262144, 1048576), eval_batch_size=64,
               temperature=1.0, top_p=0.95, kl_coef=2e-3)
TINY = dict(sft_batch_size=8, sft_max_length=256, micro_batch_size=4, max_prompt_length=96,
            max_new_tokens=64, generate_batch_seqs=16, group_size=4, image_size=112,
            rl_pixels=(3136, 12544), eval_pixels=(3136, 12544), eval_batch_size=16,
            temperature=1.0, top_p=1.0, kl_coef=2e-3)


# --------------------------------------------------------------------------------------------------
# Counting live bytes

def tensors_in(tree):
    """The tensors in nested tuples, lists and dicts (what ops take and return)."""
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, (tuple, list)):
        for x in tree:
            yield from tensors_in(x)
    elif isinstance(tree, dict):
        for x in tree.values():
            yield from tensors_in(x)


def local(t):
    """A DTensor's local shard, or the tensor itself."""
    return t._local_tensor if hasattr(t, "_local_tensor") else t


def storage_bytes(tensors):
    """Bytes of the distinct storages behind tensors."""
    return sum({id(t.untyped_storage()): t.untyped_storage().nbytes() for t in tensors}.values())


class LiveBytes:
    """Live bytes of the storages created under counting() (DTensors: their local shards), or
    resized there as FSDP2 does with unsharded parameters, until freed: .current, .peak, and
    .mark() (the peak since the previous mark). `existing` storages (counted by the caller) are
    known: views are free. fake=True also runs every op that has no fake input on real values,
    and makes sampled tokens real (token_id), so that the data-dependent code of the model and
    of generate runs."""

    def __init__(self, existing=(), fake=False, token_id=0, device_type=None):
        self.fake, self.token_id, self.device_type = fake, token_id, device_type
        self.size, self.refs = {}, {}  # id(storage) -> bytes, weak reference
        self.current = self.peak = self.window = 0
        for t in existing:
            self._track(t.untyped_storage())
        self.current = self.peak = self.window = 0  # the caller counts these

    def _add(self, nbytes):
        self.current += nbytes
        self.peak, self.window = max(self.peak, self.current), max(self.window, self.current)

    def _track(self, storage, old=0):
        """A storage seen in an op's output (old 0) or resized from old bytes."""
        if self.device_type and storage.device.type != self.device_type:
            return  # a CUDA run counts GPU memory only
        key = id(storage)
        if key in self.refs and self.refs[key]() is storage:
            self._add(storage.nbytes() - self.size[key])
        else:
            self.refs[key] = weakref.ref(storage, functools.partial(self._freed, key))
            self._add(storage.nbytes() - old)
        self.size[key] = storage.nbytes()

    def _freed(self, key, _ref):
        self.current -= self.size.pop(key, 0)
        self.refs.pop(key, None)

    def mark(self):
        out, self.window = self.window, self.current
        return out

    def forget(self, tensors):
        """Stop counting these tensors' storages (rollout results: CPU-resident in a GPU run)."""
        for t in tensors:
            key = id(t.untyped_storage())
            if key in self.refs and self.refs[key]() is t.untyped_storage():
                self.current -= self.size.pop(key)
                del self.refs[key]

    @contextlib.contextmanager
    def counting(self):
        """The dispatch mode, plus UntypedStorage.resize_: a storage method, no op the mode sees."""
        from torch.utils._python_dispatch import TorchDispatchMode
        counter, resize = self, torch.UntypedStorage.resize_

        def resize_(storage, nbytes):  # FSDP2 frees and re-allocates unsharded parameters this way
            old = storage.nbytes()
            out = resize(storage, nbytes)
            counter._track(storage, old)
            return out

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = counter.run(func, args, kwargs or {})
                for t in tensors_in(out):
                    counter._track(local(t).untyped_storage())
                return out

        torch.UntypedStorage.resize_ = resize_
        try:
            with Mode():
                yield self
        finally:
            torch.UntypedStorage.resize_ = resize

    def run(self, func, args, kwargs):
        if not self.fake:
            return func(*args, **kwargs)
        from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily
        from torch.distributed.tensor import DTensor
        inputs = list(tensors_in((args, kwargs)))
        if any(isinstance(t, (FakeTensor, DTensor)) for t in inputs):
            out = func(*args, **kwargs)
            if func in (torch.ops.aten.multinomial.default, torch.ops.aten.argmax.default):
                with unset_fake_temporarily():  # sampled tokens: real, for generate's stop checks
                    return torch.full(out.shape, self.token_id, dtype=out.dtype)
            return out
        if inputs:  # index work on real inputs (positions, masks, vision windows): for real
            with unset_fake_temporarily():
                return func(*args, **kwargs)
        out = func(*args, **kwargs)  # a factory: real if it makes integer or bool indices
        if isinstance(out, torch.Tensor) and not out.is_floating_point() and out.numel() <= 2 ** 26:
            with unset_fake_temporarily():
                return func(*args, **kwargs)
        return out


# --------------------------------------------------------------------------------------------------
# The model: model.load_policy itself (real), or its steps without the weights (fake)

@contextlib.contextmanager
def cuda_precision():
    """dist.shard_model picks bf16 parameters and fp32 gradient reduction on CUDA only. Under this
    context it is handed a device that says cuda while its mesh is built on the fake CPU group."""
    import torch.distributed.device_mesh as device_mesh
    init = device_mesh.init_device_mesh
    device_mesh.init_device_mesh = lambda _type, shape, **kw: init("cpu", shape, **kw)
    try:
        yield types.SimpleNamespace(type="cuda")
    finally:
        device_mesh.init_device_mesh = init


def full_attention_everywhere(visual):
    """Every vision block attends over whole images, not 112-pixel windows: the same tensors, one
    attention call per image instead of one per window (361 for a 2048-pixel image, ~10,000 fake
    ops per block), hence the same bytes up to per-window temporaries (vision_peak checks it)."""
    visual.fullatt_block_indexes = list(range(len(visual.blocks)))


def vision_peak(vision_config, image_size, windows, dtype=torch.bfloat16):
    """Peak live bytes of the vision tower's forward + backward (activation checkpointing) on one
    square image, fake: with its windows (windows=True), or full attention in every block."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl
    vision_config._attn_implementation = "sdpa"
    side = image_size // 14 // 2 * 2  # patches per side, a multiple of the 2 x 2 merge
    grid = torch.tensor([[1, side, side]])  # (1, 3) t, h, w
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        visual = modeling_qwen2_5_vl.Qwen2_5_VisionTransformerPretrainedModel(vision_config)
        torch.set_default_dtype(default)
        visual.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False})
        if not windows:
            full_attention_everywhere(visual)
        pixels = torch.empty(side * side, 3 * 2 * 14 * 14, dtype=dtype)  # (patches, C*T*14*14)
        counter = LiveBytes(list(visual.parameters()), fake=True)
        with mode, counter.counting():
            visual(pixels, grid_thw=grid).pooler_output.float().sum().backward()
    return counter.peak


def build_config(size, tok):
    """A Qwen2_5_VLConfig of CONFIGS[size] with the special ids of the tokenizer used here."""
    from transformers import Qwen2_5_VLConfig
    cfg = CONFIGS[size]
    ids = {t: tok.convert_tokens_to_ids(t) for t in (
        "<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
        "<|vision_end|>")}
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}
    text = dict(cfg["text"], rms_norm_eps=1e-6, max_position_embeddings=128000,
                rope_parameters=rope, bos_token_id=ids["<|endoftext|>"],
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    return Qwen2_5_VLConfig(text_config=text, vision_config=dict(VISION, **cfg["vision"]),
                            image_token_id=ids["<|image_pad|>"],
                            video_token_id=ids["<|video_pad|>"],
                            vision_start_token_id=ids["<|vision_start|>"],
                            vision_end_token_id=ids["<|vision_end|>"],
                            tie_word_embeddings=cfg["tie_word_embeddings"])


def build_model(env, *, grad_checkpointing, freeze_vision):
    """A sharded policy or reference model, as the scripts get it from model.load_policy."""
    from nanorevisual import dist, model as nr_model
    if env.real:
        model, _ = nr_model.load_policy(env.path, env.device, True,
                                        grad_checkpointing=grad_checkpointing,
                                        freeze_vision_tower=freeze_vision)
        return model
    from transformers import AutoModelForImageTextToText
    with torch.device("meta"):  # the steps of model.load_sharded_model, then of load_policy
        model = AutoModelForImageTextToText.from_config(env.config, dtype=torch.float32)
    if grad_checkpointing:
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False})
    if freeze_vision:
        nr_model.freeze_vision(model)
    full_attention_everywhere(model.model.visual)
    precision = cuda_precision() if env.mixed_precision else contextlib.nullcontext(env.device)
    with precision as device:
        dist.shard_model(model, device)
    with env.fake_mode:
        model.to_empty(device=env.device)
        nr_model.set_neutral_generation_config(model, env.processor)
        nr_model.warmup_forward(model, env.processor, env.device)
    return model


# --------------------------------------------------------------------------------------------------
# Inputs

def prompt_messages(env, n, length, image_size):
    """n chats whose generation prompts are `length` tokens (the last one 1 shorter: left padding),
    each with one square image of image_size pixels when image_size > 0."""
    from PIL import Image
    from nanorevisual.prompts import build_messages, encode_prompts
    images = [Image.new("RGB", (image_size, image_size), (200, 40, 90))] if image_size else []

    def chat(words):
        return build_messages(" ".join([env.word] * words), images)

    base = encode_prompts(env.processor, [chat(1)])["input_ids"].shape[1] - 1
    if length - base < 2:
        raise SystemExit(f"--max-prompt-length {length}: this prompt needs {base + 2} tokens")
    return [chat(length - base - (i == n - 1)) for i in range(n)]


def rollout_kwargs(env, group_size):
    """generate_rollouts' arguments in train_grpo.py. The stop tokens are suppressed too, so that a
    real run decodes every step (a fake run samples env.token_id anyway)."""
    from nanorevisual.processor import stop_token_ids, vision_token_ids
    suppress = vision_token_ids(env.processor) + stop_token_ids(env.processor)
    return dict(group_size=group_size, temperature=env.p["temperature"], top_p=env.p["top_p"],
                seed=0, suppress_ids=suppress, synced_gpus=False)


IMAGE = ("pixel_values", "image_grid_thw")


def long_completions(seqs, T, token_id):
    """The rollouts with completions of T tokens (the last one T-1: right padding), each with its
    own prompt tensors (collate_rollouts then stores every row's image: the worst case)."""
    out = []
    for i, s in enumerate(seqs):
        s = dict(s, completion_ids=torch.full((T - (i == len(seqs) - 1),), token_id), num_tokens=T)
        s.update({k: s[k].clone() for k in ("prompt_ids", "pixel_values") if s[k] is not None})
        out.append(s)
    return out


# --------------------------------------------------------------------------------------------------
# Phases: each returns Meter.stop(): its peak per GPU

class Meter:
    """A phase's peak: the counter's peak since start() plus the bytes present when counting began
    (parameters and buffers); on CUDA also torch.cuda.max_memory_allocated over the phase."""

    def __init__(self, counter, base, cuda):
        self.counter, self.base, self.cuda = counter, base, cuda

    def start(self):
        self.counter.mark()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def stop(self, peak=None):
        """{peak, held: live bytes at the end, cuda_max_allocated}; peak given: extrapolated."""
        out = {"peak": self.base + (self.counter.mark() if peak is None else peak),
               "held": self.base + self.counter.current}
        if self.cuda:
            torch.cuda.synchronize()
            out["cuda_max_allocated"] = torch.cuda.max_memory_allocated()
        return out


def grads_present(model):
    """Gradient accumulation: every trainable parameter already holds its fp32 sharded gradient."""
    for p in model.parameters():
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)


def init_optimizer(model):
    """The scripts' AdamW (foreach, as on CUDA), its state made by one step: there from step 1 on.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6, weight_decay=1e-2, foreach=True)
    grads_present(model)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return optimizer


def optimizer_step(model, optimizer):
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()


def sft_step(env, meter, model, optimizer, rows):
    """train_sft.py's loss_sum on one micro-batch (rows x --max-length tokens, text) and backward,
    the gradients of earlier micro-batches present, then clip and AdamW step."""
    from nanorevisual.logprobs import sequence_logps
    from nanorevisual.prompts import collate_sft
    L, encoded = env.p["sft_max_length"], []
    for i in range(rows):
        short = rows > 1 and i == rows - 1  # one padded position
        ids = torch.randint(10, len(env.processor.tokenizer), (L - short,))  # (L,)
        encoded.append({"input_ids": ids, "labels": ids.clone(),
                        "mm_token_type_ids": torch.zeros_like(ids)})
    batch = collate_sft(encoded, env.processor.tokenizer.pad_token_id)
    batch = {k: v.to(env.device) for k, v in batch.items()}
    grads_present(model)
    meter.start()
    labels = batch.pop("labels")[:, 1:]  # (B, L-1)
    mask = labels != -100  # (B, L-1)
    logps = sequence_logps(model, batch, labels.clamp(min=0))  # (B, L-1) fp32
    (-torch.where(mask, logps, 0.0).sum() * env.world_size / mask.sum()).backward()
    del logps
    optimizer_step(model, optimizer)
    return meter.stop()


@torch.no_grad()
def logprob_pass(env, meter, models, rows):
    """train_grpo.py step 5: old log-probs (and the reference's in TRL) of a micro-batch, no grad.
    """
    from nanorevisual.logprobs import completion_logps
    from nanorevisual.processor import vision_token_ids
    from nanorevisual.logprobs import collate_rollouts
    meter.start()
    batch = collate_rollouts(rows, env.processor.tokenizer.pad_token_id)
    for m in models:
        completion_logps(m, batch, temperature=env.p["temperature"],
                         suppress_ids=vision_token_ids(env.processor))  # (B, T)
    return meter.stop()


def update(env, meter, model, optimizer, rows, trl):
    """train_grpo.optimizer_step on one micro-batch, earlier micro-batches' gradients present:
    completion_logps, policy_loss (TRL: k3 KL, entropy bonus), backward, clip, AdamW step."""
    from nanorevisual.grpo import policy_loss
    from nanorevisual.logprobs import completion_logps
    from nanorevisual.processor import vision_token_ids
    from nanorevisual.logprobs import collate_rollouts
    grads_present(model)
    meter.start()
    batch = collate_rollouts(rows, env.processor.tokenizer.pad_token_id)
    logps = completion_logps(model, batch, temperature=env.p["temperature"],
                             suppress_ids=vision_token_ids(env.processor))  # (B, T)
    stored = logps.detach().clone()  # (B, T) train_grpo.stored_logps: old and reference log-probs
    mask = batch["completion_mask"].to(env.device)  # (B, T)
    adv = torch.ones(len(rows), device=env.device)  # (B,)
    loss, _ = policy_loss(logps, stored, adv, mask, ref_logps=stored.clone() if trl else None,
                          kl_coef=env.p["kl_coef"] if trl else 0.0,
                          entropy_coef=0.02 if trl else 0.0, num_tokens=int(mask.sum()))
    (loss * env.world_size).backward()
    del logps, stored, loss
    optimizer_step(model, optimizer)
    return meter.stop()


def rollout(env, meter, model, group_size, batch_seqs, image_size):
    """One generate call of rollout.generate_rollouts on batch_seqs sequences (batch_seqs // G
    prompts) inside dist.gathered_params, as in train_grpo.py and eval.py. A fake run decodes
    DECODE_STEPS steps and extends the last one's peak by the growth per step up to
    --max-new-tokens; a real run decodes them all. Returns (phase result with its prefill peak and
    growth per step, rollouts)."""
    from nanorevisual import dist
    from nanorevisual.rollout import generate_rollouts
    new_tokens = env.p["max_new_tokens"]
    steps = new_tokens if env.real else min(DECODE_STEPS, new_tokens)
    prompts = max(1, batch_seqs // group_size)
    messages = prompt_messages(env, prompts, env.p["max_prompt_length"], image_size)
    peaks = []  # the peak before each language-model forward: [vision, prompt, decode steps...]
    hook = model.model.language_model.register_forward_pre_hook(
        lambda *_: peaks.append(meter.counter.mark()))
    model.eval()
    meter.start()
    try:
        with dist.gathered_params(model):
            seqs = generate_rollouts(model, env.processor, messages, max_new_tokens=steps,
                                     micro_batch_size=batch_seqs, **rollout_kwargs(env, group_size))
            peaks.append(meter.counter.mark())
    finally:
        hook.remove()
        model.train()
    prefill, decode = max(peaks[:2]), peaks[2:]
    growth = [b - a for a, b in zip(decode[1:], decode[2:])]  # step 1 also holds generate's set-up
    per_step = growth[-1] if growth else 0
    if not env.real and growth and max(growth) - min(growth) > 0.01 * per_step + 4096:
        print(f"  warning: decode-step peaks not equally spaced: {growth}")
    out = meter.stop(max(prefill, decode[-1] + per_step * (new_tokens - len(decode))))
    out.update(prefill=prefill + meter.base, per_step=per_step)
    meter.counter.forget([t for s in seqs for t in s.values() if isinstance(t, torch.Tensor)])
    return out, seqs  # (the rollouts live on the CPU in a GPU run: forgotten)


def largest(measure, n0, peak0, step, budget, cap):
    """The largest n (n0 plus a multiple of step, <= cap) whose measure(n) <= budget. The peak is
    affine in n (activations, KV cache): predicted from n0 and n0 + step, then simulated at the
    prediction and one step above. Returns (n, {n: peak})."""
    peaks = {n0: peak0}

    def at(n):
        if n not in peaks:
            peaks[n] = measure(n)
        return peaks[n]

    slope = at(n0 + step) - peak0 if n0 + step <= cap else 0
    n = cap if slope <= 0 else n0 + step * math.floor((budget - peak0) / slope / step)
    n = max(0, min(cap, n))
    while n > 0 and at(n) > budget:
        n -= step
    while n + step <= cap and at(n + step) <= budget:
        n += step
    return n, peaks


# --------------------------------------------------------------------------------------------------
# Stages

def run_stage(env, stage, budget, search):
    """Build the stage's model(s) as its script does, count its phases; with search, the largest
    sizes whose peak fits budget (bytes). Returns (rows, {flag: (largest, {size: peak})})."""
    from nanorevisual import dist as nr_dist
    from nanorevisual.model import warmup_forward
    gc.collect()  # the previous stage's models (FSDP modules hold reference cycles)
    if env.device.type == "cuda":
        torch.cuda.empty_cache()
    p, T, mb = env.p, env.p["max_new_tokens"], env.p["micro_batch_size"]
    sft, trl, evaluate = stage == "sft", stage == "trl", stage == "eval"
    model = build_model(env, grad_checkpointing=env.grad_checkpointing and not evaluate,
                        freeze_vision=sft or trl)
    models = [model]
    if trl:  # train_grpo.py: the starting checkpoint, no activation checkpointing, frozen, eval
        ref = build_model(env, grad_checkpointing=False, freeze_vision=False)
        ref.requires_grad_(False).eval()
        models.append(ref)
    present = [local(t) for m in models for t in [*m.parameters(), *m.buffers()]]
    cuda = env.device.type == "cuda"
    counter = LiveBytes(present, fake=not env.real, token_id=env.token_id,
                        device_type="cuda" if cuda else None)
    meter, rows, fits = Meter(counter, storage_bytes(present), cuda), [], {}

    def row(phase, shape, result):
        rows.append(dict(stage=stage, phase=phase, shape=shape, **result))
        print(f"  {stage} {phase}: {result['peak'] / GIB:.2f} GiB ({shape})", flush=True)

    with env.fake_mode, counter.counting():
        optimizer = None if evaluate else init_optimizer(model)
        if trl:  # a no-grad forward leaves the root gathered; train_grpo.stored_logps reshards
            warmup_forward(ref, env.processor, env.device)  # it after the reference's pass, so
            nr_dist.reshard_all(ref)  # the update runs beside a sharded reference
        if sft:
            rows_per_rank = max(1, p["sft_batch_size"] // env.world_size)
            result = sft_step(env, meter, model, optimizer, rows_per_rank)
            row("step", f"{rows_per_rank} x {p['sft_max_length']} tokens, text", result)
            if search:
                n, peaks = largest(lambda k: sft_step(env, meter, model, optimizer, k)["peak"],
                                   rows_per_rank, result["peak"], 1, budget,
                                   SEARCH_CAPS["sft_rows"])
                fits["--batch-size"] = (n * env.world_size,
                                        {k * env.world_size: v for k, v in peaks.items()})
            return rows, fits
        G = 1 if evaluate else p["group_size"]
        S = p["eval_batch_size" if evaluate else "generate_batch_seqs"]
        image = 0 if trl else p["image_size"]
        env.set_pixels(p["eval_pixels"] if evaluate else p["rl_pixels"])
        result, seqs = rollout(env, meter, model, G, S, image)
        images = f"{max(1, S // G)} images of {image} px" if image else "text"
        row("generate" if evaluate else "rollout",
            f"{S} seqs x ({p['max_prompt_length']} + {T}) tokens, {images}", result)
        if not evaluate:  # train_grpo.evaluate: --generate-batch-seqs held-out prompts a call
            val = rollout(env, meter, model, 1, S, image)[0]
            row("validation", f"{S} prompts x ({p['max_prompt_length']} + {T}) tokens, "
                + (f"{S} images of {image} px" if image else "text"), val)
        if search:  # the rollouts and the validation of a GRPO stage take --generate-batch-seqs
            calls = {"--batch-size": (G, result)} if evaluate else {
                "--generate-batch-seqs (rollouts)": (G, result),
                "--generate-batch-seqs (validation)": (1, val)}
            for flag, (g, first) in calls.items():
                def generate_peak(k, g=g):
                    return rollout(env, meter, model, g, k, image)[0]["peak"]
                fits[flag] = largest(generate_peak, S, first["peak"], G, budget,
                                     SEARCH_CAPS["generate_seqs"])
        if evaluate:
            return rows, fits

        def micro_batch(m, shared=False):  # m rows, each its own prompt (shared: all the first's)
            firsts = seqs[::G] * math.ceil(m / len(seqs[::G]))
            rows = long_completions(firsts[:m], T, env.token_id)
            prompt = {k: v for k, v in rows[0].items() if k.startswith("prompt_") or k in IMAGE}
            return [dict(r, **prompt) for r in rows] if shared else rows

        shape = f"{mb} x ({p['max_prompt_length']} + {T}) tokens, "
        shape += f"{mb} images" if image else "text"
        row("ref + old log-probs" if trl else "old log-probs", shape + ", no grad",
            logprob_pass(env, meter, models, micro_batch(mb)))
        result = update(env, meter, model, optimizer, micro_batch(mb), trl)
        row("update", shape + (", reference model held" if trl else ""), result)
        shared_result = result
        if mb > 1:  # G samples of one prompt: its prefix runs once (shared_prompt_hidden)
            shared_result = update(env, meter, model, optimizer, micro_batch(mb, True), trl)
            kept = ", checkpointed: the KV cache held to backward" if env.grad_checkpointing else ""
            row("update, one prompt", f"{mb} completions of 1 prompt, prompt once{kept}",
                shared_result)
        if search:  # whichever layout holds more at each size: rows whole or one prompt's

            def update_peak(k):
                return max(update(env, meter, model, optimizer, micro_batch(k, shared), trl)["peak"]
                           for shared in {False, k > 1})
            peak = max(result["peak"], shared_result["peak"])
            fits["--micro-batch-size"] = largest(update_peak, mb, peak, 1, budget,
                                                 SEARCH_CAPS["micro_batch"])
    return rows, fits


# --------------------------------------------------------------------------------------------------
# A fake world of --world-size ranks, or the real torchrun one

class Env:
    def __init__(self, args):
        from torch._subclasses.fake_tensor import FakeTensorMode
        from nanorevisual.processor import load_processor
        from nanorevisual.toy import ensure_tiny_model
        self.real = bool(args.real)
        self.p = dict(TINY if args.tiny else PRESETS)
        for key in ("micro_batch_size", "max_prompt_length", "max_new_tokens",
                    "generate_batch_seqs", "image_size", "sft_batch_size", "eval_batch_size"):
            if getattr(args, key) is not None:
                self.p[key] = getattr(args, key)
        if args.max_length is not None:
            self.p["sft_max_length"] = args.max_length
        self.path = args.model or ensure_tiny_model()  # the tokenizer (and for --model, the config)
        self.processor = load_processor(self.path)
        self.word = "7"  # one token of the tiny BPE: prompts are made of it, sampled tokens are it
        self.token_id = self.processor.tokenizer.convert_tokens_to_ids(self.word)
        if args.model or args.tiny:
            from transformers import AutoConfig
            self.config = AutoConfig.from_pretrained(self.path)
        else:
            self.config = build_config(args.model_size, self.processor.tokenizer)
        if self.real:
            from nanorevisual import dist
            _, _, _, self.world_size, self.device = dist.compute_init()
            self.fake_mode = contextlib.nullcontext()
        else:
            import torch.distributed
            from torch.testing._internal.distributed.fake_pg import FakeStore
            torch.distributed.init_process_group("fake", store=FakeStore(), rank=0,
                                                 world_size=args.world_size)
            self.world_size, self.device = args.world_size, torch.device("cpu")
            self.fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
        precision = args.mixed_precision
        self.mixed_precision = not args.tiny if precision is None else bool(precision)
        self.grad_checkpointing = bool(args.grad_checkpointing)

    def set_pixels(self, bounds):
        from nanorevisual.processor import load_processor
        self.processor = load_processor(self.path, min_pixels=bounds[0], max_pixels=bounds[1])


def budget_gib(gpu_gb):
    """What a phase may use: the GPU less the margin for what is not simulated (module docstring).
    """
    return gpu_gb - MARGIN_GIB - MARGIN_FRACTION * gpu_gb


def print_plan(title, gpu_gb, rows, fits):
    budget = budget_gib(gpu_gb)
    unit, scale = ("GiB", GIB) if max(r["peak"] for r in rows) > GIB else ("MiB", MIB)
    print(f"\n{title}: budget {budget:.1f} GiB per GPU = {gpu_gb:g} - {MARGIN_GIB:g} (CUDA "
          f"context, NCCL) - {MARGIN_FRACTION:.0%} (allocator fragmentation)")
    print(f"{'stage':6s}{'phase':21s}{'peak/GPU':>12s}  {'fits':5s}shape")
    for r in rows:
        fit = "yes" if r["peak"] / GIB <= budget else "NO"
        peak = f"{r['peak'] / scale:8.1f} {unit}"
        print(f"{r['stage']:6s}{r['phase']:21s}{peak}  {fit:5s}{r['shape']}")
    for stage, found in fits.items():
        for flag, (n, peaks) in found.items():
            tried = ", ".join(f"{k}: {v / GIB:.1f}" for k, v in sorted(peaks.items()))
            cap = " (the search's cap)" if n == max(peaks) else ""  # nothing above n was tried
            print(f"largest {stage} {flag} that fits: {n or 'none'}{cap} (peak GiB at {tried})")


def main():
    parser = argparse.ArgumentParser(description="per-GPU memory of every phase, simulated")
    parser.add_argument("--model-size", choices=list(CONFIGS), default="7b", help="Qwen2.5-VL")
    parser.add_argument("--model", default=None, help="a Qwen2.5-VL folder: its config, tokenizer")
    parser.add_argument("--tiny", action="store_true", help="the tiny model, toy shapes (the test)")
    parser.add_argument("--world-size", type=int, default=8, help="GPUs: ranks of the fake group")
    parser.add_argument("--gpu-gb", type=float, default=80, help="memory of one GPU, GiB")
    parser.add_argument("--micro-batch-size", type=int, default=None, help="GRPO sequences (2)")
    parser.add_argument("--sft-batch-size", type=int, default=None, help="SFT --batch-size (8)")
    parser.add_argument("--max-length", type=int, default=None, help="SFT tokens per row (32768)")
    parser.add_argument("--max-prompt-length", type=int, default=None, help="prompt tokens (8192)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="completion tokens (8192)")
    parser.add_argument("--generate-batch-seqs", type=int, default=None, help="per call (32)")
    parser.add_argument("--eval-batch-size", type=int, default=None, help="eval.py --batch-size")
    parser.add_argument("--image-size", type=int, default=None, help="image side, px (0: none)")
    parser.add_argument("--grad-checkpointing", type=int, default=1, help="the recipe's 1")
    parser.add_argument("--stages", default="sft,mrl,trl,eval", help="of sft, mrl, trl, eval")
    parser.add_argument("--search", type=int, default=1, help="1: the largest sizes that fit")
    parser.add_argument("--mixed-precision", type=int, default=None, help="bf16 (not --tiny)")
    parser.add_argument("--real", type=int, default=0, help="1: real tensors, under torchrun")
    parser.add_argument("--json", default=None, help="write the phase peaks here")
    args = parser.parse_args()
    t0 = time.perf_counter()
    env = Env(args)
    rows, fits = [], {}
    for stage in args.stages.split(","):
        t_stage = time.perf_counter()
        search = bool(args.search) and not env.real
        stage_rows, fits[stage] = run_stage(env, stage, budget_gib(args.gpu_gb) * GIB, search)
        rows += stage_rows
        print(f"  ({stage}: {time.perf_counter() - t_stage:.0f} s)", flush=True)
    if int(os.environ.get("RANK", 0)) != 0:
        return
    name = "tiny" if args.tiny else os.path.basename(args.model) if args.model else args.model_size
    kind = "real (live tensor bytes)" if env.real else "simulated"
    title = f"{name}, {env.world_size} GPUs x {args.gpu_gb:g} GiB, {kind}"
    print_plan(title, args.gpu_gb, rows, {k: v for k, v in fits.items() if v})
    elapsed = time.perf_counter() - t0
    print(f"({elapsed:.0f} s)")
    if args.json:
        found = {s: {k: n for k, (n, _) in v.items()} for s, v in fits.items()}
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "world_size": env.world_size, "seconds": elapsed,
                       "fits": found}, f, indent=1)


if __name__ == "__main__":
    main()
    from nanorevisual import dist
    dist.compute_cleanup()  # under torchrun (--real 1) and with the fake group alike
