"""A tiny checkpoint laid out like Qwen/Qwen2.5-VL-7B-Instruct, with the real folder's configs (tests only).

The tiny model is not a real checkpoint: its configs carry no sampling defaults, pixel bounds or 4.x config layout.
This writer gives it those of the 7B-Instruct hub folder, so tests see what a real `--model` would do.
"""

import json
import os

import torch

from nanorevisual.tiny import SPECIAL_TOKENS

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



def write_qwen_style_folder(src_model, src_processor, out, repetition_penalty=1.3):
    """A folder laid out like Qwen/Qwen2.5-VL-7B-Instruct: 4.x flat config, bf16 shards + index, slow-tokenizer
    files next to tokenizer.json, Qwen2Tokenizer class, stock chat template, Qwen2VLImageProcessor config, and the
    sampling defaults of its generation_config.json."""
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
    # the released 7B-Instruct generation_config.json, ids mapped to the tiny vocabulary; the repetition penalty is
    # raised from 1.05 to 1.3 so that sampling from it instead of from our flags shows up as a large mismatch
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": ids["<|endoftext|>"], "pad_token_id": ids["<|endoftext|>"], "do_sample": True,
                   "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]], "repetition_penalty": repetition_penalty,
                   "temperature": 0.1, "top_p": 0.001, "top_k": 1, "transformers_version": "4.41.2"}, f, indent=2)
    for name in ("chat_template.jinja",):
        if os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
