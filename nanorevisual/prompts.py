"""The ReVisual-R1 prompt (docs/paper_notes.md §6), one builder for SFT, GRPO and eval, and the
chat encoding around it: left-padded generation prompts, SFT rows with assistant-only labels.
"""

import torch

from nanorevisual.files import open_image

# the released examples/format_prompt/math_format.jinja
INSTRUCTION = (" You FIRST think about the reasoning process step by step as an internal monologue"
               " and then provide the final answer. The reasoning process MUST BE enclosed within"
               " <think> </think> tags. The final answer MUST BE put in \\boxed{}.")
# the released eval's system message (eval/src/main.py): the instruction minus "step by step"
RELEASED_SYSTEM_PROMPT = INSTRUCTION.strip().replace(" step by step", "")
IGNORE_INDEX = -100


def build_messages(problem, images, instruction=INSTRUCTION):
    """One user turn: the trimmed problem + instruction, an image item at each <image> marker
    (EasyR1's convention), or all images first when there is no marker."""
    problem = problem.strip()
    parts = problem.split("<image>")
    if len(parts) > 1 and len(parts) - 1 != len(images):
        raise ValueError(f"field 'images': {len(parts) - 1} <image> markers but "
                         f"{len(images)} images")
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
    """Same messages with every image item opened as PIL (the processor reads them from there)."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = [dict(it, image=open_image(it["image"])) if it.get("type") == "image" else it
                       for it in content]
        out.append(dict(m, content=content))
    return out


def encode_prompts(processor, messages_list):
    """Left-padded generation prompts for a batch of chats (mixed image / text rows are fine)."""
    return processor.apply_chat_template(
        [with_pil_images(m) for m in messages_list], add_generation_prompt=True, tokenize=True,
        return_dict=True, return_tensors="pt",
        processor_kwargs={"padding": True, "padding_side": "left"})


def filter_long_prompts(processor, rows, max_tokens, batch_size=64):
    """(rows whose generation prompt has <= max_tokens tokens, number dropped), counting image
    tokens expanded (released: the characters of the rendered chat, one placeholder per image)."""
    kept = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        enc = encode_prompts(processor, [r["messages"] for r in chunk])
        kept += [r for r, n in zip(chunk, enc["attention_mask"].sum(1).tolist()) if n <= max_tokens]
    return kept, len(rows) - len(kept)


def encode_sft_row(processor, messages, max_length):
    """One chat -> dict of (L,) tensors, or None if its prompt alone exceeds max_length. Labels
    cover each assistant reply and its closing <|im_end|> (the model must learn to stop), nothing
    else; a long row is cut inside the reply, never inside an image's tokens."""
    enc = processor.apply_chat_template(with_pil_images(messages), tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True, return_tensors="pt")
    input_ids = enc["input_ids"][0]  # (L,)
    assistant = torch.as_tensor(enc["assistant_masks"][0]).bool()  # (L,)
    mm_types = enc["mm_token_type_ids"][0]  # (L,) 1 on image tokens (pitfall 5)
    if input_ids.numel() > max_length:
        first_assistant = int(assistant.nonzero()[0]) if assistant.any() else input_ids.numel()
        if first_assistant >= max_length or mm_types[max_length:].any():
            return None  # the cut would fall inside the prompt or an image
        input_ids, assistant, mm_types = (x[:max_length] for x in (input_ids, assistant, mm_types))
    labels = torch.where(assistant, input_ids, torch.full_like(input_ids, IGNORE_INDEX))  # (L,)
    row = {"input_ids": input_ids, "labels": labels, "mm_token_type_ids": mm_types}
    if "pixel_values" in enc:
        row["pixel_values"], row["image_grid_thw"] = enc["pixel_values"], enc["image_grid_thw"]
    return row


def collate_sft(encoded, pad_token_id):
    """Right-pad encoded rows into a batch; pixel rows concatenate in row order."""
    L = max(r["input_ids"].numel() for r in encoded)

    def pad(tensors, value):  # -> (B, L)
        return torch.stack([torch.cat([x, x.new_full((L - x.numel(),), value)]) for x in tensors])

    ids = [r["input_ids"] for r in encoded]
    batch = {"input_ids": pad(ids, pad_token_id),
             "attention_mask": pad(map(torch.ones_like, ids), 0),
             "labels": pad([r["labels"] for r in encoded], IGNORE_INDEX),
             "mm_token_type_ids": pad([r["mm_token_type_ids"] for r in encoded], 0)}
    with_images = [r for r in encoded if "pixel_values" in r]
    if with_images:
        batch["pixel_values"] = torch.cat([r["pixel_values"] for r in with_images])  # (patches, D)
        batch["image_grid_thw"] = torch.cat([r["image_grid_thw"] for r in with_images])  # (imgs, 3)
    return batch
