"""The processor: tokenizer + PIL image processor without torchvision (pitfall 1), a chat
template with `{% generation %}` markers for assistant-only SFT labels (pitfall 2), special ids.
transformers is imported inside the functions: a run that stops on a user error never pays for it.
"""

import functools

# never sampled (pitfall 4): generate(suppress_tokens=...) and the same mask in the log-prob path
VISION_SPECIAL_TOKENS = ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]
STOP_TOKENS = ["<|im_end|>", "<|endoftext|>"]  # Qwen may end a turn with either (pitfall 8)


def chat_template(default_system=None):
    """Qwen2-VL style chat template with {% generation %} around each assistant reply (incl.
    <|im_end|>). No whitespace control: a `-` next to the literal newlines would eat them."""
    system = ("{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
              + default_system + "<|im_end|>\n{% endif %}") if default_system else ""
    return (
        "{% macro render(content) %}"
        "{% if content is string %}{{ content }}"
        "{% else %}{% for item in content %}"
        "{% if item['type'] == 'image' or 'image' in item or 'image_url' in item %}"
        "<|vision_start|><|image_pad|><|vision_end|>"
        "{% elif item['type'] == 'video' or 'video' in item %}"
        "<|vision_start|><|video_pad|><|vision_end|>"
        "{% elif 'text' in item %}{{ item['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "{% endmacro %}"
        "{% for message in messages %}" + system +
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['role'] == 'assistant' %}"
        "{% generation %}{{ render(message['content']) }}<|im_end|>{% endgeneration %}"
        "{% else %}{{ render(message['content']) }}<|im_end|>{% endif %}{{ '\\n' }}"  # trim_blocks
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


# The stock Qwen2.5-VL template (default system prompt included), plus generation markers.
QWEN_CHAT_TEMPLATE = chat_template(default_system="You are a helpful assistant.")


@functools.cache
def image_only_processor_class():
    """Qwen2.5-VL processor without the video processor, which needs torchvision (pitfall 1)."""
    from transformers import Qwen2_5_VLProcessor

    class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            kwargs.pop("video_processor", None)
            super().__init__(image_processor=image_processor, tokenizer=tokenizer,
                             video_processor=None, chat_template=chat_template, **kwargs)

    return ImageOnlyQwen2_5_VLProcessor


def load_processor(path, min_pixels=None, max_pixels=None):
    """Image processor (PIL backend) + tokenizer from an HF folder or hub id, as one processor;
    min/max_pixels bound every image's area (pitfall 3)."""
    from transformers import AutoTokenizer, Qwen2VLImageProcessorPil
    bounds = dict(min_pixels=min_pixels, max_pixels=max_pixels)
    bounds = {k: v for k, v in bounds.items() if v is not None}
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, **bounds)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"  # rollouts and eval generate from left-padded prompts
    template = tokenizer.chat_template
    if not template or "{% generation %}" not in template:
        template = QWEN_CHAT_TEMPLATE  # renders the same text as Qwen's own (pitfall 2)
    tokenizer.chat_template = template
    return image_only_processor_class()(image_processor=image_processor, tokenizer=tokenizer,
                                        chat_template=template)


def stop_token_ids(processor):
    """Ids that end a completion (the completion mask ends at the first of them)."""
    tok = processor.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in STOP_TOKENS]
    return [i for i in ids if i is not None and i != tok.unk_token_id]


def vision_token_ids(processor):
    return [processor.tokenizer.convert_tokens_to_ids(t) for t in VISION_SPECIAL_TOKENS]
