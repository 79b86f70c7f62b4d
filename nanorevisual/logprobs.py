"""The training batch and its token log-probs, never holding a (B, T, V) tensor forward or backward.

`collate_rollouts` turns rollout dicts into the batch; `completion_logps(model, batch)` scores its
completions (GRPO's old, reference and training log-probs); train_sft.py calls `sequence_logps`.
The LM head runs chunk by chunk of rows inside `ChunkedHeadLogps`, whose backward recomputes each
chunk's logits: at the 7B vocabulary one 8k-token completion has 2.5 GB of fp32 logits
(bench/bench_logps_memory.py). Log-probs are of softmax(logits / temperature) with the vision
tokens at -inf, the distribution generate sampled (pitfalls 4 and 6).

Shapes: B sequences, P prompt and T completion positions, V vocabulary, H hidden size, C chunk rows.
"""

import contextlib
import types

import torch
from transformers import DynamicCache

# -------------------------------------------------------------------------------------------------
# The training batch


def collate_rollouts(seqs, pad_token_id):
    """Rollout dicts -> the batch: rows [left-padded prompt | completion | right padding].

    input_ids, attention_mask, mm_token_type_ids (B, P+T); position_ids (3, B, P+T): generate's
    M-RoPE positions; completion_ids, completion_mask (B, T). Images once per prompt: pixel_values,
    image_grid_thw, and image_index (n_occurrences,) -> distinct image. With a prompt on several
    rows, each distinct prompt once: prefix_ids, prefix_mask, prefix_mm_types (u, Pp),
    prefix_positions (3, u, Pp), and row_prompt (B,) (shared_prompt_hidden)."""
    P = max(s["prompt_ids"].numel() for s in seqs)
    T = max(max(s["completion_ids"].numel() for s in seqs), 1)
    B = len(seqs)
    input_ids = torch.full((B, P + T), pad_token_id, dtype=torch.long)  # (B, P+T)
    attention_mask = torch.zeros((B, P + T), dtype=torch.long)  # (B, P+T)
    mm_types = torch.zeros((B, P + T), dtype=torch.long)  # (B, P+T) 1 on image tokens
    completion_mask = torch.zeros((B, T), dtype=torch.bool)  # (B, T)
    position_ids = torch.zeros((3, B, P + T), dtype=torch.long)  # (3, B, P+T)
    pixels, grids, image_index, first_image = [], [], [], {}  # id(pixel tensor) -> first image
    for i, s in enumerate(seqs):
        lp, lc = s["prompt_ids"].numel(), s["completion_ids"].numel()
        input_ids[i, P - lp:P] = s["prompt_ids"]
        mm_types[i, P - lp:P] = s["prompt_mm_types"]
        input_ids[i, P:P + lc] = s["completion_ids"]
        attention_mask[i, P - lp:P + lc] = 1
        completion_mask[i, :lc] = True
        position_ids[:, i, P - lp:P] = s["prompt_positions"]
        text = s["prompt_positions"][:, -1:] + torch.arange(1, lc + 1)  # (3, lc)
        position_ids[:, i, P:P + lc] = text
        if s["pixel_values"] is not None:
            if id(s["pixel_values"]) not in first_image:  # this prompt's first sample here
                first_image[id(s["pixel_values"])] = sum(len(g) for g in grids)
                pixels.append(s["pixel_values"])
                grids.append(s["image_grid_thw"])
            first = first_image[id(s["pixel_values"])]
            image_index.extend(range(first, first + len(s["image_grid_thw"])))
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
             "mm_token_type_ids": mm_types, "completion_ids": input_ids[:, P:],
             "completion_mask": completion_mask}
    row_prompt, prompts = [], {}  # id(prompt_ids) -> index of the distinct prompt
    for s in seqs:
        row_prompt.append(prompts.setdefault(id(s["prompt_ids"]), len(prompts)))
    if len(prompts) < B:  # a prompt on several rows: its prefix runs once, in first-row order
        distinct = list({id(s["prompt_ids"]): s for s in seqs}.values())
        u, Pp = len(distinct), max(s["prompt_ids"].numel() for s in distinct)
        batch["prefix_ids"] = torch.full((u, Pp), pad_token_id, dtype=torch.long)  # (u, Pp)
        batch["prefix_mask"] = torch.zeros((u, Pp), dtype=torch.long)  # (u, Pp)
        batch["prefix_mm_types"] = torch.zeros((u, Pp), dtype=torch.long)  # (u, Pp)
        batch["prefix_positions"] = torch.zeros((3, u, Pp), dtype=torch.long)  # (3, u, Pp)
        for i, s in enumerate(distinct):
            lp = s["prompt_ids"].numel()
            batch["prefix_ids"][i, Pp - lp:] = s["prompt_ids"]
            batch["prefix_mask"][i, Pp - lp:] = 1
            batch["prefix_mm_types"][i, Pp - lp:] = s["prompt_mm_types"]
            batch["prefix_positions"][:, i, Pp - lp:] = s["prompt_positions"]
        batch["row_prompt"] = torch.tensor(row_prompt)  # (B,)
    if pixels:
        batch["pixel_values"] = torch.cat(pixels)  # (n_patches, D) each distinct image once
        batch["image_grid_thw"] = torch.cat(grids)  # (n_images, 3)
        batch["image_index"] = torch.tensor(image_index)  # (n_occurrences,) -> distinct image
    return batch


