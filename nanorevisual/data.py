"""Data: JSONL/parquet readers with one-line errors, the ReVisual-R1 prompt, SFT collation with assistant-only labels.

Row formats (images are paths relative to the data file's folder; parquet may also hold image bytes):
    SFT   {"messages": [{"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "text", "text": "..."}]},
                        {"role": "assistant", "content": "<think>...</think> \\boxed{42}"}]}
    SFT   {"problem": "What is 3+4?", "response": "<think>3+4=7</think> \\boxed{7}", "images": []}
    RL    {"id": "geo-17", "problem": "<image>Find x.", "answer": "42", "images": ["img/17.png"]}

Images go where the problem has `<image>` markers (the EasyR1 convention, paper.md §4); with no markers they go
before the text. Marker and image counts must agree. Every bad row raises `DataError` as one line naming the file,
the line and the field; `skip_bad=True` skips such rows instead and the caller prints the count.

Deviations from the paper / released code:
1. The RL prompt (paper.md §4) is applied to SFT rows in the problem/response format too, so the cold start
   already sees the exact prompt the RL stages use. Rows in the messages format are used as given.
2. SFT rows longer than max_length are truncated inside the assistant reply (never inside an image's tokens);
   rows whose prompt alone is too long are dropped and counted.
"""

import io
import json
import math
import os

import torch
from PIL import Image

# paper.md §4: the RL instruction appended to the problem in the user turn (released math_format.jinja).
INSTRUCTION = (" You FIRST think about the reasoning process step by step as an internal monologue and then provide"
               " the final answer. The reasoning process MUST BE enclosed within <think> </think> tags. The final"
               " answer MUST BE put in \\boxed{}.")
IGNORE_INDEX = -100


from nanorevisual.common import MissingPackage, UserError


class DataError(UserError, ValueError):
    """A bad input row; the message is one line: "file:line: field 'X': problem"."""


# ----------------------------------------------------------------------------------------------------------------
# readers

def read_records(path):
    """[(line_or_row_number, dict)] from .jsonl/.json/.parquet; malformed JSON raises DataError."""
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder; expected a .jsonl, .json or .parquet file")
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise MissingPackage(f"{path}: reading parquet needs pyarrow: pip install pyarrow") from None
        return list(enumerate(pq.read_table(path).to_pylist(), start=1))
    if path.endswith(".json"):
        with open(path) as f:
            try:
                rows = json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}:1: expected a JSON list of rows")
        return list(enumerate(rows, start=1))
    records = []
    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            records.append((lineno, row))
    return records


def require(row, field, types, where):
    if field not in row or row[field] is None:
        raise DataError(f"{where}: field '{field}': missing")
    if not isinstance(row[field], types):
        names = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise DataError(f"{where}: field '{field}': must be {names}, got {type(row[field]).__name__}")
    return row[field]


def resolve_image(image, base_dir, where):
    """A path (checked now: exists and is an image) or bytes / {"bytes", "path"} -> str path or PIL image."""
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    if isinstance(image, (bytes, bytearray)):
        try:
            img = Image.open(io.BytesIO(image))
            img.load()
        except Exception as e:
            raise DataError(f"{where}: field 'images': undecodable image bytes ({type(e).__name__})") from None
        return img
    if not isinstance(image, str):
        raise DataError(f"{where}: field 'images': must hold paths or bytes, got {type(image).__name__}")
    path = image if os.path.isabs(image) else os.path.join(base_dir, image)
    if not os.path.exists(path):
        raise DataError(f"{where}: field 'images': image not found: {image}")
    try:
        with Image.open(path) as img:
            img.verify()  # reads the file, checks it decodes, keeps nothing in memory
    except Exception as e:
        raise DataError(f"{where}: field 'images': undecodable image {image} ({type(e).__name__})") from None
    return path


def open_image(image):
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    with Image.open(image) as img:
        return img.convert("RGB")


def row_images(row, base_dir, where):
    images = row.get("images") or []
    if not isinstance(images, list):
        raise DataError(f"{where}: field 'images': must be list, got {type(images).__name__}")
    return [resolve_image(im, base_dir, where) for im in images]


# ----------------------------------------------------------------------------------------------------------------
# the prompt (one builder for SFT, GRPO and eval)

def build_messages(problem, images, instruction=INSTRUCTION, where="problem"):
    """One user turn: text split at <image> markers with an image item at each; no markers -> images first.
    The problem is trimmed before the instruction is appended, as the released template does."""
    problem = problem.strip()
    parts = problem.split("<image>")
    if len(parts) > 1 and len(parts) - 1 != len(images):
        raise DataError(f"{where}: field 'images': {len(parts) - 1} <image> markers but {len(images)} images")
    content = []
    if len(parts) == 1:
        content += [{"type": "image", "image": im} for im in images]
        content.append({"type": "text", "text": problem + instruction})
    else:
        for i, part in enumerate(parts):
            if i == len(parts) - 1:
                part = part + instruction
            if part:
                content.append({"type": "text", "text": part})
            if i < len(images):
                content.append({"type": "image", "image": images[i]})
    return [{"role": "user", "content": content}]


