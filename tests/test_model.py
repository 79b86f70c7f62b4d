"""The tiny stack and the real-model loader: build, save, reload, identical logits; a Qwen2.5-VL-7B-style folder.

    python -m pytest -q tests/test_model.py
"""

import json
import os
import shutil

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from nanorevisual.data import build_messages, encode_prompts
from nanorevisual.model import QWEN_CHAT_TEMPLATE, load_model_and_processor, vision_token_ids
from nanorevisual.tiny import SPECIAL_TOKENS, build_tiny_stack

# The stock Qwen2-VL / Qwen2.5-VL chat template as shipped in the hub folders (no generation markers).
STOCK_QWEN_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}")


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
    assert model2.generation_config.eos_token_id == processor2.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert len(vision_token_ids(processor2)) == 4


def write_qwen_style_folder(src_model, src_processor, out):
    """A folder laid out like Qwen/Qwen2.5-VL-7B-Instruct: 4.x flat config, bf16 shards + index, slow-tokenizer
    files next to tokenizer.json, Qwen2Tokenizer class, stock chat template, Qwen2VLImageProcessor config."""
    src_model.save_pretrained(out, max_shard_size="500KB", state_dict={k: v.to(torch.bfloat16) for k, v in
                              src_model.state_dict().items()})  # bf16 shards + model.safetensors.index.json
    src_processor.tokenizer.save_pretrained(out)
    tc = src_model.config.text_config
    vc = src_model.config.vision_config
    ids = {t: src_processor.tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl", "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|video_pad|>"] + 1, "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"], "hidden_act": "silu", "hidden_size": tc.hidden_size,
        "initializer_range": 0.02, "intermediate_size": tc.intermediate_size, "max_position_embeddings": 2048,
        "max_window_layers": tc.num_hidden_layers, "num_attention_heads": tc.num_attention_heads,
        "num_hidden_layers": tc.num_hidden_layers, "num_key_value_heads": tc.num_key_value_heads,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "transformers_version": "4.41.2", "use_cache": True, "use_sliding_window": False,
        "vision_config": {"depth": vc.depth, "hidden_act": "silu", "hidden_size": vc.hidden_size,
                          "intermediate_size": vc.intermediate_size, "num_heads": vc.num_heads, "in_chans": 3,
                          "out_hidden_size": vc.out_hidden_size, "patch_size": 14, "spatial_merge_size": 2,
                          "spatial_patch_size": 14, "window_size": 112,
                          "fullatt_block_indexes": list(vc.fullatt_block_indexes), "tokens_per_second": 2,
                          "temporal_patch_size": 2},
        "rope_scaling": {"type": "mrope", "mrope_section": list(tc.rope_parameters["mrope_section"])},
        "vocab_size": tc.vocab_size}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(out, "preprocessor_config.json"), "w") as f:
        json.dump({"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
                   "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                   "image_std": [0.26862954, 0.26130258, 0.27577711], "image_processor_type": "Qwen2VLImageProcessor",
                   "processor_class": "Qwen2_5_VLProcessor"}, f, indent=2)
    with open(os.path.join(out, "chat_template.json"), "w") as f:
        json.dump({"chat_template": STOCK_QWEN_TEMPLATE}, f)
    tok_cfg_path = os.path.join(out, "tokenizer_config.json")
    with open(tok_cfg_path) as f:
        tok_cfg = json.load(f)
    tok_cfg.update({"tokenizer_class": "Qwen2Tokenizer", "chat_template": STOCK_QWEN_TEMPLATE, "errors": "replace",
                    "model_max_length": 131072, "split_special_tokens": False, "padding_side": "right"})
    with open(tok_cfg_path, "w") as f:
        json.dump(tok_cfg, f, indent=2)
    for name in ("chat_template.jinja",):
        if os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))


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
