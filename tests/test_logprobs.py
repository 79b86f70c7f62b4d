"""The chunked LM-head log-probs (nanorevisual/logprobs.py) against the plain fp32 computation, and through the model.

    python -m pytest -q tests/test_logprobs.py

Values and the gradients of the hidden states and of the LM-head weight equal a full log_softmax within 1e-5, with
a temperature and suppressed ids; generate's own scores are reproduced; autograd never saves a (B, T, V) tensor.
"""

import pytest
import torch
import torch.nn.functional as F

from parity import SUM_RTOL, TENSOR_RTOL, rel_norm, within
from nanorevisual.logprobs import ChunkedHeadLogps, chunk_rows_for, completion_logps, head_logps

INF = float("inf")


def plain_logps(hidden, weight, targets, temperature, suppress_ids):
    """The reference: full (B, T, V) fp32 logits, temperature, -inf mask, log_softmax, gather."""
    logits = (hidden.float() @ weight.float().t()) / temperature  # (B, T, V) fp32
    if suppress_ids:
        logits = logits.index_fill(-1, torch.tensor(suppress_ids), -INF)  # (B, T, V)
    return F.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)  # (B, T)


@pytest.mark.parametrize("chunk_rows", [1, 5, 7, 26, 4096, None])  # None: sized by the vocabulary
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_and_gradients_match_the_plain_computation(chunk_rows, temperature):
    B, T, H, V, suppress = 2, 13, 16, 50, [3, 7]
    g = torch.Generator().manual_seed(chunk_rows or 0)
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64).float()  # (B, T, H)
    weight = torch.randn(V, H, generator=g)  # (V, H)
    targets = torch.randint(0, V, (B, T), generator=g)  # (B, T)
    targets[torch.isin(targets, torch.tensor(suppress))] = 0
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    got = head_logps(h1, w1, targets, temperature=temperature, suppress_ids=suppress, chunk_rows=chunk_rows)
    want = plain_logps(h2, w2, targets, temperature, suppress)
    assert got.dtype == torch.float32 and got.shape == (B, T)
    # a log-prob is a logit minus a log-sum-exp of V terms, rounded at the scale of the largest logit: ~log2(V)
    # units of roundoff (6e-8) of that scale, ~5e-7; 2e-6 of it. A wrong temperature or mask moves it by >= 1e-2.
    scale = max(1.0, (hidden @ weight.t()).abs().max().item() / temperature)
    within("chunked head/values vs plain, per largest logit", (got - want).abs().max().item() / scale, 2e-6)
    upstream = torch.randn(B, T, generator=g)  # (B, T) arbitrary incoming gradient
    (got * upstream).sum().backward()
    (want * upstream).sum().backward()
    # the chunked backward sums the same fp32 terms in other groupings: a few roundoffs of relative error, norm-wise
    within("chunked head/gradients vs plain", rel_norm([h2.grad, w2.grad], [h1.grad, w1.grad]), SUM_RTOL)
    assert torch.all(w1.grad[suppress] == 0)  # suppressed rows never get a gradient


def test_chunks_are_sized_by_the_vocabulary():
    assert chunk_rows_for(152064) == 220  # 128 MiB of fp32 logits per chunk at the 7B vocabulary
    assert chunk_rows_for(1000) == 33554  # a tiny vocabulary: every row of a batch in one chunk


def test_gradcheck_in_double():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 4, dtype=torch.float64, generator=g, requires_grad=True)  # (N, H)
    weight = torch.randn(9, 4, dtype=torch.float64, generator=g, requires_grad=True)  # (V, H)
    targets = torch.tensor([0, 1, 2, 4, 5, 8])  # (N,)

    def f(h, w):
        return ChunkedHeadLogps.apply(h, w, targets, 0.8, torch.tensor([3]), 4).double()

    assert torch.autograd.gradcheck(f, (hidden, weight), atol=1e-4)


