"""Rollouts with HF `generate`, and the training batch they become.

`generate_rollouts` samples G completions per prompt in micro-batches (bounded KV-cache memory) and returns one
plain dict per sequence; `collate_rollouts` re-batches any subset of them (PAD picks arbitrary, possibly repeated
indices) into the model inputs that logprobs.completion_logps scores.

Shape legend: see nanorevisual/grpo.py (B sequences, P padded prompt length, T padded completion length, V vocab).

Correctness points (docs/pitfalls.md):
1. Vision special tokens are suppressed in `generate` and the same -inf mask is applied in the log-prob path
   (pitfall 4); otherwise a sampled <|image_pad|> crashes the training forward.
2. Generation stops on <|im_end|> or <|endoftext|> (as released); the completion mask runs through the first of
   them inclusive (the model must learn to stop), never built from `pad_token_id` (pitfall 8).
3. The log-prob forward passes `mm_token_type_ids` (prompt types extended with zeros), so M-RoPE positions are
   those `generate` used (pitfall 5).
4. Log-probs are of softmax(logits / temperature), the distribution that was sampled (logprobs.completion_logps).
"""

import torch

from nanorevisual.prompts import encode_prompts


@torch.no_grad()
def generate_rollouts(model, processor, messages_list, *, group_size, max_new_tokens, temperature=1.0, top_p=1.0,
                      micro_batch_size=64, suppress_ids=None, seed=None, prompt_offset=0, synced_gpus=None,
                      with_scores=False, share_prefill=True):
    """Sample `group_size` completions for each prompt. Returns a list of len(messages_list) * group_size dicts,
    the G samples of prompt i at positions [i*G, (i+1)*G):

        prompt_ids, prompt_mm_types (Lp,) long, prompt_positions (3, Lp) long (M-RoPE), pixel_values (n_patches, D)
        | None, image_grid_thw (n_images, 3) | None, completion_ids (Tc,) long (through the first stop token),
        truncated bool (no stop token), text str (special tokens skipped), prompt_index int, num_tokens int (= Tc)

    micro_batch_size counts sequences per `generate` call (prompts per call = max(1, micro_batch_size // G)).
    Each call is seeded from (seed, prompt_offset + index of its first prompt), so a rank that holds prompts
    [offset, offset + n) of a global batch samples exactly what one process holding them all would.
    temperature 0 means greedy decoding. with_scores=True also stores `sample_logps` (Tc,): generate's own
    log-probs of the sampled tokens (post-processor scores), used by the parity test of the log-prob path.
    share_prefill=True runs the vision tower and the prompt prefill once per prompt and decodes its G samples from
    copies of that KV cache (`prefill_once`); False lets generate repeat every prompt G times first
    (num_return_sequences). Both sample the same distribution with the same random draws.
    """
    device = next(model.parameters()).device
    tok = processor.tokenizer
    stop_ids = model.generation_config.eos_token_id  # <|im_end|> and <|endoftext|> (model.set_neutral_generation_config)
    stop_ids = torch.tensor(stop_ids if isinstance(stop_ids, list) else [stop_ids])  # (n_stop,)
    prompts_per_call = max(1, micro_batch_size // group_size)
    sampling = sampling_kwargs(temperature, top_p)
    out = []
    for start in range(0, len(messages_list), prompts_per_call):
        chunk = messages_list[start:start + prompts_per_call]
        enc = encode_prompts(processor, chunk)
        if seed is not None:
            torch.manual_seed(seed * 100_003 + prompt_offset + start)  # per (seed, first prompt of the call)
        gen_inputs = {k: v.to(device) for k, v in enc.items()}
        if share_prefill:
            gen_inputs, positions = prefill_once(model, gen_inputs, group_size)
        else:
            positions = model._prepare_position_ids_for_generation(gen_inputs["input_ids"], dict(gen_inputs))
            gen_inputs["num_return_sequences"] = group_size
        positions = positions[1:].cpu()  # (3, p, P) the M-RoPE positions generate uses, kept for the training forward
        seqs = model.generate(**gen_inputs, **sampling, max_new_tokens=max_new_tokens, suppress_tokens=suppress_ids,
                              synced_gpus=synced_gpus, output_scores=with_scores, return_dict_in_generate=True)
        P = enc["input_ids"].shape[1]
        completions = seqs.sequences[:, P:].cpu()  # (p*G, T)
        if with_scores:
            scores = torch.stack(seqs.scores, 1).float().log_softmax(-1).cpu()  # (p*G, T, V)
            sample_logps = scores.gather(2, completions[..., None]).squeeze(2)  # (p*G, T)
        prompts = []  # one set of prompt tensors per prompt, shared by its G samples (collate_rollouts groups by it)
        for p, (pixels, grid) in enumerate(split_pixels(enc)):
            row_mask = enc["attention_mask"][p].bool()  # (P,) left padding removed
            prompts.append({"prompt_ids": enc["input_ids"][p][row_mask], "prompt_mm_types": enc["mm_token_type_ids"][p][row_mask],
                            "prompt_positions": positions[:, p, row_mask], "pixel_values": pixels, "image_grid_thw": grid,
                            "prompt_index": start + p})
        for j in range(completions.shape[0]):
            ids = completions[j]  # (T,) sample j of prompt j // G (num_return_sequences repeats each prompt G times)
            length, truncated = completion_length(ids, stop_ids)
            ids = ids[:length].clone()  # (Tc,)
            out.append({**prompts[j // group_size], "completion_ids": ids, "truncated": truncated,
                        "text": tok.decode(ids, skip_special_tokens=True), "num_tokens": length})
            if with_scores:
                out[-1]["sample_logps"] = sample_logps[j, :length]
    return out


def prefill_once(model, enc, group_size):
    """Run the vision tower and the prompt prefill once per prompt, then hand generate G copies of the KV cache.

    enc: the processor's batch of p prompts (input_ids (p, P), attention_mask, mm_token_type_ids, pixel_values,
    image_grid_thw). The prefill covers positions [0, P-1) with the 3-D M-RoPE positions generate itself would use
    (the model's own _prepare_position_ids_for_generation); the cache and the per-row rope offsets are repeated G
    times, and generate, given the cache, feeds the last prompt token and decodes. Greedy decoding gives the same
    tokens as the repeated-prompt path (tests/test_rollout.py). Returns (generate's keyword arguments, the (4, p, P)
    positions: text row, then the three M-RoPE rows)."""
    ids, mask, types = enc["input_ids"], enc["attention_mask"], enc["mm_token_type_ids"]  # (p, P) each
    kwargs = {k: v for k, v in enc.items() if k != "input_ids"}
    positions = model._prepare_position_ids_for_generation(ids, dict(kwargs))  # (4, p, P); sets model.model.rope_deltas
    rope_deltas = model.model.rope_deltas  # (p, 1) 3-D position offset of each row
    images = {k: enc[k] for k in ("pixel_values", "image_grid_thw") if k in enc}
    cache = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], mm_token_type_ids=types[:, :-1],
                  position_ids=positions[..., :-1], use_cache=True, **images).past_key_values  # P-1 positions
    cache.batch_repeat_interleave(group_size)  # (p*G, ...) sample k of prompt i at row i*G + k
    model.model.rope_deltas = rope_deltas.repeat_interleave(group_size, 0)  # (p*G, 1)
    # the positions too: left to itself, generate recomputes them for all p*G rows, a Python loop over the rows
    return {"input_ids": ids.repeat_interleave(group_size, 0), "attention_mask": mask.repeat_interleave(group_size, 0),
            "mm_token_type_ids": types.repeat_interleave(group_size, 0), "past_key_values": cache,
            "position_ids": positions.repeat_interleave(group_size, 1)}, positions  # (4, p*G, P)


