"""PAD study harness: the statistics against slow references and hand-made curves, the harder toy task, and smoke
runs of every mode (tiny steps, seeds and held-out sets) that check results.json, report.md, the plots and resuming.

    python -m pytest -q tests/test_pad_study.py       # ~3 min (the real studies are not CI jobs)
"""

import json
import math
import os
import random
import statistics
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from studies.pad_study import (add_equal_budget, mean_ci, stagnation_onset, t_quantile, value_at_budget,
                                    variant_flags)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------------------------------------------------------
# Statistics

# two-sided 95% critical values of Student's t, from printed tables
T_TABLE = {1: 12.7062, 2: 4.3027, 4: 2.7764, 5: 2.5706, 9: 2.2622, 29: 2.0452}


def test_t_quantile_matches_tables():
    for df, value in T_TABLE.items():
        assert t_quantile(0.975, df) == pytest.approx(value, abs=2e-4)
    assert t_quantile(0.975, 1000) == pytest.approx(1.9623, abs=2e-4)  # close to the normal 1.96


def test_mean_ci_against_a_slow_loop():
    values = [0.62, 0.71, 0.55, 0.68, 0.74]
    n = len(values)
    mean = 0.0
    for v in values:
        mean += v / n
    var = 0.0
    for v in values:
        var += (v - mean) ** 2 / (n - 1)
    half = T_TABLE[n - 1] * math.sqrt(var) / math.sqrt(n)
    got = mean_ci(values)
    assert got["n"] == 5 and got["mean"] == pytest.approx(mean) and got["std"] == pytest.approx(math.sqrt(var))
    assert got["ci95"] == pytest.approx([mean - half, mean + half], abs=1e-4)
    assert mean_ci([0.5]) == {"mean": 0.5, "std": 0.0, "ci95": None, "n": 1}


def test_t_interval_covers_the_mean_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    trials, covered = 4000, 0
    for _ in range(trials):
        low, high = mean_ci(rng.normal(0.7, 0.05, size=5).tolist())["ci95"]
        covered += low <= 0.7 <= high
    assert abs(covered / trials - 0.95) < 0.015  # binomial sd of the rate: 0.0034


def test_value_at_budget_on_hand_made_curves():
    xs, ys = [0, 10, 20, 30], [0.1, 0.3, 0.5, 0.9]
    assert value_at_budget(xs, ys, 15) == pytest.approx(0.4)
    assert value_at_budget(xs, ys, 20) == 0.5 and value_at_budget(xs, ys, 0) == 0.1
    assert value_at_budget(xs, ys, 30) == 0.9
    flat = [0, 10, 10, 20]  # two evals with the same budget (a skipped step): the first one counts
    assert value_at_budget(flat, [0.0, 0.2, 0.6, 1.0], 10) == 0.2
    assert value_at_budget(flat, [0.0, 0.2, 0.6, 1.0], 15) == pytest.approx(0.8)
    with pytest.raises(AssertionError):
        value_at_budget(xs, ys, 31)  # never extrapolated


def test_equal_budget_reads_every_run_at_the_smallest_final_budget():
    def run(seconds, tokens, accs):
        return {"curve": [{"train_s": s, "tokens": t, "acc": a} for s, t, a in zip(seconds, tokens, accs)]}

    fast = run([0, 5, 10], [0, 100, 200], [0.2, 0.4, 0.6])  # cheap steps
    slow = run([0, 20, 40], [0, 400, 800], [0.2, 0.5, 0.8])
    variants = {"fast": {"runs": [fast]}, "slow": {"runs": [slow]}}
    budgets = add_equal_budget(variants)
    assert budgets == {"train_seconds": 10, "trained_tokens": 200}
    assert fast["acc_at_equal_time"] == 0.6 and fast["acc_at_equal_tokens"] == 0.6
    assert slow["acc_at_equal_time"] == pytest.approx(0.2 + 0.3 * 10 / 20)  # between step 0 and the first eval
    assert slow["acc_at_equal_tokens"] == pytest.approx(0.2 + 0.3 * 200 / 400)