def message_images(messages):
    """Images in the order the chat template renders them."""
    out = []
    for m in messages:
        if isinstance(m["content"], list):
            out += [item["image"] for item in m["content"] if item.get("type") == "image"]
    return out


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


# ----------------------------------------------------------------------------------------------------------------
# loaders

def load_rl_rows(path, skip_bad=False):
    """RL / eval rows: [{"id", "problem", "answer", "images" (paths or PIL), "messages", "where"}]."""
    base_dir = os.path.dirname(os.path.abspath(path))
    rows, bad = [], 0
    for lineno, row in read_records(path):
        where = f"{path}:{lineno}"
        try:
            problem = require(row, "problem", str, where)
            answer = require(row, "answer", (str, int, float), where)
            images = row_images(row, base_dir, where)
            messages = build_messages(problem, images, where=where)
        except DataError:
            if not skip_bad:
                raise
            bad += 1
            continue
        rows.append({"id": str(row.get("id", f"{os.path.basename(path)}-{lineno}")), "problem": problem,
                     "answer": str(answer), "images": images, "messages": messages, "where": where})
    if bad:
        print(f"{path}: skipped {bad} bad rows (--skip-bad-rows)")
    if not rows:
        raise DataError(f"{path}: no rows" + (" left after skipping the bad ones" if bad else " (empty file)"))
    return rows


def load_sft_rows(path, skip_bad=False):
    """SFT rows in either format, normalised to [{"messages", "where"}] (images resolved inside the messages)."""
    base_dir = os.path.dirname(os.path.abspath(path))
    rows, bad = [], 0
    for lineno, row in read_records(path):
        where = f"{path}:{lineno}"
        try:
            rows.append({"messages": sft_messages(row, base_dir, where), "where": where})
        except DataError:
            if not skip_bad:
                raise
            bad += 1
    if bad:
        print(f"{path}: skipped {bad} bad rows (--skip-bad-rows)")
    if not rows:
        raise DataError(f"{path}: no rows" + (" left after skipping the bad ones" if bad else " (empty file)"))
    return rows


def sft_messages(row, base_dir, where):
    if "messages" in row:
        messages = require(row, "messages", list, where)
        out = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                raise DataError(f"{where}: field 'messages[{i}].role': must be system/user/assistant")
            content = m.get("content")
            if isinstance(content, list):
                items = []
                for item in content:
                    if not isinstance(item, dict) or item.get("type") not in ("text", "image"):
                        raise DataError(f"{where}: field 'messages[{i}].content': items must be text or image dicts")
                    if item["type"] == "image":
                        item = {"type": "image", "image": resolve_image(item.get("image"), base_dir, where)}
                    items.append(item)
                content = items
            elif not isinstance(content, str):
                raise DataError(f"{where}: field 'messages[{i}].content': must be str or list")
            out.append({"role": m["role"], "content": content})
        if not any(m["role"] == "assistant" for m in out):
            raise DataError(f"{where}: field 'messages': no assistant turn")
        return out
    problem = require(row, "problem", str, where)
    response = require(row, "response", str, where)
    messages = build_messages(problem, row_images(row, base_dir, where), where=where)
    return messages + [{"role": "assistant", "content": response}]


# ----------------------------------------------------------------------------------------------------------------
# collation

def encode_prompts(processor, messages_list):
    """Left-padded generation prompts for a batch of chats (mixed image / text rows are fine)."""
    return processor.apply_chat_template([with_pil_images(m) for m in messages_list], add_generation_prompt=True,
                                         tokenize=True, return_dict=True, return_tensors="pt",
                                         processor_kwargs={"padding": True, "padding_side": "left"})


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


# ----------------------------------------------------------------------------------------------------------------
# data order and prompt filtering

def step_indices(num_rows, per_step, step, seed):
    """Row indices of training step `step` (SFT rows or RL prompts): a seeded permutation per epoch cut into blocks of
    per_step, so resume needs only the step number. A dataset smaller than one step wraps around."""
    steps_per_epoch = max(1, num_rows // per_step)
    epoch, offset = divmod(step, steps_per_epoch)
    order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    idx = order[offset * per_step:(offset + 1) * per_step]
    return (idx * math.ceil(per_step / len(idx)))[:per_step]


def filter_long_prompts(processor, rows, max_tokens, batch_size=64):
    """(rows whose generation prompt has at most max_tokens tokens, number dropped). Counts what the model sees,
    image tokens expanded (the released filter counts one placeholder per image)."""
    kept = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        lengths = encode_prompts(processor, [r["messages"] for r in chunk])["attention_mask"].sum(1).tolist()
        kept += [r for r, n in zip(chunk, lengths) if n <= max_tokens]
    return kept, len(rows) - len(kept)