def completion_length(ids, stop_ids):
    """(length through the first stop token inclusive, truncated) of one generated row; ids (T,), stop_ids (n_stop,).
    HF pads finished rows with pad_token_id, which is <|endoftext|> for Qwen: only the first stop token counts."""
    stop_pos = torch.isin(ids, stop_ids).nonzero()  # (n, 1)
    if stop_pos.numel() == 0:
        return ids.numel(), True
    return int(stop_pos[0]) + 1, False


def sampling_kwargs(temperature, top_p):
    """Every generate field that shapes the sampled distribution, set explicitly: softmax(logits / temperature)
    with nucleus top_p and nothing else. Fields a call leaves unset are filled from model.generation_config, which
    a real checkpoint uses for a repetition penalty and top-k (docs/pitfalls.md, pitfall 7); the log-prob path
    scores exactly this distribution. temperature 0 means greedy decoding."""
    # the fields with an explicit "off" value; the others (min_p, bad_words_ids, ...) are off only because
    # model.set_neutral_generation_config cleared them, which the parity tests check on a Qwen-config checkpoint
    neutral = dict(repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0)  # greedy and sampled
    if temperature > 0:
        return dict(neutral, do_sample=True, temperature=temperature, top_p=top_p, top_k=0, typical_p=1.0,
                    epsilon_cutoff=0.0, eta_cutoff=0.0)
    return dict(neutral, do_sample=False, temperature=None, top_p=None, top_k=None)  # sampling fields unset


def split_pixels(enc):
    """Per prompt row: (pixel_values rows of its images, their image_grid_thw), or (None, None) for text rows.

    pixel_values is flattened over all images of the batch (not batch-major); each image owns
    grid_t * grid_h * grid_w rows, in prompt order (TRL slices the same way). A row's images are found by
    walking the images in order until their tokens add up to the row's image tokens (mm_token_type_ids)."""
    B = enc["input_ids"].shape[0]
    if "pixel_values" not in enc:
        return [(None, None)] * B
    image_tokens = enc["mm_token_type_ids"].sum(1).tolist()  # (B,) image tokens per row
    grids = enc["image_grid_thw"]  # (n_images, 3)
    patch_rows = grids.prod(-1).tolist()  # (n_images,) pixel rows per image
    merge_area = sum(patch_rows) // sum(image_tokens)  # spatial_merge_size ** 2 (4 for Qwen2.5-VL)
    out, image_i, row_i = [], 0, 0
    for b in range(B):
        first, tokens, rows = image_i, 0, 0
        while tokens < image_tokens[b]:
            tokens += patch_rows[image_i] // merge_area
            rows += patch_rows[image_i]
            image_i += 1
        out.append((enc["pixel_values"][row_i:row_i + rows], grids[first:image_i]) if rows else (None, None))
        row_i += rows
    return out
