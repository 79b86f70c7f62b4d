"""Toy data so every default runs on 2 CPU cores: a text cold-start set and two RL tasks, plus the tiny model.

    python -m nanorevisual.toy --out data/toy      # writes the files below in ~2 s, deterministically
    python -m nanorevisual.toy --model-out runs/tiny-model    # the tiny model (also built on first use)

Files (all in the project's own formats, see nanorevisual/data.py):
    sft_train.jsonl / sft_val.jsonl   cold start, text only: {"problem", "response"}
    mm_train.jsonl / mm_val.jsonl     multimodal RL/eval: "<image>What colour is the shape?" + a 56x56 PNG
    text_train.jsonl / text_val.jsonl text RL/eval: "What is 3+4?"
    images/                           the PNGs, referenced by relative path

Two image tasks share the images (`--task`): "colour" (the default, 6 answers, chance 1/6) and "colour-shape", a
harder variant for studies where the colour task saturates: "<image>What colour and shape is it?" answered
"red circle", 6 colours x 3 shapes = 18 answers (chance 1/18), so the reward needs the shape's outline as well as its
colour. Its cold start teaches the answer format the same way (text rows that name both, plus prior rows).

Designed together:
- Arithmetic "What is a+b?" (a, b in 0..9). 20 of the 100 pairs are held out of SFT; they are text_val, so the
  text RL stage is measured on pairs the cold start never saw.
- Colour text: "There is a red circle. What colour is the shape?". 30% of the colour rows are the bare question
  with a uniformly random colour as the answer ("prior rows"). Without them the cold-started model answers image
  prompts with a digit, every rollout group has reward 0 and GRPO gets no gradient (measured when the toy was designed).
- Image task: one filled square, circle or triangle in one of 6 colours on a light background. The cold-started
  model has never seen an image, so it starts at chance (~1/6) and only RL can connect pixels to colour words.

The tiny model (`--model tiny`, runs/tiny-model/) is nanorevisual/tiny.py's builder with a tokenizer trained on
this text (`tokenizer_corpus`), so toy prompts are short.

Example SFT row: {"problem": "What is 3+4?", "response": "<think>3+4=7</think> \\boxed{7}"}
Example RL row:  {"id": "mm_val-0003", "problem": "<image>What colour is the shape?", "answer": "purple",
                  "images": ["images/mm_val-0003.png"]}
"""

import argparse
import json
import os
import random
import shutil

import numpy as np
from PIL import Image, ImageDraw

from nanorevisual.prompts import INSTRUCTION
from nanorevisual.tiny import build_tiny, build_tiny_stack

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220),
           "yellow": (230, 210, 40), "purple": (140, 50, 170), "orange": (245, 140, 30)}
SHAPES = ["square", "circle", "triangle"]
COLOUR_QUESTION = "What colour is the shape?"
SHAPE_QUESTION = "What colour and shape is it?"
TASKS = ("colour", "colour-shape")
COLOUR_TEMPLATES = ["There is a {c} {s}. ", "The image shows a {c} {s}. ", "A {c} {s} is drawn. ", "I see a {c} {s}. "]
IMAGE_SIZE = 56  # 56x56 -> grid [1,4,4] -> 4 visual tokens after the 2x2 merge
TINY_MODEL_DIR = os.path.join("runs", "tiny-model")


def arithmetic_pairs(seed=7, num_heldout=20):
    """All 100 (a, b) pairs with a, b in 0..9, split into (train, held-out) with a fixed seed."""
    pairs = [(a, b) for a in range(10) for b in range(10)]
    heldout = set(random.Random(seed).sample(pairs, num_heldout))
    return [p for p in pairs if p not in heldout], sorted(heldout)


def arithmetic_response(a, b):
    return f"<think>{a}+{b}={a + b}</think> \\boxed{{{a + b}}}"


def colour_response(colour):
    return f"<think>The shape is {colour}.</think> \\boxed{{{colour}}}"


def task_question(task):
    return COLOUR_QUESTION if task == "colour" else SHAPE_QUESTION


def task_answer(task, colour, shape):
    return colour if task == "colour" else f"{colour} {shape}"


def task_response(task, colour, shape):
    if task == "colour":
        return colour_response(colour)
    # "The shape is a ..." reuses the tokens of the colour answers; "It is a ..." left the cold start answering
    # image prompts with "<think>2}" (94% of samples, measured), too few well-formed answers for GRPO to start from
    return f"<think>The shape is a {colour} {shape}.</think> \\boxed{{{colour} {shape}}}"


