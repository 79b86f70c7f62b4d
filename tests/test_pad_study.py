"""Smoke test of the PAD study harness: 2 variants, 1 seed, 2 steps; every output file exists and parses.

    python -m pytest -q tests/test_pad_study.py       # ~30 s (the real study is not a CI job)
"""

import json
import os
import subprocess
import sys

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pad_study_smoke(tmp_path, tiny_dir):
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "nanorevisual.pad_study", "--out-dir", str(out), "--init", tiny_dir,
           "--variants", "none", "paper", "--seeds", "0", "--steps", "2", "--eval-every", "1", "--hist-step", "0",
           "--extra", "--prompts-per-step 2 --group-size 4 --max-new-tokens 4 --eval-limit 4 --dump-every 1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.load(open(out / "results.json"))
    assert set(results) == {"none", "paper"} and len(results["none"]) == 1
    for runs in results.values():
        assert {"final_acc", "zero_adv", "trained_per_update", "time_per_step"} <= set(runs[0])
        assert 0.0 <= runs[0]["final_acc"] <= 1.0
    assert results["none"][0]["trained_per_update"] == 8  # no PAD: every rollout is trained on
    report = (out / "report.md").read_text()
    assert "| none |" in report and "| paper |" in report
    for png in ("reward.png", "zero_adv.png", "adv_hist.png"):
        assert png in report
        with Image.open(out / png) as im:
            assert im.size[0] > 100
    for variant in ("none", "paper"):
        metrics = [json.loads(line) for line in open(out / variant / "seed0" / "metrics.jsonl")]
        assert sum("reward/total" in r for r in metrics) == 2


def test_pad_study_sweep_mode(tmp_path, tiny_dir):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "nanorevisual.pad_study", "--out-dir", str(out), "--init", tiny_dir,
           "--sweep", "pad-t-low=0.03,0.6", "--seeds", "0", "--steps", "2", "--eval-every", "1", "--hist-step", "0",
           "--extra", "--prompts-per-step 2 --group-size 4 --max-new-tokens 4 --eval-limit 4 --dump-every 1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.load(open(out / "results.json"))
    assert set(results) == {"pad-t-low=0.03", "pad-t-low=0.6"}
    meta = json.load(open(out / "pad-t-low_0.6" / "seed0" / "final" / "meta.json"))
    assert meta["user_config"]["pad_t_low"] == 0.6 and meta["user_config"]["pad"] == "paper"
    assert "| pad-t-low=0.6 |" in (out / "report.md").read_text()
