"""Rollouts: log-prob parity with generate, EOS-inclusive masks, per-prompt pixel slicing, re-batching.

    python -m pytest -q tests/test_rollout.py
"""

import pytest
import torch
from PIL import Image

from parity import TENSOR_RTOL, rel_norm, within
from nanorevisual.prompts import build_messages, encode_prompts
from nanorevisual.processor import vision_token_ids
from nanorevisual.logprobs import collate_rollouts, completion_logps, expand_images
from nanorevisual.rollout import completion_length, generate_rollouts, split_pixels


@pytest.fixture(scope="module")
def mixed_messages():
    red = Image.new("RGB", (56, 56), (200, 30, 30))
    wide = Image.new("RGB", (100, 60), (20, 30, 200))  # grid [1,4,8]: 8 image tokens
    return [build_messages("<image>What colour is the shape?", [red]), build_messages("What is 3+4?", []),
            build_messages("Left <image> right <image>?", [wide, red]), build_messages("What is 2+2?", [])]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logps_match_generate_scores(tiny_stack, mixed_messages, temperature):
    model, processor = tiny_stack
    model.eval()
    suppress = vision_token_ids(processor)
    seqs = generate_rollouts(model, processor, mixed_messages, group_size=3, max_new_tokens=10,
                             temperature=temperature, micro_batch_size=6, suppress_ids=suppress, seed=3,
                             with_scores=True)
    assert len(seqs) == 12 and [s["prompt_index"] for s in seqs] == [i // 3 for i in range(12)]
    # re-batch in another order and composition than generate used: left padding differs, results must not
    order = [11, 0, 7, 4, 6, 2, 9]
    subset = [seqs[i] for i in order]
    batch = collate_rollouts(subset, processor.tokenizer.pad_token_id)
    with torch.no_grad():
        logps = completion_logps(model, batch, temperature=temperature, suppress_ids=suppress)  # (B, T)
    worst = max((logps[i, :s["num_tokens"]] - s["sample_logps"]).abs().max().item() for i, s in enumerate(subset))
    # generate's fp32 scores vs the log-prob forward: other batch shapes and paddings, so other GEMM blockings;
    # log-probs of size <= ~10 carry ~1e-6 of rounding, a wrong temperature, mask or position moves them >= 1e-2
    within(f"rollout/generate scores vs log-prob forward, T={temperature}", worst, 1e-5)
    for i, s in enumerate(subset):
        n = s["num_tokens"]
        assert batch["completion_mask"][i, :n].all() and not batch["completion_mask"][i, n:].any()
    # never a vision special token in a completion (they would crash the training forward)
    assert not any(torch.isin(s["completion_ids"], torch.tensor(suppress)).any() for s in seqs)


def test_completion_mask_through_first_eos(tiny_stack, mixed_messages):
    model, processor = tiny_stack
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    # force EOS early by making it the overwhelmingly likely token for this call only
    bias = torch.zeros(model.lm_head.weight.shape[0])
    bias[eos] = 4.0
    model.lm_head.bias = torch.nn.Parameter(bias)
    try:
        seqs = generate_rollouts(model, processor, mixed_messages, group_size=4, max_new_tokens=12,
                                 temperature=1.0, micro_batch_size=16, suppress_ids=vision_token_ids(processor), seed=0)
    finally:
        model.lm_head.bias = None
    ended = [s for s in seqs if not s["truncated"]]
    assert ended  # the EOS bias made some sequences stop early
    for s in seqs:
        ids = s["completion_ids"]
        if s["truncated"]:
            assert ids.numel() == 12 and (ids != eos).all()
        else:
            assert ids[-1] == eos and (ids[:-1] != eos).all()  # EOS kept, nothing after it
        assert s["num_tokens"] == ids.numel()
    batch = collate_rollouts(seqs, processor.tokenizer.pad_token_id)
    assert batch["completion_mask"].sum() == sum(s["num_tokens"] for s in seqs)
    # padding after EOS is pad_token_id, and it is masked out even though pad_token_id could equal EOS elsewhere
    for i, s in enumerate(seqs):
        assert (batch["completion_ids"][i, s["num_tokens"]:] == processor.tokenizer.pad_token_id).all()


def test_split_pixels_matches_single_prompt_processing(tiny_stack, mixed_messages):
    _, processor = tiny_stack
    enc = encode_prompts(processor, mixed_messages)
    parts = split_pixels(enc)
    for msgs, (pixels, grid) in zip(mixed_messages, parts):
        alone = encode_prompts(processor, [msgs])
        if "pixel_values" in alone:
            assert torch.equal(pixels, alone["pixel_values"]) and torch.equal(grid, alone["image_grid_thw"])
        else:
            assert pixels is None and grid is None
    assert parts[2][1].shape == (2, 3)


def test_greedy_is_deterministic_and_batch_independent(tiny_stack, mixed_messages):
    model, processor = tiny_stack
    kw = dict(group_size=1, max_new_tokens=8, temperature=0.0, suppress_ids=vision_token_ids(processor))
    together = generate_rollouts(model, processor, mixed_messages, micro_batch_size=4, **kw)
    alone = [generate_rollouts(model, processor, [m], micro_batch_size=1, **kw)[0] for m in mixed_messages]
    for a, b in zip(together, alone):
        assert torch.equal(a["completion_ids"], b["completion_ids"])


@pytest.fixture(scope="module")
def qwen_stack(qwen_dir):
    """A checkpoint whose generation_config.json carries the 7B-Instruct sampling defaults (penalty 1.3)."""
    from nanorevisual.model import load_model_and_processor
    return load_model_and_processor(qwen_dir)


def test_sampling_ignores_checkpoint_generation_defaults(qwen_stack, mixed_messages):
    """Rollouts come from softmax(logits / T) with top-p, whatever the checkpoint's repetition penalty and top-k say:
    generate's own scores equal the log-prob path's (with the penalty sampled, they differ by ~1e-1)."""
    model, processor = qwen_stack
    model.eval()
    suppress = vision_token_ids(processor)
    seqs = generate_rollouts(model, processor, mixed_messages, group_size=2, max_new_tokens=12, temperature=1.0,
                             top_p=1.0, micro_batch_size=8, suppress_ids=suppress, seed=4, with_scores=True)
    batch = collate_rollouts(seqs, processor.tokenizer.pad_token_id)
    with torch.no_grad():
        logps = completion_logps(model, batch, temperature=1.0, suppress_ids=suppress)  # (B, T)
    worst = max((logps[i, :s["num_tokens"]] - s["sample_logps"]).abs().max().item() for i, s in enumerate(seqs))
    # generate's fp32 scores vs the log-prob forward: other batch shapes and paddings, so other GEMM blockings;
    # log-probs of size <= ~10 carry ~1e-6 of rounding, a wrong temperature, mask or position moves them >= 1e-2
    within("rollout/generate scores vs log-prob forward, qwen configs", worst, 1e-5)
    # top-k 1 from the folder would make the G samples of a prompt identical
    assert any(not torch.equal(seqs[2 * i]["completion_ids"], seqs[2 * i + 1]["completion_ids"]) for i in range(4))


def test_endoftext_ends_the_completion(qwen_stack, mixed_messages):
    """<|endoftext|> stops generation and ends the mask, like <|im_end|> (the released code stops on both)."""
    model, processor = qwen_stack
    tok = processor.tokenizer
    endoftext = tok.convert_tokens_to_ids("<|endoftext|>")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    vocab = model.lm_head.weight.shape[0]
    for stop in (endoftext, im_end):
        # every other token suppressed: the first sampled token must be `stop`, and generation must end there
        only_stop = [i for i in range(vocab) if i != stop]
        seqs = generate_rollouts(model, processor, mixed_messages, group_size=2, max_new_tokens=6, temperature=1.0,
                                 micro_batch_size=8, suppress_ids=only_stop, seed=0)
        for s in seqs:
            assert s["completion_ids"].tolist() == [stop] and s["num_tokens"] == 1 and not s["truncated"]
        batch = collate_rollouts(seqs, tok.pad_token_id)
        assert batch["completion_mask"].sum() == len(seqs)  # the stop token itself is trained on
    # a stop token sampled mid-sequence: the completion ends at the first of either, nothing after it survives
    stop_ids = torch.tensor([im_end, endoftext])
    assert completion_length(torch.tensor([40, 41, endoftext, 42, im_end]), stop_ids) == (3, False)
    assert completion_length(torch.tensor([40, im_end, endoftext, endoftext]), stop_ids) == (2, False)
    assert completion_length(torch.tensor([40, 41, 42]), stop_ids) == (3, True)


def test_shared_prefill_matches_repeated_prompts(tiny_stack, mixed_messages):
    """One prefill per prompt with G copies of its KV cache (share_prefill=True) against generate's own expansion
    of every prompt G times: identical greedy tokens, identical sampled tokens from the same seed, and generate's
    scores still equal the log-prob path."""
    model, processor = tiny_stack
    model.eval()
    suppress = vision_token_ids(processor)
    kw = dict(group_size=3, max_new_tokens=10, micro_batch_size=6, suppress_ids=suppress, seed=11)
    greedy = generate_rollouts(model, processor, mixed_messages, temperature=0.0, share_prefill=True, **kw)
    alone = [generate_rollouts(model, processor, [m], temperature=0.0, group_size=1, max_new_tokens=10,
                               micro_batch_size=1, suppress_ids=suppress, share_prefill=False)[0] for m in mixed_messages]
    for i, s in enumerate(greedy):  # greedy: every sample of prompt p equals prompt p decoded alone
        assert torch.equal(s["completion_ids"], alone[i // 3]["completion_ids"])
    shared, repeated = (generate_rollouts(model, processor, mixed_messages, temperature=1.0, with_scores=True,
                                          share_prefill=flag, **kw) for flag in (True, False))
    assert [s["completion_ids"].tolist() for s in shared] == [s["completion_ids"].tolist() for s in repeated]
    batch = collate_rollouts(shared, processor.tokenizer.pad_token_id)
    with torch.no_grad():
        logps = completion_logps(model, batch, temperature=1.0, suppress_ids=suppress)  # (B, T)
    worst = max((logps[i, :s["num_tokens"]] - s["sample_logps"]).abs().max().item() for i, s in enumerate(shared))
    # generate's fp32 scores vs the log-prob forward: other batch shapes and paddings, so other GEMM blockings;
    # log-probs of size <= ~10 carry ~1e-6 of rounding, a wrong temperature, mask or position moves them >= 1e-2
    within("rollout/shared prefill scores vs log-prob forward", worst, 1e-5)


def test_stored_positions_equal_the_models_own(tiny_stack, mixed_messages):
    """collate_rollouts' position_ids (from generate's prompt positions) are exactly what the model would compute
    itself from mm_token_type_ids: the same logits with and without them."""
    model, processor = tiny_stack
    seqs = generate_rollouts(model, processor, mixed_messages, group_size=2, max_new_tokens=6, temperature=1.0,
                             micro_batch_size=8, suppress_ids=vision_token_ids(processor), seed=2)
    batch = expand_images(collate_rollouts(seqs[::-1], processor.tokenizer.pad_token_id))  # another padding layout
    keys = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")
    inputs = {k: batch[k] for k in keys}
    ours, _ = model.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"], batch["image_grid_thw"],
                                         attention_mask=batch["attention_mask"])  # (3, B, L)
    assert torch.equal(batch["position_ids"], ours)
    with torch.no_grad():
        with_pos = model(**inputs, position_ids=batch["position_ids"], use_cache=False).logits
        without = model(**inputs, use_cache=False).logits
    assert torch.equal(with_pos, without)


def test_collate_stores_each_prompts_images_once(tiny_stack, mixed_messages):
    """The G samples of a prompt share its images: collate keeps them once, and image_index restores every
    occurrence in row order (a two-image prompt included)."""
    model, processor = tiny_stack
    seqs = generate_rollouts(model, processor, mixed_messages, group_size=3, max_new_tokens=4, temperature=1.0,
                             micro_batch_size=12, suppress_ids=vision_token_ids(processor), seed=1)
    order = [7, 0, 8, 1, 6, 3]  # rows of several prompts, interleaved
    batch = collate_rollouts([seqs[i] for i in order], processor.tokenizer.pad_token_id)
    with_images = [seqs[i] for i in order if seqs[i]["pixel_values"] is not None]
    distinct = {id(s["pixel_values"]) for s in with_images}
    assert len(batch["image_grid_thw"]) == sum(len(next(s for s in with_images if id(s["pixel_values"]) == d)
                                                    ["image_grid_thw"]) for d in distinct)
    assert len(batch["image_index"]) == sum(len(s["image_grid_thw"]) for s in with_images) > len(batch["image_grid_thw"])
    full = expand_images(batch)
    assert torch.equal(full["pixel_values"], torch.cat([s["pixel_values"] for s in with_images]))
    assert torch.equal(full["image_grid_thw"], torch.cat([s["image_grid_thw"] for s in with_images]))


def test_shared_prompt_forward_equals_whole_rows(tiny_stack, mixed_messages):
    """Each distinct prompt run once with its KV cache picked per row (PAD's repeats included) gives the log-probs
    and the gradients of running every row whole."""
    model, processor = tiny_stack
    suppress = vision_token_ids(processor)
    seqs = generate_rollouts(model, processor, mixed_messages, group_size=3, max_new_tokens=8, temperature=1.0,
                             micro_batch_size=12, suppress_ids=suppress, seed=4)
    picked = [seqs[i] for i in (7, 0, 7, 8, 2, 5, 1, 10)]  # repeats, a two-image prompt, text prompts
    batch = collate_rollouts(picked, processor.tokenizer.pad_token_id)
    assert batch["row_prompt"].tolist() == [0, 1, 0, 0, 1, 2, 1, 3] and batch["prefix_ids"].shape[0] == 4
    whole = {k: v for k, v in batch.items() if k != "row_prompt" and not k.startswith("prefix")}
    mask = batch["completion_mask"]
    results = []
    for b in (batch, whole):
        model.zero_grad(set_to_none=True)
        logps = completion_logps(model, b, temperature=0.7, suppress_ids=suppress)  # (B, T)
        (logps * mask).sum().backward()
        results.append((logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    model.zero_grad(set_to_none=True)
    (shared, g_shared), (rows, g_rows) = results
    # the prompt's attention runs in another call and batch shape: log-probs as in the rows above (~1e-6 rounding)
    within("prompt once/log-probs vs whole rows", (shared[mask] - rows[mask]).abs().max().item(), 1e-5)
    assert g_shared.keys() == g_rows.keys() and any(n.startswith("model.visual") for n in g_rows)
    # the G rows' gradients reach the prompt as one sum instead of G: other groupings, norm-wise per tensor
    within("prompt once/gradients vs whole rows",
           max(rel_norm([g_rows[n]], [g_shared[n]]) for n in g_rows), TENSOR_RTOL)


def test_shared_prompt_forward_under_gradient_checkpointing(tiny_dir, tiny_stack, mixed_messages):
    """With HF's checkpointed layers (which drop the KV cache in training unless told otherwise) the
    prompt-once forward keeps its cache through the recompute (ReplayCache) and equals rows whole."""
    from nanorevisual.model import load_model_and_processor
    _, processor = tiny_stack
    model, _ = load_model_and_processor(tiny_dir, grad_checkpointing=True)
    assert model.is_activation_checkpointing
    suppress = vision_token_ids(processor)
    model.eval()
    seqs = generate_rollouts(model, processor, mixed_messages, group_size=3, max_new_tokens=8,
                             temperature=1.0, micro_batch_size=12, suppress_ids=suppress, seed=4)
    batch = collate_rollouts([seqs[i] for i in (7, 0, 7, 8, 2, 5, 1, 10)],
                             processor.tokenizer.pad_token_id)
    mask = batch["completion_mask"]
    model.train()
    results = []
    for share in (True, False):
        logps = completion_logps(model, batch, temperature=0.7, suppress_ids=suppress,
                                 share_prompt=share)  # (B, T)
        (logps * mask).sum().backward()
        results.append((logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                         if p.grad is not None}))
        model.zero_grad(set_to_none=True)
    (shared, g_shared), (rows, g_rows) = results
    assert all(not hasattr(layer, "_can_checkpoint_with_cache") or
               not layer._can_checkpoint_with_cache for layer in model.model.language_model.layers)
    # as in the test above: another call and batch shape, ~1e-6 of rounding on log-probs <= ~10
    within("prompt once checkpointed/log-probs vs whole rows",
           (shared[mask] - rows[mask]).abs().max().item(), 1e-5)
    assert g_shared.keys() == g_rows.keys() and any(n.startswith("model.visual") for n in g_rows)
    # the G rows' gradients reach the prompt as one sum instead of G: other groupings, per tensor
    within("prompt once checkpointed/gradients vs whole rows",
           max(rel_norm([g_rows[n]], [g_shared[n]]) for n in g_rows), TENSOR_RTOL)
