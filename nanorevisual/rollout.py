"""Rollouts with HF `generate`: G samples per prompt (paper §4.1), one plain dict per sequence.

Vision tokens are suppressed, as in the log-prob path (pitfall 4); generation stops on <|im_end|>
or <|endoftext|> and the completion runs through the first of them (pitfall 8); the M-RoPE
positions generate used are kept for the training forward (pitfall 5).
"""

import torch

from nanorevisual.prompts import encode_prompts


@torch.no_grad()
def generate_rollouts(model, processor, messages_list, *, group_size, max_new_tokens,
                      temperature=1.0, top_p=1.0, micro_batch_size=64, suppress_ids=None, seed=None,
                      prompt_offset=0, synced_gpus=None, with_scores=False, share_prefill=True):
    """G samples per prompt, prompt i's at [i*G, (i+1)*G): dicts of prompt_ids, prompt_mm_types
    (Lp,), prompt_positions (3, Lp), pixel_values, image_grid_thw (None for text), completion_ids
    (Tc,), truncated, text, prompt_index, num_tokens (= Tc); with_scores: sample_logps (Tc,).
    Each call of micro_batch_size sequences is seeded by (seed, prompt_offset + its first prompt):
    any split over ranks samples the same. Temperature 0: greedy. share_prefill: prefill_once."""
    device = next(model.parameters()).device
    tok = processor.tokenizer
    stop_ids = model.generation_config.eos_token_id  # <|im_end|>, <|endoftext|> (pitfall 7)
    stop_ids = torch.tensor(stop_ids if isinstance(stop_ids, list) else [stop_ids])  # (n_stop,)
    prompts_per_call = max(1, micro_batch_size // group_size)
    sampling = sampling_kwargs(temperature, top_p)
    out = []
    for start in range(0, len(messages_list), prompts_per_call):
        chunk = messages_list[start:start + prompts_per_call]
        enc = encode_prompts(processor, chunk)
        if seed is not None:
            torch.manual_seed(seed * 100_003 + prompt_offset + start)  # (seed, first prompt)
        gen_inputs = {k: v.to(device) for k, v in enc.items()}
        if share_prefill:
            gen_inputs, positions = prefill_once(model, gen_inputs, group_size)
        else:
            positions = model._prepare_position_ids_for_generation(gen_inputs["input_ids"],
                                                                   dict(gen_inputs))
            gen_inputs["num_return_sequences"] = group_size
        positions = positions[1:].cpu()  # (3, p, P) generate's M-RoPE positions, for training
        seqs = model.generate(**gen_inputs, **sampling, max_new_tokens=max_new_tokens,
                              suppress_tokens=suppress_ids, synced_gpus=synced_gpus,
                              output_scores=with_scores, return_dict_in_generate=True)
        out += sequence_records(enc, positions, seqs, tok, stop_ids, group_size, start, with_scores)
    return out


def sequence_records(enc, positions, seqs, tok, stop_ids, group_size, first, with_scores):
    """One generate call's output as one dict per sequence (generate_rollouts); the G samples of a
    prompt share its tensors (collate_rollouts groups by them). positions (3, p, P)."""
    P = enc["input_ids"].shape[1]
    completions = seqs.sequences[:, P:].cpu()  # (p*G, T)
    if with_scores:
        scores = torch.stack(seqs.scores, 1).float().log_softmax(-1).cpu()  # (p*G, T, V)
        sample_logps = scores.gather(2, completions[..., None]).squeeze(2)  # (p*G, T)
    prompts = []
    for p, (pixels, grid) in enumerate(split_pixels(enc)):
        keep = enc["attention_mask"][p].bool()  # (P,) left padding removed
        prompts.append({"prompt_ids": enc["input_ids"][p][keep], "pixel_values": pixels,
                        "prompt_mm_types": enc["mm_token_type_ids"][p][keep],
                        "prompt_positions": positions[:, p, keep], "image_grid_thw": grid,
                        "prompt_index": first + p})
    out = []
    for j in range(completions.shape[0]):
        ids = completions[j]  # (T,) sample j of prompt j // G
        length, truncated = completion_length(ids, stop_ids)
        ids = ids[:length].clone()  # (Tc,)
        out.append({**prompts[j // group_size], "completion_ids": ids, "truncated": truncated,
                    "text": tok.decode(ids, skip_special_tokens=True), "num_tokens": length})
        if with_scores:
            out[-1]["sample_logps"] = sample_logps[j, :length]
    return out


def prefill_once(model, enc, group_size):
    """The vision tower and the prompt prefill once per prompt, then G copies of the KV cache for
    generate, which feeds the last prompt token and decodes (greedy: the same tokens as repeating
    the prompt; tests/test_rollout.py). enc: the processor's batch of p prompts (p, P). Returns
    (generate's keyword arguments, the (4, p, P) positions: a text row, then the M-RoPE rows)."""
    ids, mask, types = enc["input_ids"], enc["attention_mask"], enc["mm_token_type_ids"]  # (p, P)
    kwargs = {k: v for k, v in enc.items() if k != "input_ids"}
    positions = model._prepare_position_ids_for_generation(ids, dict(kwargs))  # (4, p, P)
    rope_deltas = model.model.rope_deltas  # (p, 1) each row's 3-D position offset, set just above
    images = {k: enc[k] for k in ("pixel_values", "image_grid_thw") if k in enc}
    cache = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], use_cache=True,
                  mm_token_type_ids=types[:, :-1], position_ids=positions[..., :-1],
                  logits_to_keep=1,  # only the cache is used: no (p, P-1, V) logits
                  **images).past_key_values  # P-1 positions
    cache.batch_repeat_interleave(group_size)  # (p*G, ...) sample k of prompt i at row i*G + k
    model.model.rope_deltas = rope_deltas.repeat_interleave(group_size, 0)  # (p*G, 1)
    repeat = {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": types}
    return {**{k: v.repeat_interleave(group_size, 0) for k, v in repeat.items()},
            "past_key_values": cache,  # positions given: generate would loop over the p*G rows
            "position_ids": positions.repeat_interleave(group_size, 1)}, positions  # (4, p*G, P)


def completion_length(ids, stop_ids):
    """(length through the first stop token, truncated) of a row; ids (T,), stop_ids (n_stop,). HF
    pads finished rows with pad_token_id, <|endoftext|> for Qwen: only the first stop counts."""
    stop_pos = torch.isin(ids, stop_ids).nonzero()  # (n, 1)
    if stop_pos.numel() == 0:
        return ids.numel(), True
    return int(stop_pos[0]) + 1, False


def sampling_kwargs(temperature, top_p):
    """Every generate field that shapes the distribution, set: softmax(logits / temperature) with
    nucleus top_p, nothing else; an unset field would come from generation_config.json (pitfall 7).
    Temperature 0: greedy."""
    # explicit "off" values; the others (min_p, ...) are off by model.set_neutral_generation_config
    neutral = dict(repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0)
    if temperature > 0:
        return dict(neutral, do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                    typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0)
    return dict(neutral, do_sample=False, temperature=None, top_p=None, top_k=None)


def split_pixels(enc):
    """Per prompt row: (its rows of pixel_values, its image_grid_thw), or (None, None) for text.
    pixel_values is flat over the batch's images, grid_t * grid_h * grid_w rows each, in prompt
    order; a row owns the next images until their tokens add up to its image tokens."""
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
        pixels = enc["pixel_values"][row_i:row_i + rows]  # (rows, D)
        out.append((pixels, grids[first:image_i]) if rows else (None, None))
        row_i += rows
    return out
