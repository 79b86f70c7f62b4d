"""The tiny stack and the real-model loader: build, save, reload, identical logits; a Qwen2.5-VL-7B-style folder.

    python -m pytest -q tests/test_model.py
"""

import os
import shutil

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from nanorevisual.prompts import build_messages, encode_prompts
from nanorevisual.model import load_model_and_processor
from nanorevisual.processor import QWEN_CHAT_TEMPLATE, vision_token_ids
from nanorevisual.tiny import SPECIAL_TOKENS
from nanorevisual.toy import tiny_stack as build_tiny_stack
from qwen_folder import STOCK_QWEN_TEMPLATE, write_qwen_style_folder

def mixed_batch(processor):
    img = Image.new("RGB", (56, 56), (200, 30, 30))
    msgs = [build_messages("<image>What colour is the shape?", [img]), build_messages("What is 3+4?", [])]
    return encode_prompts(processor, msgs)


def logits_of(model, enc):
    with torch.no_grad():
        return model(**enc, use_cache=False).logits


def test_tiny_builds_small_and_deterministic():
    m1, p1 = build_tiny_stack()
    m2, _ = build_tiny_stack()
    n = sum(p.numel() for p in m1.parameters())
    assert 500_000 < n < 5_000_000, n
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert [p1.tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(7))
    assert "{% generation %}" in p1.tokenizer.chat_template


def test_save_reload_identical_logits(tiny_dir, tiny_stack):
    model, processor = tiny_stack
    enc = mixed_batch(processor)
    ref = logits_of(model, enc)
    auto = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    assert torch.equal(logits_of(auto, enc), ref)
    model2, processor2 = load_model_and_processor(tiny_dir)
    enc2 = mixed_batch(processor2)
    assert torch.equal(enc2["input_ids"], enc["input_ids"]) and torch.equal(enc2["pixel_values"], enc["pixel_values"])
    assert torch.equal(logits_of(model2, enc2), ref)
    assert processor2.tokenizer.padding_side == "left"
    tok = processor2.tokenizer
    assert model2.generation_config.eos_token_id == [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    assert len(vision_token_ids(processor2)) == 4


def test_loads_folder_laid_out_like_qwen25_vl_7b(tmp_path):
    src_model, src_processor = build_tiny_stack()
    out = str(tmp_path / "Qwen2.5-VL-7B-Instruct")
    write_qwen_style_folder(src_model, src_processor, out)
    files = set(os.listdir(out))
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) >= 2
    model, processor = load_model_and_processor(out)
    # the stock template has no generation markers: the loader swaps in ours, which renders the same text
    assert processor.tokenizer.chat_template == QWEN_CHAT_TEMPLATE
    img = Image.new("RGB", (64, 48), (10, 200, 10))
    conv = build_messages("<image>What colour?", [img]) + [{"role": "assistant", "content": "green"}]
    tok = processor.tokenizer
    for msgs, gen in ((conv[:1], True), (conv, False)):
        ours = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        stock = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen, chat_template=STOCK_QWEN_TEMPLATE)
        assert ours == stock
    assert processor.image_processor.size == {"shortest_edge": 3136, "longest_edge": 12845056}
    # the folder's sampling defaults (repetition penalty, top-k 1, ...) are gone: only stop and pad ids remain
    gc = model.generation_config
    assert gc.repetition_penalty is None and gc.top_k is None and gc.top_p is None and gc.temperature is None
    assert gc.eos_token_id == [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    assert processor.tokenizer.padding_side == "left"
    enc = mixed_batch(processor)
    with torch.no_grad():  # the reference: the same weights rounded to bf16 (buffers untouched)
        for p in src_model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    ref = logits_of(src_model, enc)
    assert torch.equal(logits_of(model, enc), ref)
    # min/max pixels overrides (users shrink images for memory)
    _, small = load_model_and_processor(out, max_pixels=112 * 112, load_model=False)
    assert small.image_processor.size["longest_edge"] == 112 * 112
    shutil.rmtree(out)