def test_reproduces_hf_generate_scores():
    from transformers.generation.logits_process import SuppressTokensLogitsProcessor, TemperatureLogitsWarper

    B, H, V, temperature, suppress = 3, 8, 40, 0.6, [5, 11, 39]
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(B, 1, H, generator=g), torch.randn(V, H, generator=g)  # (B, 1, H), (V, H)
    targets = torch.tensor([[0], [6], [38]])  # (B, 1)
    scores = (hidden[:, -1] @ weight.t()).float()  # (B, V) generate's fp32 copy of the last logits
    scores = TemperatureLogitsWarper(temperature)(None, SuppressTokensLogitsProcessor(suppress)(None, scores))
    want = F.log_softmax(scores, dim=-1).gather(1, targets)  # (B, 1)
    got = head_logps(hidden, weight, targets, temperature=temperature, suppress_ids=suppress)  # (B, 1)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    suppressed = head_logps(hidden, weight, torch.tensor([[5], [11], [39]]), suppress_ids=suppress)  # (B, 1)
    assert torch.all(suppressed == -INF)  # a suppressed target has probability 0


def test_autograd_never_saves_a_vocabulary_sized_tensor():
    B, T, H, V = 2, 32, 8, 300
    hidden = torch.randn(B, T, H, requires_grad=True)  # (B, T, H)
    weight = torch.randn(V, H, requires_grad=True)  # (V, H)
    targets = torch.randint(0, V, (B, T))  # (B, T)
    saved = []

    def pack(x):
        saved.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        head_logps(hidden, weight, targets, chunk_rows=10)
    assert max(saved) <= V * H  # the weight itself; never (B*T, V) or a (C, V) chunk


def test_completion_logps_through_the_model_matches_full_logits(tiny_stack):
    """The model path (hidden states -> chunked head) equals log_softmax of the model's own full logits."""
    from nanorevisual.prompts import build_messages
    from nanorevisual.processor import vision_token_ids
    from nanorevisual.logprobs import collate_rollouts, expand_images
    from nanorevisual.rollout import generate_rollouts
    from PIL import Image

    model, processor = tiny_stack
    suppress = vision_token_ids(processor)
    msgs = [build_messages("<image>What colour is the shape?", [Image.new("RGB", (56, 56), (200, 30, 30))]),
            build_messages("What is 3+4?", [])]
    seqs = generate_rollouts(model, processor, msgs, group_size=2, max_new_tokens=8, temperature=1.0,
                             micro_batch_size=4, suppress_ids=suppress, seed=0)
    batch = collate_rollouts(seqs, processor.tokenizer.pad_token_id)
    # the two samples of the image prompt share one vision-tower pass on our side; the reference runs it per sample
    assert len(batch["image_grid_thw"]) == 1 and batch["image_index"].tolist() == [0, 0]
    T = batch["completion_ids"].shape[1]
    inputs = {k: v for k, v in expand_images(batch).items() if k in ("input_ids", "attention_mask",
                                                                     "mm_token_type_ids", "pixel_values",
                                                                     "image_grid_thw")}
    model.zero_grad(set_to_none=True)
    got = completion_logps(model, batch, temperature=0.8, suppress_ids=suppress)  # (B, T)
    (got * batch["completion_mask"]).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    logits = model(**inputs, use_cache=False).logits[:, -T - 1:-1].float() / 0.8  # (B, T, V)
    logits = logits.index_fill(-1, torch.tensor(suppress), -INF)
    want = F.log_softmax(logits, -1).gather(-1, batch["completion_ids"][..., None]).squeeze(-1)  # (B, T)
    (want * batch["completion_mask"]).sum().backward()
    mask = batch["completion_mask"]
    # the tiny model's log-probs are <= ~10 in size: ~1e-6 of rounding (one ulp); other GEMM blockings add a few
    # ulps; a wrong temperature, mask or target moves them by >= 1e-2
    within("chunked head/model log-probs vs full logits", (got[mask] - want[mask]).abs().max().item(), 1e-5)
    names = [n for n, p in model.named_parameters() if p.grad is not None]
    assert names == sorted(grads, key=names.index) and set(names) == set(grads)
    within("chunked head/model gradients vs full logits",  # other summation groupings, norm-wise per tensor
           max(rel_norm([dict(model.named_parameters())[n].grad], [grads[n]]) for n in names), TENSOR_RTOL)
    assert "lm_head.weight" in grads
    model.zero_grad(set_to_none=True)