def expand_images(batch):
    """The batch's model inputs with each image repeated per occurrence (a plain HF forward's)."""
    grids = batch["image_grid_thw"]  # (n_images, 3)
    rows = torch.split(batch["pixel_values"], grids.prod(-1).tolist())  # per distinct image
    index = batch["image_index"].tolist()
    plain = {k: v for k, v in batch.items()
             if k not in ("image_index", "row_prompt") and not k.startswith("prefix")}
    return {**plain, "pixel_values": torch.cat([rows[i] for i in index]),
            "image_grid_thw": grids[index]}


# -------------------------------------------------------------------------------------------------
# The chunked LM head

CHUNK_BYTES = 128 * 2 ** 20  # fp32 logits per chunk: 220 rows at the 7B vocabulary (152,064)


def chunk_rows_for(vocab_size):
    """Rows per chunk so that one chunk's fp32 logits take about CHUNK_BYTES."""
    return max(1, CHUNK_BYTES // (4 * vocab_size))


class ChunkedHeadLogps(torch.autograd.Function):
    """log softmax(hidden @ weight.T / temperature)[target], a chunk of rows at a time: hidden
    (N, H), weight (V, H), targets (N,), suppress (S,) -> (N,) fp32. Backward recomputes each
    chunk's logits: d logp / d logits = (onehot(target) - softmax) / temperature."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, suppress, chunk_rows):
        w = weight.to(hidden.dtype)  # (V, H) one copy at most (fp32 master weights under autocast)
        acc = torch.promote_types(hidden.dtype, torch.float32)  # fp32 (fp64 only in gradcheck)
        out = torch.empty(hidden.shape[0], dtype=acc, device=hidden.device)  # (N,)
        log_norm = torch.empty_like(out)  # (N,)
        for start in range(0, hidden.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            logits = _scaled_logits(hidden[rows], w, temperature, suppress)  # (C, V) fp32
            log_norm[rows] = torch.logsumexp(logits, dim=1)  # (C,)
            out[rows] = logits.gather(1, targets[rows, None]).squeeze(1) - log_norm[rows]  # (C,)
        ctx.save_for_backward(hidden, weight, targets, log_norm, suppress)
        ctx.temperature, ctx.chunk_rows = temperature, chunk_rows
        return out

    @staticmethod
    def backward(ctx, grad_out):  # grad_out (N,)
        hidden, weight, targets, log_norm, suppress = ctx.saved_tensors
        w = weight.to(hidden.dtype)  # (V, H)
        grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None  # (N, H)
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None  # (V, H)
        for start in range(0, hidden.shape[0], ctx.chunk_rows):
            rows = slice(start, start + ctx.chunk_rows)
            go = grad_out[rows].to(log_norm.dtype)  # (C,)
            grad_logits = _scaled_logits(hidden[rows], w, ctx.temperature, suppress)  # (C, V) fp32
            grad_logits.sub_(log_norm[rows, None]).exp_().mul_(-go[:, None])  # (C, V) -softmax * go
            grad_logits.scatter_add_(1, targets[rows, None], go[:, None])  # (C, V) + onehot * go
            grad_logits.div_(ctx.temperature)  # (C, V) d loss / d raw logits
            if suppress is not None:
                grad_logits.index_fill_(1, suppress, 0.0)  # (C, V) masked logits: constants
            grad_logits = grad_logits.to(weight.dtype)  # (C, V) one copy for both products
            if grad_hidden is not None:
                grad_hidden[rows] = (grad_logits.to(w.dtype) @ w).to(hidden.dtype)  # (C, H)
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.t(), hidden[rows].to(weight.dtype))  # (V, H)
        return grad_hidden, grad_weight, None, None, None, None


def _scaled_logits(hidden_rows, w, temperature, suppress):
    """(C, H) @ (H, V) -> fp32 logits / temperature, suppressed ids at -inf: generate's."""
    logits = (hidden_rows @ w.t()).to(torch.promote_types(hidden_rows.dtype, torch.float32))
    if temperature != 1.0:
        logits.div_(temperature)
    if suppress is not None:
        logits.index_fill_(1, suppress, float("-inf"))  # as HF's SuppressTokensLogitsProcessor
    return logits  # (C, V)


def head_logps(hidden, weight, targets, *, temperature=1.0, suppress_ids=None, chunk_rows=None):
    """(B, T, H) hidden states, (V, H) LM-head weight, (B, T) targets -> (B, T) fp32 log-probs."""
    B, T, H = hidden.shape
    chunk_rows = chunk_rows or chunk_rows_for(weight.shape[0])
    suppress = None
    if suppress_ids is not None and len(suppress_ids) > 0:
        suppress = torch.as_tensor(suppress_ids, dtype=torch.long, device=hidden.device)  # (S,)
    flat = ChunkedHeadLogps.apply(hidden.reshape(B * T, H), weight, targets.reshape(B * T),
                                  float(temperature), suppress, chunk_rows)  # (B*T,)
    return flat.view(B, T)  # (B, T)


# -------------------------------------------------------------------------------------------------
# The forwards


def _hidden_then_head(model, inputs, targets, temperature, suppress_ids, chunk_rows):
    """The last hidden states at the T positions that predict `targets`, then the chunked head.
    An FSDP forward method: the root unit (LM head, embeddings) unshards around it (pitfall 11).
    With the prefix keys (row_prompt ...) each distinct prompt runs once (shared_prompt_hidden)."""
    T = targets.shape[1]
    if "row_prompt" in inputs:
        with cache_kept_when_checkpointed(model):
            hidden = shared_prompt_hidden(model, inputs)  # (B, T, H)
        return head_logps(hidden, model.lm_head.weight, targets, temperature=temperature,
                          suppress_ids=suppress_ids, chunk_rows=chunk_rows)
    if "image_index" in inputs:  # each distinct image through the vision tower once (pitfall 19)
        inputs = dict(inputs)
        index = inputs.pop("image_index").tolist()
        images = model.model.get_image_features(inputs.pop("pixel_values"),
                                                inputs.pop("image_grid_thw"), return_dict=True)
        images.pooler_output = tuple(images.pooler_output[i] for i in index)  # per occurrence
        inputs["mm_encoder_outputs"] = {"image": images}
    hidden = model.model(**inputs, use_cache=False).last_hidden_state  # (B, L, H)
    hidden = hidden[:, hidden.shape[1] - T - 1:-1]  # (B, T, H) position t predicts token t + 1
    return head_logps(hidden, model.lm_head.weight, targets, temperature=temperature,
                      suppress_ids=suppress_ids, chunk_rows=chunk_rows)


def sequence_logps(model, inputs, targets, *, temperature=1.0, suppress_ids=None, chunk_rows=None):
    """(B, T) fp32 log-probs of `targets`, the last T tokens of inputs["input_ids"] (B, L). inputs:
    input_ids, attention_mask, mm_token_type_ids (M-RoPE, pitfall 5), position_ids, images; or a
    collate_rollouts batch with its prefix keys (each distinct prompt once)."""
    if not hasattr(model, "nr_hidden_then_head"):  # once per model; a no-op if unsharded
        from torch.distributed.fsdp import register_fsdp_forward_method
        model.nr_hidden_then_head = types.MethodType(_hidden_then_head, model)
        register_fsdp_forward_method(model, "nr_hidden_then_head")
    return model.nr_hidden_then_head(inputs, targets, temperature if temperature > 0 else 1.0,
                                     suppress_ids, chunk_rows)


class ReplayCache(DynamicCache):
    """A DynamicCache that HF's checkpointed decoder layers may write: the recompute of a layer in
    backward would append its keys and values a second time, so there update() hands back what it
    returned in the forward, per layer last in first out (backward recomputes a layer's completion
    call before its prompt call, whose keys and values the completion call read)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.returned = {}  # layer index -> [(keys, values)] in forward order

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        done = self.returned.setdefault(layer_idx, [])
        if torch._C._current_graph_task_id() != -1:  # inside backward: checkpoint's recompute
            return done.pop()
        out = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        done.append(out)
        return out


def shared_prompt_hidden(model, batch):
    """(B, T, H) last hidden states predicting batch["completion_ids"], each distinct prompt run
    once: its KV cache rows are picked per sequence (row_prompt) and the completions run against
    them; gradients flow back into the shared prompt forward (pitfall 20). Always two calls of
    the model, T = 1 included: under FSDP every rank must make the same calls (pitfall 22). Under
    gradient checkpointing, inside cache_kept_when_checkpointed (a ReplayCache, pitfall 23)."""
    rows, T = batch["row_prompt"], batch["completion_ids"].shape[1]  # (B,)
    images = {k: batch[k] for k in ("pixel_values", "image_grid_thw") if k in batch}
    cache = ReplayCache(config=model.config.get_text_config())
    prefix = model.model(input_ids=batch["prefix_ids"], attention_mask=batch["prefix_mask"],
                         mm_token_type_ids=batch["prefix_mm_types"], use_cache=True,
                         position_ids=batch["prefix_positions"], past_key_values=cache, **images)
    # index_select: x[rows]'s backward adds repeats in a thread-dependent order (pitfall 21)
    first = prefix.last_hidden_state[:, -1:].index_select(0, rows)  # (B, 1, H) predicts token 0
    for layer in cache.layers:  # (B, heads, Pp, d): a row per sequence (not batch_select_indices)
        layer.keys = layer.keys.index_select(0, rows)
        layer.values = layer.values.index_select(0, rows)
    n = max(T - 1, 1)  # completion tokens as inputs; with T = 1 one token whose output is unused
    ids = batch["completion_ids"][:, :n]  # (B, n)
    mask = torch.cat([batch["prefix_mask"][rows], batch["completion_mask"][:, :n].long()], 1)
    P = batch["input_ids"].shape[1] - T
    rest = model.model(input_ids=ids, attention_mask=mask, mm_token_type_ids=torch.zeros_like(ids),
                       position_ids=batch["position_ids"][:, :, P:P + n],
                       past_key_values=cache, use_cache=True)
    return torch.cat([first, rest.last_hidden_state[:, :T - 1]], 1)  # (B, T, H)


@contextlib.contextmanager
def cache_kept_when_checkpointed(model):
    """HF's checkpointed decoder layers drop the cache in training unless the layer says the
    recompute is safe: with a ReplayCache it is (pitfall 23)."""
    layers = model.model.language_model.layers
    for layer in layers:
        layer._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for layer in layers:
            del layer._can_checkpoint_with_cache  # the class's False again


def each_row_a_prompt(batch):
    """A batch with no repeated prompt given the prefix keys anyway (row_prompt = 0..B-1, images
    per occurrence), so that it makes shared_prompt_hidden's two calls like the other ranks."""
    P = batch["input_ids"].shape[1] - batch["completion_ids"].shape[1]
    out = expand_images(batch) if "image_index" in batch else dict(batch)
    out.update(prefix_ids=batch["input_ids"][:, :P], prefix_mask=batch["attention_mask"][:, :P],
               prefix_mm_types=batch["mm_token_type_ids"][:, :P],  # (B, P) each
               prefix_positions=batch["position_ids"][:, :, :P],  # (3, B, P)
               row_prompt=torch.arange(batch["input_ids"].shape[0]))  # (B,)
    return out


def completion_logps(model, batch, *, temperature=1.0, suppress_ids=None, chunk_rows=None,
                     share_prompt=True):
    """(B, T) fp32 log-probs of batch["completion_ids"] under the model. share_prompt: a prompt on
    several rows runs once (shared_prompt_hidden), gradient checkpointing included. Under FSDP the
    ranks agree first: if any rank's micro-batch repeats a prompt, every rank takes that path (a
    rank with no repeat runs each row as its own prompt), else every rank runs rows whole, so all
    make the same calls (pitfall 22). share_prompt=False: rows whole."""
    from torch.distributed.fsdp import FSDPModule
    device = next(model.parameters()).device
    once = share_prompt and "row_prompt" in batch
    if share_prompt and isinstance(model, FSDPModule):
        from nanorevisual.dist import all_reduce_dict
        once = all_reduce_dict({"once": once}, device, op="max")["once"] > 0  # any rank's repeat
    if once and "row_prompt" not in batch:
        batch = each_row_a_prompt(batch)
    keys = ("input_ids", "attention_mask", "mm_token_type_ids", "position_ids", "pixel_values",
            "image_grid_thw", "image_index")
    if once:
        keys += ("completion_ids", "completion_mask", "row_prompt", "prefix_ids", "prefix_mask",
                 "prefix_mm_types", "prefix_positions")
    inputs = {k: batch[k].to(device) for k in keys if k in batch}
    return sequence_logps(model, inputs, batch["completion_ids"].to(device),
                          temperature=temperature, suppress_ids=suppress_ids, chunk_rows=chunk_rows)