def test_stagnation_onset():
    # steps 17..26 hold four 0.5s and six 1.0s: the running mean first reaches 0.8 at step 26
    assert stagnation_onset([0.5] * 20 + [1.0] * 20, window=10) == 26
    assert stagnation_onset([0.9] * 10 + [0.5] * 30, window=10) is None
    assert stagnation_onset([0.9] * 5, window=10) == 1
    slow_ref = [0.3, 0.9, 0.95, 0.7, 0.9, 1.0, 1.0]
    running = [statistics.mean(slow_ref[max(0, i - 2):i + 1]) for i in range(len(slow_ref))]
    first = min(i + 1 for i in range(len(running)) if all(r >= 0.8 for r in running[i:]))
    assert stagnation_onset(slow_ref, window=3) == first


def test_variant_flags():
    assert variant_flags("code:pad-t-high=inf") == ["--pad", "code", "--pad-set", "t_high=inf"]
    assert variant_flags("paper:pad-t-low=0.1:pad-ratio=1:lr=1e-5") == [
        "--pad", "paper", "--lr", "1e-5", "--pad-set", "t_low=0.1", "ratio=1"]


# ---------------------------------------------------------------------------------------------------------------
# The harder toy task


def test_colour_shape_task_data(tmp_path):
    from nanorevisual.tiny import build_tokenizer
    from nanorevisual.toy import make_toy_data, tokenizer_corpus
    make_toy_data(str(tmp_path / "a"), num_sft=200, num_mm_train=8, num_mm_val=6)
    make_toy_data(str(tmp_path / "b"), num_sft=200, num_mm_train=8, num_mm_val=10, task="colour-shape")
    easy = [json.loads(line) for line in open(tmp_path / "a" / "mm_val.jsonl")]
    hard = [json.loads(line) for line in open(tmp_path / "b" / "mm_val.jsonl")]
    assert len(hard) == 10 and all(h["answer"] == f"{e['answer']} {e['shape']}" for e, h in zip(easy, hard))
    assert (tmp_path / "a" / "images" / "mm_val-0003.png").read_bytes() == \
        (tmp_path / "b" / "images" / "mm_val-0003.png").read_bytes()  # same images, a richer label
    assert hard[0]["problem"] == "<image>What colour and shape is it?"
    sft = [json.loads(line) for line in open(tmp_path / "b" / "sft_train.jsonl")]
    shape_rows = [r for r in sft if "shape is it" in r["problem"]]
    assert shape_rows and all(r["response"].endswith("}") and " " in r["response"].split("boxed{")[1]
                              for r in shape_rows)
    tok = build_tokenizer(tokenizer_corpus())
    assert max(len(tok(r["response"])["input_ids"]) for r in shape_rows) < 24  # fits the toy --max-new-tokens


# ---------------------------------------------------------------------------------------------------------------
# Smoke runs of the harness

TINY_RUN = "--prompts-per-step 2 --group-size 4 --max-new-tokens 4 --eval-limit 6"


def study(tmp_path, tiny_dir, *args):
    cmd = [sys.executable, "-m", "studies.pad_study", "--init", tiny_dir, "--heldout-size", 6,
           "--data-dir", tmp_path / "data", "--eval-every", 1, "--hist-step", 0, "--extra", TINY_RUN, *args]
    return subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT))


