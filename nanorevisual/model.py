"""Load a Qwen2.5-VL policy and its processor, from a hub id, a local HF folder, or "tiny".

One function, `load_model_and_processor`, serves every script: train_sft.py, train_grpo.py and eval.py.
"tiny" builds (once, then caches under runs/tiny-model/) the random ~1M-parameter model of `nanorevisual.tiny`,
so everything runs offline on CPU; any other value goes through `from_pretrained` exactly as a real
`Qwen/Qwen2.5-VL-7B-Instruct` folder would.

Pitfalls handled here (shared/pitfalls.md):
1. No torchvision: the stock `Qwen2_5_VLProcessor` cannot be built and `AutoProcessor` silently returns a bare
   tokenizer, so the processor is always assembled from the PIL image processor + tokenizer (§2).
2. The chat template must carry `{% generation %}` markers for assistant-only SFT labels. The stock Qwen template
   has none, so when a loaded template lacks them we swap in `QWEN_CHAT_TEMPLATE`, which renders the same text.
"""

import functools
import json
import os
import re

import torch

# Vision special tokens that must never be sampled (pitfalls.md §4): a sampled <|image_pad|> makes the
# training forward count an extra image slot and crash.
VISION_SPECIAL_TOKENS = ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]
TINY_DIR = os.path.join("runs", "tiny-model")


def chat_template(default_system=None):
    """Qwen2-VL style chat template with {% generation %} around each assistant reply (incl. <|im_end|>).

    No whitespace control anywhere: the string has no incidental whitespace, and a `-` next to the literal
    newlines would eat them.
    """
    system = ""
    if default_system:
        system = ("{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
                  + default_system + "<|im_end|>\n{% endif %}")
    return (
        "{% macro render(content) %}"
        "{% if content is string %}{{ content }}"
        "{% else %}{% for item in content %}"
        "{% if item['type'] == 'image' or 'image' in item or 'image_url' in item %}"
        "<|vision_start|><|image_pad|><|vision_end|>"
        "{% elif item['type'] == 'video' or 'video' in item %}<|vision_start|><|video_pad|><|vision_end|>"
        "{% elif 'text' in item %}{{ item['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "{% endmacro %}"
        "{% for message in messages %}" + system +
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['role'] == 'assistant' %}"
        "{% generation %}{{ render(message['content']) }}<|im_end|>{% endgeneration %}"
        "{% else %}{{ render(message['content']) }}<|im_end|>{% endif %}{{ '\\n' }}"  # HF sets trim_blocks
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


# The stock Qwen2.5-VL template (default system prompt included), plus generation markers.
QWEN_CHAT_TEMPLATE = chat_template(default_system="You are a helpful assistant.")


@functools.cache
def image_only_processor_class():
    """Qwen2.5-VL processor without the video processor, which needs torchvision (docs/pitfalls.md, pitfall 1).
    Built on first use, like every transformers import of this module: a script that stops on a user error never
    pays the seconds transformers takes to import."""
    from transformers import Qwen2_5_VLProcessor

    class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            kwargs.pop("video_processor", None)
            super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                             chat_template=chat_template, **kwargs)

    return ImageOnlyQwen2_5_VLProcessor