def draw_shape(rng):
    """A 56x56 RGB image with one filled shape; returns (image, colour, shape)."""
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    level = rng.randint(200, 255)
    noise = np.random.default_rng(rng.getrandbits(32)).integers(-8, 9, size=(IMAGE_SIZE, IMAGE_SIZE, 1))  # (H, W, 1)
    background = np.clip(level + noise, 0, 255).repeat(3, axis=2).astype(np.uint8)  # (H, W, 3) grey +-8 noise
    img = Image.fromarray(background, "RGB")
    side = rng.randint(int(0.35 * IMAGE_SIZE), int(0.75 * IMAGE_SIZE))
    x0, y0 = rng.randint(0, IMAGE_SIZE - side), rng.randint(0, IMAGE_SIZE - side)
    fill = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in COLOURS[colour])
    box = [x0, y0, x0 + side - 1, y0 + side - 1]
    draw = ImageDraw.Draw(img)
    if shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "circle":
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon([(x0 + side // 2, y0), (x0, y0 + side - 1), (x0 + side - 1, y0 + side - 1)], fill=fill)
    return img, colour, shape


def sft_rows(rng, pairs, num_rows, prior_fraction=0.3, task="colour"):
    """Half arithmetic, half the task's question in text (the sentence names the shape); prior_fraction of those are
    the bare question with a uniformly random answer (without them the model answers image prompts with digits)."""
    rows = []
    for i in range(num_rows):
        if i % 2 == 0:
            a, b = rng.choice(pairs)
            rows.append({"problem": f"What is {a}+{b}?", "response": arithmetic_response(a, b)})
        elif rng.random() < prior_fraction:
            if task == "colour":
                rows.append({"problem": COLOUR_QUESTION, "response": colour_response(rng.choice(list(COLOURS)))})
            else:
                c, s = rng.choice(list(COLOURS)), rng.choice(SHAPES)
                rows.append({"problem": SHAPE_QUESTION, "response": task_response(task, c, s)})
        else:
            c, s = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            lead = rng.choice(COLOUR_TEMPLATES).format(c=c, s=s)
            rows.append({"problem": lead + task_question(task), "response": task_response(task, c, s)})
    return rows


def image_rows(rng, split, num_rows, image_dir, task="colour"):
    rows = []
    for i in range(num_rows):
        img, colour, shape = draw_shape(rng)
        rel = f"images/{split}-{i:04d}.png"
        img.save(os.path.join(image_dir, os.path.basename(rel)))
        rows.append({"id": f"{split}-{i:04d}", "problem": "<image>" + task_question(task),
                     "answer": task_answer(task, colour, shape), "images": [rel], "shape": shape})
    return rows


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def make_toy_data(out_dir, seed=0, num_sft=4000, num_mm_train=2000, num_mm_val=200, task="colour"):
    """Write every toy file into out_dir (idempotent: same seed, same bytes). Every file has its own random stream,
    so a larger num_mm_val keeps the smaller set as its first rows, and both tasks share the same images."""
    if task not in TASKS:
        raise ValueError(f"unknown toy task {task!r}, expected one of {TASKS}")
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    train_pairs, heldout_pairs = arithmetic_pairs()
    rng = random.Random(seed)
    write_jsonl(os.path.join(out_dir, "sft_train.jsonl"), sft_rows(rng, train_pairs, num_sft, task=task))
    # held-out SFT loss: arithmetic on the 20 unseen pairs plus fresh colour rows
    val = [{"problem": f"What is {a}+{b}?", "response": arithmetic_response(a, b)} for a, b in heldout_pairs]
    val += sft_rows(random.Random(seed + 1), train_pairs, 40, task=task)[1::2]
    write_jsonl(os.path.join(out_dir, "sft_val.jsonl"), val)
    image_dir = os.path.join(out_dir, "images")
    write_jsonl(os.path.join(out_dir, "mm_train.jsonl"),
                image_rows(random.Random(seed + 2), "mm_train", num_mm_train, image_dir, task))
    write_jsonl(os.path.join(out_dir, "mm_val.jsonl"),
                image_rows(random.Random(seed + 3), "mm_val", num_mm_val, image_dir, task))
    all_pairs = train_pairs + heldout_pairs
    write_jsonl(os.path.join(out_dir, "text_train.jsonl"),
                [{"id": f"text_train-{a}+{b}", "problem": f"What is {a}+{b}?", "answer": str(a + b)} for a, b in all_pairs])
    write_jsonl(os.path.join(out_dir, "text_val.jsonl"),
                [{"id": f"text_val-{a}+{b}", "problem": f"What is {a}+{b}?", "answer": str(a + b)} for a, b in heldout_pairs])
    with open(os.path.join(out_dir, "DONE"), "w") as f:
        f.write(str(seed))


def rl_files(stage, out_dir="data/toy"):
    """The toy RL files of a train_grpo.py stage: (train file, [its val file, the other task's])."""
    toy_dir = ensure_toy_data(out_dir)
    first, second = ("mm", "text") if stage == "mrl" else ("text", "mm")
    return (os.path.join(toy_dir, f"{first}_train.jsonl"),
            [os.path.join(toy_dir, f"{t}_val.jsonl") for t in (first, second)])


def ensure_toy_data(out_dir="data/toy", **kwargs):
    """Build the toy set on first use (kwargs: make_toy_data's). Several processes (torchrun ranks) may race here:
    each builds into its own temp folder and renames it into place; the first rename wins, the others discard theirs."""
    if not os.path.exists(os.path.join(out_dir, "DONE")):
        tmp = f"{out_dir.rstrip('/')}.tmp-{os.getpid()}"
        make_toy_data(tmp, **kwargs)
        try:
            os.rename(tmp, out_dir)
        except OSError:  # another process got there first
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def tokenizer_corpus():
    """Strings the tiny BPE is trained on: every toy prompt and answer, so they compress to few tokens."""
    texts = [INSTRUCTION, COLOUR_QUESTION, "You are a helpful assistant.", "user\n", "assistant\n", "system\n"]
    for a in range(10):
        for b in range(10):
            texts += [f"What is {a}+{b}?", arithmetic_response(a, b)]
    for c in COLOURS:
        texts.append(colour_response(c))
        for s in SHAPES:
            texts += [t.format(c=c, s=s) + COLOUR_QUESTION for t in COLOUR_TEMPLATES]
    return texts


def tiny_stack(seed=0, **config_kwargs):
    """The tiny model of the toy runs, in memory: its tokenizer is trained on the toy corpus."""
    return build_tiny_stack(tokenizer_corpus(), seed, **config_kwargs)


def ensure_tiny_model(out_dir=TINY_MODEL_DIR):
    """`--model tiny`: the toy runs' tiny model folder, built on first use."""
    if not os.path.exists(os.path.join(out_dir, "config.json")):
        build_tiny(out_dir, tokenizer_corpus())
    return out_dir


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write the toy files, or (--model-out) the tiny model")
    parser.add_argument("--out", default="data/toy", help="output folder of the data")
    parser.add_argument("--seed", type=int, default=0, help="data seed, or the model's init seed")
    parser.add_argument("--task", choices=TASKS, default="colour", help="colour, or colour-shape")
    parser.add_argument("--mm-val-size", type=int, default=200, help="held-out images")
    parser.add_argument("--model-out", default=None, help="write the tiny model there instead")
    # other shapes, e.g. bench/gpu_check.sh's: --hidden 1024 --layers 8 --heads 16 --kv-heads 4
    # --vision-hidden 1280 --vision-depth 4 --vision-heads 16 --vocab-size 152064 (the 7B vocabulary)
    shape_flags = {"hidden": 128, "layers": 4, "heads": 4, "kv-heads": 2, "vision-hidden": 64,
                   "vision-depth": 2, "vision-heads": 2, "vocab-size": 0}
    for flag, default in shape_flags.items():
        parser.add_argument(f"--{flag}", type=int, default=default, help=f"model {flag}")
    args = parser.parse_args()
    if args.model_out:
        shape = {k.replace("-", "_"): getattr(args, k.replace("-", "_")) for k in shape_flags}
        build_tiny(args.model_out, tokenizer_corpus(), seed=args.seed, **shape)
        print(f"wrote a random Qwen2.5-VL ({shape}) to {args.model_out}")
    else:
        make_toy_data(args.out, seed=args.seed, task=args.task, num_mm_val=args.mm_val_size)
        print(f"wrote toy data to {args.out}")
