"""train_grpo.py smoke runs on the tiny model: mrl changes every trainable weight, trl leaves vision bit-identical.

    python -m pytest -q tests/test_train_grpo.py      # ~40 s: three short runs of the real script
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow  # runs of the real script


def run_grpo(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, os.path.join(ROOT, "train_grpo.py"), *args], capture_output=True,
                         text=True, timeout=300, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-4000:]
    return out.stdout


def weights(folder):
    return dict(AutoModelForImageTextToText.from_pretrained(folder).named_parameters())


def records(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


# --pad none + an entropy bonus: every selected token gets a gradient even though the random tiny model earns no
# reward, so "every trainable tensor changed" is a real check of the update path (TRL's smoke test idea).
SMOKE = ["--max-steps", "2", "--prompts-per-step", "4", "--group-size", "2", "--max-new-tokens", "6",
         "--micro-batch-size", "3", "--pad", "none", "--entropy-coef", "0.05", "--entropy-warmup", "0",
         "--lr", "1e-3", "--eval-every", "1", "--eval-limit", "4"]


def test_mrl_smoke_changes_every_weight(tmp_path, tiny_dir, toy_dir):
    out = str(tmp_path / "mrl")
    stdout = run_grpo("--stage", "mrl", "--model", tiny_dir, "--data", os.path.join(toy_dir, "mm_train.jsonl"),
                      "--val-data", os.path.join(toy_dir, "mm_val.jsonl"), "--out-dir", out, *SMOKE)
    assert "policy " in stdout and "reference " not in stdout  # mrl loads no reference model (no KL)
    before, after = weights(tiny_dir), weights(os.path.join(out, "final"))
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, unchanged  # vision tower included: mrl trains it
    recs = records(out)
    train = [r for r in recs if "reward/total" in r]
    assert len(train) == 2 and all(r["train/updates"] == 1 and r["pad/selected"] == 8 for r in train)
    for key in ("grpo/zero_adv_frac", "pad/effective", "time/generate", "time/update", "train/grad_norm",
                "rollout/len_mean", "rollout/truncated", "train/clip_frac_low", "train/entropy"):
        assert key in train[0], key
    evals = [r for r in recs if "eval/mm_val/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 1, 2]
    # budget counters: running sums of the per-step numbers; each eval carries those of the steps before it
    assert [r["train/tokens_cum"] for r in train] == [train[0]["train/tokens"], train[0]["train/tokens"] + train[1]["train/tokens"]]
    assert train[1]["time/train_s_cum"] == train[0]["time/step"] + train[1]["time/step"]
    assert train[0]["train/tokens"] > 0 and evals[0]["train/tokens_cum"] == 0 and evals[0]["time/train_s_cum"] == 0
    for ev, tr in zip(evals[1:], train):
        assert ev["train/tokens_cum"] == tr["train/tokens_cum"] and ev["time/train_s_cum"] == tr["time/train_s_cum"]
    assert evals[0]["time/eval_s_cum"] == 0 < evals[1]["time/eval_s_cum"] < evals[2]["time/eval_s_cum"]
    dump = [json.loads(line) for line in open(os.path.join(out, "rollouts", "step_000000.jsonl"))]
    assert len(dump) == 8 and {"prompt_id", "completion", "reward", "advantage", "selected"} <= set(dump[0])


def test_trl_freezes_vision_and_uses_kl(tmp_path, tiny_dir, toy_dir):
    out = str(tmp_path / "trl")
    stdout = run_grpo("--stage", "trl", "--model", tiny_dir, "--data", os.path.join(toy_dir, "text_train.jsonl"),
                      "--val-data", os.path.join(toy_dir, "text_val.jsonl"), "--out-dir", out, *SMOKE,
                      "--max-steps", "3")
    assert f"reference {tiny_dir}: frozen" in stdout
    before, after = weights(tiny_dir), weights(os.path.join(out, "final"))
    vision = [k for k in before if ".visual." in k or k.startswith("visual.")]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)  # bit-identical
    text = [k for k in before if k not in vision]
    assert all(not torch.equal(before[k], after[k]) for k in text), [k for k in text if torch.equal(before[k], after[k])]
    meta = json.load(open(os.path.join(out, "final", "meta.json")))
    assert meta["user_config"]["kl_coef"] == 2e-3 and meta["user_config"]["freeze_vision"] == 1
    train = [r for r in records(out) if "reward/total" in r]
    # the released entropy schedule keeps the bonus at 0 for update 0 (warm-up 0), so with no reward the first update
    # changes nothing; the third step's policy differs from the reference
    assert [r["train/entropy_coef"] for r in train] == [0.0, 0.05, 0.05 * 0.985]
    assert train[1]["train/kl"] == 0 and train[-1]["train/kl"] > 0


def test_pad_code_preset_and_resume(tmp_path, tiny_dir, toy_dir):
    out = str(tmp_path / "code")
    common = ["--stage", "mrl", "--model", tiny_dir, "--data", os.path.join(toy_dir, "mm_train.jsonl"),
              "--val-data", "--out-dir", out, "--max-steps", "2", "--prompts-per-step", "4", "--group-size", "4",
              "--max-new-tokens", "6", "--pad", "code", "--pad-set", "t_low=-1", "weighting=uniform",
              "--save-every", "1", "--rewards", "accuracy=1", "length=1", "--length-budget", "4"]
    stdout = run_grpo(*common)
    assert "'replacement': True" in stdout and "'ratio': 1.5" in stdout  # the released preset, one knob overridden
    recs = [r for r in records(out) if "reward/total" in r]
    assert os.path.exists(os.path.join(out, "step_000001", "resume", "state.pt"))
    # resume from step 1: the second step is recomputed identically
    os.remove(os.path.join(out, "final", "meta.json"))
    stdout = run_grpo(*common, "--resume", "1")
    assert "at step 1" in stdout
    recs2 = [r for r in records(out) if "reward/total" in r]
    assert [r["step"] for r in recs2] == [1, 2]
    assert recs2[1]["reward/total"] == recs[1]["reward/total"]
    assert recs2[1]["train/grad_norm"] == recs[1]["train/grad_norm"]  # exact: the same float operations again
    assert recs2[1]["train/tokens_cum"] == recs[1]["train/tokens_cum"]  # counters come back with the resume state
    assert recs2[1]["time/train_s_cum"] == recs2[0]["time/train_s_cum"] + recs2[1]["time/step"]
    first = load_file(os.path.join(out, "final", "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in first.values())


def test_released_recipe_values_and_their_sources(tmp_path, tiny_dir, toy_dir):
    out = str(tmp_path / "released")
    stdout = run_grpo("--stage", "mrl", "--recipe", "released", "--model", tiny_dir, "--data",
                      os.path.join(toy_dir, "mm_train.jsonl"), "--val-data", "--out-dir", out,
                      "--max-steps", "1", "--prompts-per-step", "2", "--group-size", "2",
                      "--max-new-tokens", "4", "--entropy-warmup", "0")
    assert f"reference {tiny_dir}: frozen" in stdout  # released: KL in every stage, mrl too
    config = json.load(open(os.path.join(out, "final", "meta.json")))["user_config"]
    assert (config["pad"], config["kl_coef"], config["entropy_coef"], config["loss_agg"]) == \
        ("code", 1e-2, 0.02, "microbatch")
    assert config["rewards"] == ["accuracy=0.8", "self_critique=0.05", "image_revisit=0.05",
                                 "repetition=0.05"]
    source = config["source"]
    assert source["pad"] == source["kl_coef"] == source["loss_agg"] == "recipe released"
    assert source["entropy_warmup"] == "flag" and source["lr"] == "toy"  # a flag wins over both
    record = [r for r in records(out) if "reward/total" in r][0]
    assert {"reward/self_critique", "reward/image_revisit", "reward/repetition"} <= set(record)
