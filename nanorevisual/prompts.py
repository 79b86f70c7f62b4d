"""The ReVisual-R1 prompt, one builder for SFT, GRPO and eval, and the chat encoding around it.

One user turn (docs/paper_notes.md §6): the trimmed problem, then the instruction below; images go where the
problem has `<image>` markers (EasyR1's convention), or before the text when it has none. For example
    build_messages("<image>What colour is the shape?", ["images/0.png"])
    -> [{"role": "user", "content": [{"type": "image", "image": "images/0.png"},
                                     {"type": "text", "text": "What colour is the shape? You FIRST think ..."}]}]

Deviations from the paper / released code:
1. The same prompt is used for SFT rows in the problem/response format, so the cold start already sees the prompt
   of the RL stages and of eval (the released cold start uses LLaMA-Factory's own template).
2. SFT rows longer than max_length are cut inside the assistant reply, never inside an image's tokens; rows whose
   prompt alone is too long are dropped and counted (LLaMA-Factory cuts anywhere).
"""

import torch

from nanorevisual.files import open_image

# the instruction appended to the problem (the released examples/format_prompt/math_format.jinja)
INSTRUCTION = (" You FIRST think about the reasoning process step by step as an internal monologue and then provide"
               " the final answer. The reasoning process MUST BE enclosed within <think> </think> tags. The final"
               " answer MUST BE put in \\boxed{}.")
IGNORE_INDEX = -100


def build_messages(problem, images, instruction=INSTRUCTION):
    """One user turn: text split at <image> markers with an image item at each; no markers -> images first.
    The problem is trimmed before the instruction is appended, as the released template does."""
    problem = problem.strip()
    parts = problem.split("<image>")
    if len(parts) > 1 and len(parts) - 1 != len(images):
        raise ValueError(f"field 'images': {len(parts) - 1} <image> markers but {len(images)} images")
    if len(parts) == 1:
        return [{"role": "user", "content": [{"type": "image", "image": im} for im in images]
                 + [{"type": "text", "text": problem + instruction}]}]
    content = []
    for i, part in enumerate(parts):
        if i == len(parts) - 1:
            part = part + instruction
        if part:
            content.append({"type": "text", "text": part})
        if i < len(images):
            content.append({"type": "image", "image": images[i]})
    return [{"role": "user", "content": content}]


def with_pil_images(messages):
    """Same messages with every image item opened as a PIL image (the processor takes them from the messages)."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = [dict(item, image=open_image(item["image"])) if item.get("type") == "image" else item
                       for item in content]
        out.append(dict(m, content=content))
    return out


def encode_prompts(processor, messages_list):
    """Left-padded generation prompts for a batch of chats (mixed image / text rows are fine)."""
    return processor.apply_chat_template([with_pil_images(m) for m in messages_list], add_generation_prompt=True,
                                         tokenize=True, return_dict=True, return_tensors="pt",
                                         processor_kwargs={"padding": True, "padding_side": "left"})


def filter_long_prompts(processor, rows, max_tokens, batch_size=64):
    """(rows whose generation prompt has at most max_tokens tokens, number dropped). Counts what the model sees,
    image tokens expanded (the released filter counts one placeholder per image)."""
    kept = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        lengths = encode_prompts(processor, [r["messages"] for r in chunk])["attention_mask"].sum(1).tolist()
        kept += [r for r, n in zip(chunk, lengths) if n <= max_tokens]
    return kept, len(rows) - len(kept)


def encode_sft_row(processor, messages, max_length):
    """One chat -> dict of (L,) tensors with labels on assistant tokens only, or None if its prompt is too long.

    Labels cover each assistant reply including its closing <|im_end|> (the model must learn to stop) and
    nothing else: no system/user text, no image tokens. Truncation only cuts assistant tokens.
    """
    enc = processor.apply_chat_template(with_pil_images(messages), tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True, return_tensors="pt")
    input_ids = enc["input_ids"][0]  # (L,)
    assistant = torch.as_tensor(enc["assistant_masks"][0]).bool()  # (L,)
    mm_types = enc["mm_token_type_ids"][0]  # (L,) 1 on image tokens
    if input_ids.numel() > max_length:
        first_assistant = int(assistant.nonzero()[0]) if assistant.any() else input_ids.numel()
        if first_assistant >= max_length or mm_types[max_length:].any():
            return None  # the cut would fall inside the prompt or an image
        input_ids, assistant, mm_types = input_ids[:max_length], assistant[:max_length], mm_types[:max_length]
    labels = torch.where(assistant, input_ids, torch.full_like(input_ids, IGNORE_INDEX))  # (L,)
    row = {"input_ids": input_ids, "labels": labels, "mm_token_type_ids": mm_types}
    if "pixel_values" in enc:
        row["pixel_values"], row["image_grid_thw"] = enc["pixel_values"], enc["image_grid_thw"]
    return row


def collate_sft(encoded, pad_token_id):
    """Right-pad encoded rows into a batch; pixel rows concatenate in row order (they are not batch-major)."""
    L = max(r["input_ids"].numel() for r in encoded)

    def right_pad(x, value):
        return torch.cat([x, x.new_full((L - x.numel(),), value)])

    batch = {
        "input_ids": torch.stack([right_pad(r["input_ids"], pad_token_id) for r in encoded]),  # (B, L)
        "attention_mask": torch.stack([right_pad(torch.ones_like(r["input_ids"]), 0) for r in encoded]),  # (B, L)
        "labels": torch.stack([right_pad(r["labels"], IGNORE_INDEX) for r in encoded]),  # (B, L)
        "mm_token_type_ids": torch.stack([right_pad(r["mm_token_type_ids"], 0) for r in encoded]),  # (B, L)
    }
    with_images = [r for r in encoded if "pixel_values" in r]
    if with_images:
        batch["pixel_values"] = torch.cat([r["pixel_values"] for r in with_images])  # (num_patches, D_patch)
        batch["image_grid_thw"] = torch.cat([r["image_grid_thw"] for r in with_images])  # (num_images, 3)
    return batch