def load_processor(path, min_pixels=None, max_pixels=None):
    """Image processor (PIL backend) + tokenizer from an HF folder or hub id, as one image-only processor."""
    from transformers import AutoTokenizer, Qwen2VLImageProcessorPil
    overrides = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, **overrides)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"  # rollouts and eval generate from left-padded prompts
    template = tokenizer.chat_template
    if not template or "{% generation %}" not in template:
        template = QWEN_CHAT_TEMPLATE  # renders the same text as Qwen's own, plus assistant masks
    tokenizer.chat_template = template
    return image_only_processor_class()(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name


def check_model_path(path):
    """The --model value every script accepts, checked before anything loads: "tiny" (built on first use), an HF
    folder with config.json, or a hub id (owner/name) when the hub can be reached. Returns the path to load."""
    from nanorevisual.common import UserError
    if path == "tiny":
        return resolve_model_path(path)
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "config.json")):
            raise UserError(f"--model {path}: folder has no config.json (expected a Hugging Face checkpoint folder)")
        return path
    if os.path.exists(path):
        raise UserError(f"--model {path}: is a file; expected a checkpoint folder, a hub id or 'tiny'")
    if not HUB_ID.match(path) or os.path.isdir(path.split("/")[0]):  # runs/nope: a local path, not an owner
        raise UserError(f"--model {path}: no such folder (and not a hub id like Qwen/Qwen2.5-VL-7B-Instruct)")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache
        if not isinstance(try_to_load_from_cache(path, "config.json"), str):
            raise UserError(f"--model {path}: no such folder, and HF_HUB_OFFLINE=1 with no cached copy of that hub id")
    return path


def is_toy_model(path):
    """The tiny model and its descendants (text hidden size <= 512) get the toy presets of every script."""
    if path in (None, "tiny"):
        return True
    try:
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
    except OSError:
        return False  # a hub id: a real model
    return cfg.get("text_config", cfg).get("hidden_size", 4096) <= 512


def resolve_model_path(path):
    """'tiny' -> the cached tiny model folder (built on first use); anything else unchanged."""
    if path != "tiny":
        return path
    if not os.path.exists(os.path.join(TINY_DIR, "config.json")):
        from nanorevisual.tiny import build_tiny
        build_tiny(TINY_DIR)
    return TINY_DIR


def load_model_and_processor(path, *, dtype=torch.float32, attn_implementation="sdpa", grad_checkpointing=False,
                             device="cpu", min_pixels=None, max_pixels=None, load_model=True):
    """The one loader every script uses. Returns (model, processor); model is None when load_model=False."""
    path = resolve_model_path(path)
    processor = load_processor(path, min_pixels=min_pixels, max_pixels=max_pixels)
    model = None
    if load_model:
        from transformers import AutoModelForImageTextToText
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
        model.to(device)
        if grad_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        set_neutral_generation_config(model, processor)
    return model, processor


# Qwen chat models end a turn with <|im_end|> but may also emit <|endoftext|>; the released code stops on both.
STOP_TOKENS = ["<|im_end|>", "<|endoftext|>"]


def stop_token_ids(processor):
    """Ids that end a completion (generation stops on either; the completion mask ends at the first of them)."""
    tok = processor.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in STOP_TOKENS]
    return [i for i in ids if i is not None and i != tok.unk_token_id]


def set_neutral_generation_config(model, processor):
    """Replace the checkpoint's generation config by one that carries only the stop and pad ids.

    HF generate fills every sampling field a call leaves unset from model.generation_config, and a real
    Qwen2.5-VL-7B-Instruct folder ships repetition_penalty 1.05, top_k 1, top_p 0.001, temperature 0.1
    (docs/pitfalls.md, pitfall 7): rollouts would then be drawn from a penalised distribution while the loss scores
    the plain one. With this neutral config the distribution is exactly what the caller's flags say, on every rank,
    and the checkpoints we write carry it, so the next stage starts clean.
    """
    from transformers import GenerationConfig
    model.generation_config = GenerationConfig(eos_token_id=stop_token_ids(processor),
                                               pad_token_id=processor.tokenizer.pad_token_id,
                                               bos_token_id=model.generation_config.bos_token_id)


def vision_token_ids(processor):
    """Ids of the vision special tokens, for generate(suppress_tokens=...) and the matching log-prob mask."""
    return [processor.tokenizer.convert_tokens_to_ids(t) for t in VISION_SPECIAL_TOKENS]


def freeze_vision(model):
    """Freeze the vision tower (paper §5.1: TRL stage). Frozen params must also be left out of the optimizer."""
    for p in model.model.visual.parameters():
        p.requires_grad_(False)


def count_params(model, trainable_only=False):
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
