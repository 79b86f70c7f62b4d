"""train_sft.py end to end on the tiny model: the loss falls, resume continues identically, final/ reloads.

    python -m pytest -q tests/test_sft.py      # ~30 s: two short runs of the real script
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from nanorevisual.prompts import build_messages, encode_prompts
from nanorevisual.model import load_model_and_processor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow  # runs of the real script


def run_sft(tiny_dir, toy_dir, out_dir, *extra):
    cmd = [sys.executable, os.path.join(ROOT, "train_sft.py"), "--model", tiny_dir,
           "--data", os.path.join(toy_dir, "sft_train.jsonl"), "--val-data", os.path.join(toy_dir, "sft_val.jsonl"),
           "--out-dir", out_dir, "--batch-size", "8", "--grad-accum", "2", "--lr", "2e-3", "--max-length", "128",
           "--max-steps", "8", "--warmup-ratio", "0.25", "--min-lr-ratio", "0.1", "--epochs", "1",
           "--eval-every", "4", *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout


def losses(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    train = {r["step"]: r["train/loss"] for r in records if "train/loss" in r}
    val = [r["eval/loss"] for r in records if "eval/loss" in r]
    return train, val, records


def test_sft_trains_resumes_identically_and_reloads(tmp_path, tiny_dir, toy_dir):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    run_sft(tiny_dir, toy_dir, a, "--save-every", "4")
    train_a, val_a, _ = losses(a)
    assert sorted(train_a) == list(range(1, 9))
    assert val_a[-1] < val_a[0] - 1.0, val_a  # held-out loss clearly falls
    assert train_a[8] < train_a[1] - 1.0, train_a
    assert os.path.exists(os.path.join(a, "step_000004", "resume", "state.pt"))
    meta = json.load(open(os.path.join(a, "final", "meta.json")))
    assert meta["step"] == 8 and meta["user_config"]["batch_size"] == 8 and meta["stage"] == "sft"
    assert not [d for d in os.listdir(a) if d.startswith(".tmp")]  # atomic writes left nothing behind

    # a "crash" after step 4: keep step_000004 and the log up to there, then --resume 1
    os.makedirs(b)
    shutil.copytree(os.path.join(a, "step_000004"), os.path.join(b, "step_000004"))
    with open(os.path.join(a, "metrics.jsonl")) as f, open(os.path.join(b, "metrics.jsonl"), "w") as g:
        g.writelines(line for line in f if json.loads(line)["step"] <= 4)
    stdout = run_sft(tiny_dir, toy_dir, b, "--save-every", "4", "--resume", "1")
    assert "resumed from" in stdout and "at step 4" in stdout
    train_b, _, records_b = losses(b)
    assert sorted(train_b) == list(range(1, 9))  # no duplicated or missing steps in the log
    # exact: the resumed run repeats the same float operations (same data order, optimizer and scheduler state)
    assert [train_b[step] for step in range(5, 9)] == [train_a[step] for step in range(5, 9)]

    # final/ reloads through from_pretrained and through the project loader with identical logits
    model_a = AutoModelForImageTextToText.from_pretrained(os.path.join(a, "final"))
    model_b, processor = load_model_and_processor(os.path.join(b, "final"))
    enc = encode_prompts(processor, [build_messages("What is 3+4?", [])])
    with torch.no_grad():
        la = model_a(**enc, use_cache=False).logits
        lb = model_b(**enc, use_cache=False).logits
    assert torch.equal(la, lb)  # the resumed run's weights are the straight run's, bit for bit


def test_released_recipe_adds_the_tags_into_spare_rows(tmp_path, toy_dir):
    from transformers import AutoTokenizer

    from nanorevisual.tiny import build_tiny
    from nanorevisual.toy import tokenizer_corpus
    spare = build_tiny(str(tmp_path / "spare"), tokenizer_corpus(), vocab_size=600)  # 468 used
    out = str(tmp_path / "sft")
    run_sft(spare, toy_dir, out, "--recipe", "released", "--max-steps", "2")
    tok = AutoTokenizer.from_pretrained(os.path.join(out, "final"))
    ids = tok.convert_tokens_to_ids(["<think>", "</think>", "<answer>", "</answer>"])
    assert len(set(ids)) == 4 and max(ids) < 600 and tok("<think>x</think>")["input_ids"][0] == ids[0]
    weights = load_file(os.path.join(out, "final", "model.safetensors"))
    assert weights["model.embed_tokens.weight"].shape[0] == 600  # no resize
