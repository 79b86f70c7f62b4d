"""A tiny random Qwen2.5-VL as an ordinary HF folder, offline and deterministic, in about a second:
config, weights, a byte-level BPE with Qwen's special tokens trained on the caller's corpus, a chat
template with {% generation %} markers, the PIL image processor. Default shape: text hidden 128,
4 layers, vision hidden 64, depth 2 (~1.0M parameters); images within [56*56, 112*112] pixels.
The toy runs' model is built by nanorevisual/toy.py (`python -m nanorevisual.toy --model-out DIR`).
"""

import os

import torch

from nanorevisual.checkpoint import publish, save_hf_folder, temp_dir_for
from nanorevisual.processor import chat_template, image_only_processor_class

# Qwen's special tokens; ids 0..6 in the tiny vocabulary. The processor also looks up <|video_pad|>.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
TINY_CHAT_TEMPLATE = chat_template(default_system=None)  # no default system turn: shorter sequences


def build_tokenizer(corpus, vocab_size=512):
    """Byte-level BPE trained on `corpus` (any text round-trips through the byte alphabet)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token=None, padding_side="left",
                                  additional_special_tokens=SPECIAL_TOKENS[1:])
    tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def tiny_config(tok, hidden=128, layers=4, heads=4, kv_heads=2, vision_hidden=64, vision_depth=2,
                vision_heads=2, vocab_size=None):
    """A Qwen2.5-VL config with the tokenizer's special ids; vocab_size (>= the tokenizer's) pads
    the embedding and LM head to a real size, e.g. 152064, the 7B vocabulary, for a GPU check."""
    from transformers import Qwen2_5_VLConfig
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = hidden // heads
    half = head_dim // 2  # mrope_section must sum to head_dim / 2 (pitfall 18)
    mrope = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]
    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=max(vocab_size or 0, len(tok)), hidden_size=hidden,
                         intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=2048, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                          "mrope_section": mrope},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=vision_depth, hidden_size=vision_hidden,
                           intermediate_size=2 * vision_hidden, num_heads=vision_heads,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           out_hidden_size=hidden,  # = the text hidden size (pitfall 18)
                           window_size=112, fullatt_block_indexes=[vision_depth - 1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False)


def build_tiny_stack(corpus, seed=0, **config_kwargs):
    """(model, processor) in memory: BPE trained on `corpus`, PIL image processor, random model."""
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil
    tok = build_tokenizer(corpus)
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112}, patch_size=14,
        temporal_patch_size=2, merge_size=2)
    processor = image_only_processor_class()(image_processor=image_processor, tokenizer=tok,
                                             chat_template=TINY_CHAT_TEMPLATE)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_config(tok, **config_kwargs))
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, processor


def build_tiny(out_dir, corpus, seed=0, **config_kwargs):
    """Write the tiny stack as an HF folder (atomically: temp folder, then rename)."""
    model, processor = build_tiny_stack(corpus, seed, **config_kwargs)
    tmp = temp_dir_for(out_dir)
    os.makedirs(tmp, exist_ok=True)
    save_hf_folder(tmp, model, processor)
    publish(tmp, out_dir)
    return out_dir