@pytest.mark.slow
def test_ablation_smoke_results_plots_and_resume(tmp_path, tiny_dir):
    out = tmp_path / "ablation"
    args = ["--mode", "ablation", "--out-dir", out, "--variants", "none", "code:pad-t-high=inf", "--seeds", 0, 1,
            "--steps", 2]
    done = study(tmp_path, tiny_dir, *args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.load(open(out / "results.json"))
    config = results["config"]
    assert (config["steps"], config["seeds"], config["heldout_size"], config["jobs"], config["threads_per_job"],
            config["task"], config["text_heldout_size"]) == (2, [0, 1], 6, 2, 1, "colour", 20)
    assert config["variants"]["code:pad-t-high=inf"] == ["--pad", "code", "--pad-set", "t_high=inf"]
    assert set(results["variants"]) == {"none", "code:pad-t-high=inf"}
    budgets = results["budgets"]
    all_runs = [r for v in results["variants"].values() for r in v["runs"]]
    assert budgets["train_seconds"] == min(r["curve"][-1]["train_s"] for r in all_runs)
    assert budgets["trained_tokens"] == min(r["curve"][-1]["tokens"] for r in all_runs)
    for name, v in results["variants"].items():
        assert [r["seed"] for r in v["runs"]] == [0, 1]
        for r in v["runs"]:
            assert [p["step"] for p in r["curve"]] == [0, 1, 2] and r["curve"][0]["tokens"] == 0
            assert r["final_acc"] == r["curve"][-1]["acc"] and 0 <= r["final_acc"] <= 1
            xs, ys = [p["train_s"] for p in r["curve"]], [p["acc"] for p in r["curve"]]
            assert r["acc_at_equal_time"] == value_at_budget(xs, ys, budgets["train_seconds"])
            assert len(r["zero_adv_by_step"]) == 2 and r["seconds_per_step"] > 0
        s = v["summary"]
        assert s["final_acc"]["n"] == 2 and s["final_acc"]["mean"] == statistics.mean(r["final_acc"] for r in v["runs"])
        assert s["final_acc"]["ci95"][0] <= s["final_acc"]["mean"] <= s["final_acc"]["ci95"][1]
    assert all(r["trained_per_step"] == 8 for r in results["variants"]["none"]["runs"])  # no PAD: all of 2 x 4
    report = (out / "report.md").read_text()
    assert "| none |" in report and "| code:pad-t-high=inf |" in report and "seed 1:" in report
    for png in ("heldout_acc.png", "zero_adv.png", "adv_hist.png", "pad_explorer_code.png"):
        assert png in report
        with Image.open(out / png) as im:
            assert im.size[0] > 300

    # resume: a finished study does nothing again; a run without final/ is redone, alone
    done = study(tmp_path, tiny_dir, *args)
    assert "0 runs to do (4 of 4 already finished)" in done.stdout
    assert json.load(open(out / "results.json"))["variants"] == results["variants"]
    os.remove(out / "none" / "seed1" / "final" / "meta.json")
    done = study(tmp_path, tiny_dir, *args)
    assert done.returncode == 0 and "1 runs to do (3 of 4 already finished)" in done.stdout


@pytest.mark.slow
def test_map_smoke(tmp_path, tiny_dir):
    out = tmp_path / "map"
    # G = 4 (TINY_RUN): the nonzero |A| are 0.5, 0.87 and 1.5, so t_low 0 and 0.3 keep the same samples; 0.6 does not
    done = study(tmp_path, tiny_dir, "--mode", "map", "--out-dir", out, "--map-presets", "code", "--map-t-low", 0,
                 0.3, 0.6, "--map-t-high", "inf", "--seeds", 0, 1, "--steps", 1)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "4 runs to do" in done.stdout  # 2 distinct cells x 2 seeds
    results = json.load(open(out / "results.json"))
    assert results["config"]["map_t_low"] == [0.0, 0.3, 0.6] and results["config"]["seeds"] == [0, 1]
    cells = results["maps"]["code"]
    assert [(c["t_low"], c["t_high"]) for c in cells] == [(0.0, math.inf), (0.3, math.inf), (0.6, math.inf)]
    assert [c["same_runs_as"] for c in cells] == [None, {"t_low": 0.0, "t_high": math.inf}, None]
    assert cells[1]["runs"] == cells[0]["runs"]
    for c in cells:
        assert [r["seed"] for r in c["runs"]] == [0, 1] and c["summary"]["final_acc"]["n"] == 2
    for c in (cells[0], cells[2]):
        meta = json.load(open(os.path.join(c["runs"][0]["run_dir"], "final", "meta.json")))
        assert float(meta["user_config"]["pad_config"]["t_low"]) == c["t_low"] and meta["user_config"]["pad"] == "code"
    with Image.open(out / "map_code.png") as im:
        assert im.size[0] > 300
    report = (out / "report.md").read_text()
    assert "best: t_low" in report and "code (0.3, inf) = (0.0, inf)" in report


@pytest.mark.parametrize("group_size", [4, 8])
def test_shared_map_cells_select_identically(group_size):
    """What the map's sharing of cells rests on: with a binary reward, threshold pairs put in one group select the
    same samples from any batch (train_grpo.py sees the thresholds only through pad_select and pad/effective)."""
    import torch
    from nanorevisual.grpo import PAD_PRESETS, group_advantages, pad_select
    from studies.pad_study import group_size_of, map_cell_groups
    extra = f"--seed 1 --group-size {group_size}"
    assert group_size_of(extra) == group_size  # the map's sharing and the report's |A| values use this G
    owner = map_cell_groups(["code", "paper"], [0.0, 0.03, 0.1, 0.3, 0.5, 0.8], [0.97, 1.5, math.inf], extra)
    assert len(set(owner.values())) < len(owner)
    rng = random.Random(0)
    for trial in range(40):
        p = rng.random()
        rewards = torch.tensor([float(rng.random() < p) for _ in range(8 * group_size)])  # (N,) binary
        adv = group_advantages(rewards, group_size)  # (N,)
        for (preset, t_low, t_high), (_, o_low, o_high) in owner.items():
            cfg = dict(PAD_PRESETS[preset])

            def pick(lo, hi):
                return pad_select(adv, **dict(cfg, t_low=lo, t_high=hi), generator=torch.Generator().manual_seed(trial))

            assert torch.equal(pick(t_low, t_high), pick(o_low, o_high)), (preset, t_low, t_high, trial)
            effective = lambda lo, hi: int(((adv.abs() > lo) & (adv.abs() < hi)).sum())  # noqa: E731
            assert effective(t_low, t_high) == effective(o_low, o_high)
    # a graded reward breaks the equivalence, so the map then runs every cell
    assert len(set(map_cell_groups(["code"], [0.0, 0.3], [math.inf], "--rewards length=0.5").values())) == 2


@pytest.mark.slow
def test_stage_order_smoke(tmp_path, tiny_dir):
    out = tmp_path / "stages"
    done = study(tmp_path, tiny_dir, "--mode", "stage-order", "--out-dir", out, "--seeds", 0, 1, "--steps", 1,
                 "--trl-steps", 1)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.load(open(out / "results.json"))
    chains = results["chains"]
    assert list(chains) == ["CS only", "CS + MRL", "CS + TRL", "CS + MRL + TRL", "CS + TRL + MRL"]
    for row in chains.values():
        assert [r["seed"] for r in row["runs"]] == [0, 1]
        assert row["summary"]["avg"]["mean"] == pytest.approx(statistics.mean(r["avg"] for r in row["runs"]))
    meta = json.load(open(out / "seed1" / "trl_mrl" / "final" / "meta.json"))
    assert meta["user_config"]["model"].endswith(os.path.join("seed1", "trl", "final"))
    assert meta["user_config"]["stage"] == "mrl" and meta["user_config"]["seed"] == 1
    assert "| CS + TRL + MRL |" in (out / "report.md").read_text()
    assert (out / "stage_order.png").stat().st_size > 0 and "(stage_order.png)" in (out / "report.md").read_text()


@pytest.mark.slow
def test_sweep_plan_and_bad_input(tmp_path, tiny_dir):
    done = study(tmp_path, tiny_dir, "--mode", "sweep", "--sweep", "pad-t-low=0.03,0.6", "--out-dir",
                 tmp_path / "sweep", "--plan", 1)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sweep: 6 runs (6 to do, 1200 training steps)" in done.stdout and "t_low=0.6" in done.stdout
    assert not (tmp_path / "sweep" / "results.json").exists()
    done = study(tmp_path, tiny_dir, "--variants", "code:pad-t-high", "--out-dir", tmp_path / "bad")
    assert done.returncode == 2 and done.stderr.strip() == \
        "error: --variants code:pad-t-high: expected PRESET[:FLAG=VALUE]..., e.g. code:pad-t-high=inf"
    done = study(tmp_path, tiny_dir, "--mode", "map", "--map-t-low", 1.0, "--map-t-high", 0.97)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "must all lie below" in done.stderr
