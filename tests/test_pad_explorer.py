"""PAD explorer: its exact expected picks against a brute-force enumeration and against pad_select's own
frequencies, the lone-correct-answer case, and the command on a synthetic batch and on a dump file.

    python -m pytest -q tests/test_pad_explorer.py
"""

import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from nanorevisual.grpo import PAD_PRESETS, group_advantages, pad_select
from studies.pad_explorer import (by_correct_count, expected_picks, inclusion_probabilities, read_dump,
                                       synthetic_batch)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INF = float("inf")


def brute_force_inclusion(weights, k):
    """Sum over every ordered sequence of k distinct draws of its probability under successive sampling."""
    n, total = len(weights), np.zeros(len(weights))
    for order in itertools.permutations(range(n), k):
        prob, left = 1.0, sum(weights)
        for i in order:
            prob *= weights[i] / left
            left -= weights[i]
        for i in order:
            total[i] += prob
    return total


@pytest.mark.parametrize("weights", [[1.0, 2.0, 3.0, 4.0, 5.0], [0.01, 0.01, 1.0, 1.0, 1.0, 7.0],
                                     [math.exp(2.47 / 0.3), math.exp(0.35 / 0.3)] + [1.0] * 4])
def test_inclusion_probabilities_match_enumeration(weights):
    for k in range(1, len(weights) + 1):
        exact = inclusion_probabilities(weights, k)
        np.testing.assert_allclose(exact, brute_force_inclusion(weights, k), atol=1e-6)
        assert exact.sum() == pytest.approx(k, abs=1e-6)


def test_zero_weights_are_never_picked():
    probs = inclusion_probabilities([0.0, 1.0, 2.0, 0.0], 3)  # only two can be drawn
    assert probs.tolist() == [0.0, 1.0, 1.0, 0.0]


CONFIGS = {
    "paper, tau 0.5": dict(PAD_PRESETS["paper"], tau=0.5),
    "code": dict(PAD_PRESETS["code"]),
    "random": dict(PAD_PRESETS["random"]),
    "power without replacement": dict(PAD_PRESETS["code"], t_high=INF, ratio=0.3, replacement=False),
    "filter": dict(PAD_PRESETS["filter"]),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_expected_picks_match_pad_select_frequencies(name):
    cfg = CONFIGS[name]
    _, advantages = synthetic_batch(6, 8, 0.35, seed=3)  # 48 samples, a mix of group compositions
    exact, method = expected_picks(advantages, **cfg)
    assert method == "exact"
    draws = 3000
    counts = np.zeros((draws, advantages.numel()))  # (draws, N)
    for d in range(draws):
        np.add.at(counts[d], pad_select(advantages, **cfg, generator=torch.Generator().manual_seed(d)).numpy(), 1)
    mean, sd = counts.mean(0), counts.std(0)  # (N,) each
    # within 5 standard errors (plus a floor for samples that are never or always picked)
    assert np.all(np.abs(mean - exact) <= 5 * sd / math.sqrt(draws) + 1e-3), np.abs(mean - exact).max()
    assert exact.sum() == pytest.approx(counts.sum(1).mean(), abs=1e-6)  # k is fixed per draw


def test_released_upper_cut_drops_the_lone_correct_answer():
    # G = 8, one correct answer: |A| = 2.47 for it and 0.35 for the seven wrong ones (docs: the 0.97 cut)
    rewards = torch.tensor([1.0] + [0.0] * 7 + [1.0, 1.0, 1.0, 1.0] + [0.0] * 4)  # (16,) groups with 1 and 4 right
    advantages = group_advantages(rewards, 8)  # (16,)
    assert float(advantages[0]) == pytest.approx(2.47, abs=0.005)
    correct = rewards > 0.5
    code, _ = expected_picks(advantages, **PAD_PRESETS["code"])
    rows = by_correct_count(correct, advantages, code, 8)
    assert code[0] == 0.0 and rows[1]["picks_correct"] == 0.0 and rows[1]["picks_wrong"] > 0
    assert rows[1]["mass_correct"] == 0.0 and rows[1]["mass_wrong"] < 0  # only pushes the wrong answers down
    no_cut, _ = expected_picks(advantages, **dict(PAD_PRESETS["code"], t_high=INF))
    assert no_cut[0] == no_cut.max() > 0  # without the cut it is the most picked sample
    assert no_cut.sum() == pytest.approx(math.ceil(1.5 * 16))


def write_dump(path, correct, advantages, group_size):
    with open(path, "w") as f:
        for i, (ok, adv) in enumerate(zip(correct.tolist(), advantages.tolist())):
            f.write(json.dumps({"prompt_id": f"p{i // group_size}", "completion": "x", "answer": "red",
                                "reward": float(ok), "reward_accuracy": float(ok), "advantage": adv,
                                "selected": False, "times_selected": 0}) + "\n")


def run_explorer(*args):
    return subprocess.run([sys.executable, "-m", "studies.pad_explorer", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))


@pytest.mark.slow
def test_command_on_synthetic_batch_and_dump(tmp_path):
    out = tmp_path / "synthetic.png"
    done = run_explorer("--synthetic", 16, 8, 0.17, "--pad", "code", "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "expected picks: exact (total 192.000)" in done.stdout
    assert "lone correct answer (1 of 8): |A| = 2.47, outside the band; E[picks] in this batch 0.000" in done.stdout
    with Image.open(out) as im:
        assert im.size[0] > 1000

    correct, advantages = synthetic_batch(8, 4, 0.5, seed=1)
    dump = tmp_path / "step_000010.jsonl"
    write_dump(dump, correct, advantages, 4)
    got_correct, got_adv, G = read_dump(str(dump))
    assert G == 4 and torch.equal(got_correct, correct) and torch.allclose(got_adv, advantages)
    out = tmp_path / "dump.png"
    done = run_explorer("--dump", dump, "--pad", "paper", "--pad-tau", 0.5, "--pad-t-high", 1.5, "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "0.03 < |A| < 1.5" in done.stdout and "τ=0.5" in done.stdout
    with Image.open(out) as im:
        assert im.size[0] > 1000


def test_bad_input_is_one_line(tmp_path):
    dump = tmp_path / "bad.jsonl"
    dump.write_text(json.dumps({"prompt_id": "a", "advantage": 0.5, "reward_accuracy": 1.0}) + "\n"
                    + json.dumps({"prompt_id": "a", "reward_accuracy": 0.0}) + "\n")
    done = run_explorer("--dump", dump, "--out", tmp_path / "x.png")
    assert done.returncode == 2 and done.stderr.strip() == f"error: {dump}:2: field 'advantage': missing " \
                                                          "(not a train_grpo.py rollout dump?)"
    done = run_explorer("--synthetic", 4, 8, 1.5, "--out", tmp_path / "x.png")
    assert done.returncode == 2 and "need P >= 1, G >= 2 and 0 <= p <= 1" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.png").exists()
