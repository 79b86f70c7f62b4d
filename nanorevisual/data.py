"""Training data: SFT and RL rows, checked (images decoded) before any model loads, and the seeded
data order. Row formats: README.md, "Data, errors and output folders". A bad row raises a one-line
`DataError` naming file, line and field; `skip_bad=True` skips such rows and prints how many.
"""

import math
import os

import torch

from nanorevisual.files import DataError, check_row, load_image, read_records
from nanorevisual.prompts import INSTRUCTION, build_messages


def require(row, field, types):
    if field not in row or row[field] is None:
        raise ValueError(f"field '{field}': missing")
    if not isinstance(row[field], types):
        names = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise ValueError(f"field '{field}': must be {names}, got {type(row[field]).__name__}")
    return row[field]


def row_images(row, base_dir):
    images = row.get("images") or []
    if not isinstance(images, list):
        raise ValueError(f"field 'images': must be list, got {type(images).__name__}")
    return [load_image(im, base_dir) for im in images]


def rl_row(row, base_dir, path, lineno, instruction):
    """RL / eval row -> {"id", "problem", "answer", "images" (paths / PIL), "messages", "where"}."""
    problem = require(row, "problem", str)
    answer = require(row, "answer", (str, int, float))
    images = row_images(row, base_dir)
    return {"id": str(row.get("id", f"{os.path.basename(path)}-{lineno}")), "problem": problem,
            "answer": str(answer), "images": images,
            "messages": build_messages(problem, images, instruction), "where": f"{path}:{lineno}"}


def sft_row(row, base_dir, path, lineno, instruction):
    """SFT row in either format -> {"messages", "where"}, images resolved inside the messages."""
    where = f"{path}:{lineno}"
    if "messages" not in row:
        problem, response = require(row, "problem", str), require(row, "response", str)
        messages = build_messages(problem, row_images(row, base_dir), instruction)
        return {"messages": messages + [{"role": "assistant", "content": response}], "where": where}
    out = []
    for i, m in enumerate(require(row, "messages", list)):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"field 'messages[{i}].role': must be system/user/assistant")
        content = m.get("content")
        if isinstance(content, list):
            if not all(isinstance(it, dict) and it.get("type") in ("text", "image")
                       for it in content):
                raise ValueError(f"field 'messages[{i}].content': items must be text or image "
                                 "dicts")
            content = [{"type": "image", "image": load_image(it.get("image"), base_dir)}
                       if it["type"] == "image" else it for it in content]
        elif not isinstance(content, str):
            raise ValueError(f"field 'messages[{i}].content': must be str or list")
        out.append({"role": m["role"], "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise ValueError("field 'messages': no assistant turn")
    return {"messages": out, "where": where}


def load_rows(path, parse_row, skip_bad=False, instruction=INSTRUCTION):
    """Every row of `path` through parse_row(row, base_dir, path, lineno, instruction).
    `instruction` is appended to every problem ("" for problems that carry their own)."""
    base_dir = os.path.dirname(os.path.abspath(path))
    rows, bad = [], 0
    for lineno, row in read_records(path):
        try:
            rows.append(parse_row(check_row(row), base_dir, path, lineno, instruction))
        except ValueError as e:
            if not skip_bad:
                raise DataError(f"{path}:{lineno}: {e}") from None
            bad += 1
    if bad:
        print(f"{path}: skipped {bad} bad rows (--skip-bad-rows)")
    if not rows:
        why = " left after skipping the bad ones" if bad else " (empty file)"
        raise DataError(f"{path}: no rows{why}")
    return rows


def load_rl_rows(path, skip_bad=False, instruction=INSTRUCTION):
    return load_rows(path, rl_row, skip_bad, instruction)


def load_sft_rows(path, skip_bad=False, instruction=INSTRUCTION):
    return load_rows(path, sft_row, skip_bad, instruction)


def unique_labels(paths):
    """A metrics label per held-out file: its stem, or the shortest path suffix that tells
    colliding stems apart (a/val.jsonl, b/val.jsonl -> a-val, b-val)."""
    stems = [os.path.splitext(os.path.abspath(p))[0].split(os.sep) for p in paths]
    labels = []
    for stem in stems:
        n = 1
        while n < len(stem) and sum(other[-n:] == stem[-n:] for other in stems) > 1:
            n += 1
        labels.append("-".join(stem[-n:]))
    for i, label in enumerate(labels):
        if label in labels[:i]:
            first = paths[labels.index(label)]
            raise DataError(f"--val-data: {first} and {paths[i]} cannot be told apart (same file?)")
    return labels


def step_indices(num_rows, per_step, step, seed):
    """Row indices of training step `step`: a seeded permutation per epoch cut into blocks of
    per_step, so resume needs only the step number. A dataset smaller than one step wraps."""
    steps_per_epoch = max(1, num_rows // per_step)
    epoch, offset = divmod(step, steps_per_epoch)
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(num_rows, generator=gen).tolist()
    idx = order[offset * per_step:(offset + 1) * per_step]
    return (idx * math.ceil(per_step / len(idx)))[:per_step]
