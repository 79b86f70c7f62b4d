"""eval.py: pass@1-over-k arithmetic, --data parsing, an end-to-end tiny run, crash + resume, --compare, resume guard.

    python -m pytest -q tests/test_eval.py      # ~30 s: four short runs of the real script on the tiny model
"""

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("eval_script", os.path.join(ROOT, "eval.py"))
ev = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ev)  # the script body is under __main__: this only defines the pure functions


def run_eval(*args, check=True):
    # one thread: the tiny model's matmuls gain nothing from more, and the CI cores are shared
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "eval.py"), *args], capture_output=True, text=True,
                         timeout=300, env=env, cwd=ROOT)
    if check:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-4000:]
    return out


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def keys(preds):
    return [(p["id"], p["sample"]) for p in preds]


# ----------------------------------------------------------------------------------------------------------------
# pure functions


def test_summarize_k3_accuracy_and_std():
    pattern = {"a": [1, 1, 0], "b": [0, 1, 0]}  # item means 2/3 and 1/3; per-sample accuracies 0.5, 1.0, 0.0
    preds = [{"benchmark": "toy", "id": i, "sample": j, "correct": bool(c)}
             for i, cs in pattern.items() for j, c in enumerate(cs)]
    preds += [{"benchmark": "mathvista", "id": "m1", "sample": 0, "correct": True}]
    results = ev.summarize(preds, labels=["toy", "mathvista"])
    assert list(results) == ["mathvista", "toy", "average"]  # paper Table 2 columns first
    toy = results["toy"]
    assert toy["accuracy"] == pytest.approx(50.0)
    assert toy["std"] == pytest.approx(100 * math.sqrt(((0.5 - 0.5) ** 2 + 0.5 ** 2 + 0.5 ** 2) / 3))  # 40.82
    assert (toy["items"], toy["samples"]) == (2, 3)
    assert results["mathvista"] == {"accuracy": 100.0, "std": 0.0, "items": 1, "samples": 1, "metric": "accuracy",
                                    "score": 100.0}
    assert results["average"] == {"score": pytest.approx(75.0), "items": 3, "benchmarks": 2}
    table = ev.markdown_table(results)
    assert "| toy | 50.0 | accuracy | 50.0 | ±40.8 | 2 | 3 |" in table and "| **average** | 75.0 |" in table
    diff = ev.compare_table(results, {"other": {"toy": 40.0}})
    assert "| toy | 50.0 | 40.0 | +10.0 |" in diff and "| mathvista | 100.0 | - | - |" in diff


def test_summarize_uses_the_paper_metric_per_sample():
    """DynaMath: worst case over variants, per sample index, then averaged; it feeds the average and --compare."""
    correct = {("1", 1): [1, 1], ("1", 2): [1, 0], ("2", 1): [0, 1], ("2", 2): [0, 1]}  # (seed, variant): samples
    preds = [{"benchmark": "dyn", "id": f"d{seed}v{v}", "sample": j, "correct": bool(c)}
             for (seed, v), cs in correct.items() for j, c in enumerate(cs)]
    metas = {("dyn", f"d{seed}v{v}"): {"seed_id": seed, "variant": v} for seed, v in correct}
    results = ev.summarize(preds, ["dyn"], metas, {"dyn": "dynamath"})
    # sample 0: seed 1 right in v1 and v2 -> 1/2 seeds; sample 1: only seed 2 -> 1/2; average-case 5/8
    assert results["dyn"]["metric"] == "worst-case" and results["dyn"]["score"] == pytest.approx(50.0)
    assert results["dyn"]["accuracy"] == pytest.approx(62.5) and results["average"]["score"] == pytest.approx(50.0)
    assert "| dyn | 50.0 | 40.0 | +10.0 |" in ev.compare_table(results, {"other": {"dyn": 40.0}})


def test_released_recipe_prompt_is_a_system_turn():
    item = {"problem": "<image>What colour?", "images": ["a.png"]}
    paper = ev.item_messages(item, "paper", ev.INSTRUCTION)
    released = ev.item_messages(item, "released", ev.INSTRUCTION)
    assert [m["role"] for m in paper] == ["user"] and "step by step" in paper[0]["content"][-1]["text"]
    assert [m["role"] for m in released] == ["system", "user"]
    assert "step by step" not in released[0]["content"] and "\\boxed{}" in released[0]["content"]
    assert released[1]["content"][-1]["text"] == "What colour?"  # the problem alone


def test_parse_data_spec():
    assert ev.parse_data_spec("MathVista=/d/x.parquet") == ("mathvista", "mathvista", "/d/x.parquet")
    assert ev.parse_data_spec("data/MathVision/test.jsonl") == ("mathvision", "mathvision", "data/MathVision/test.jsonl")
    assert ev.parse_data_spec("bench/MATH-500/test.jsonl")[:2] == ("math500", "math500")
    assert ev.parse_data_spec("hf/aime_2024/train.jsonl")[:2] == ("aime24", "aime24")
    assert ev.parse_data_spec("data/toy/mm_val.jsonl") == ("mm_val", "jsonl", "data/toy/mm_val.jsonl")
    assert ev.parse_data_spec("geo=data/toy/mm_val.jsonl") == ("geo", "jsonl", "data/toy/mm_val.jsonl")


# ----------------------------------------------------------------------------------------------------------------
# the real script on the tiny model


@pytest.fixture(scope="module")
def mixed_file(tmp_path_factory):
    """10 project-format rows: 4 image questions, 5 arithmetic, 1 multiple choice."""
    folder = tmp_path_factory.mktemp("mixed")
    os.makedirs(folder / "images")
    rows = []
    for i, (name, rgb) in enumerate([("red", (220, 40, 40)), ("blue", (40, 70, 220))] * 2):
        Image.new("RGB", (56, 56 + 28 * i), rgb).save(folder / "images" / f"{i}.png")
        rows.append({"id": f"img-{i}", "problem": "<image>What colour is the shape?", "answer": name,
                     "images": [f"images/{i}.png"]})
    rows += [{"id": f"sum-{a}", "problem": f"What is {a}+{a}?", "answer": str(2 * a)} for a in range(5)]
    rows.append({"id": "mc-0", "problem": "Which is larger?\nA. 3\nB. 5", "answer": "B", "options": {"A": "3", "B": "5"}})
    path = folder / "mixed10.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


SAMPLED = ["--samples", "2", "--temperature", "1.0", "--batch-size", "6", "--max-new-tokens", "8"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_dir, mixed_file):
    out_dir = str(tmp_path_factory.mktemp("eval") / "run")
    out = run_eval("--model", tiny_dir, "--data", mixed_file, "--out-dir", out_dir, *SAMPLED)
    return out_dir, out.stdout


@pytest.mark.slow
def test_end_to_end_outputs(first_run):
    out_dir, stdout = first_run
    assert "generating 20 on 1 rank(s)" in stdout
    assert sorted(os.listdir(out_dir)) == ["config.json", "predictions.jsonl", "results.json", "results.md"]
    results = json.load(open(os.path.join(out_dir, "results.json")))
    assert results["mixed10"]["items"] == 10 and results["mixed10"]["samples"] == 2
    assert results["average"]["items"] == 10 and 0 <= results["mixed10"]["accuracy"] <= 100
    table = open(os.path.join(out_dir, "results.md")).read()
    assert "| mixed10 |" in table and "| **average** |" in table and "| mixed10 |" in stdout
    preds = read_jsonl(os.path.join(out_dir, "predictions.jsonl"))
    assert len(preds) == 20 and len(set(keys(preds))) == 20
    assert {"benchmark", "id", "sample", "completion", "extracted", "answer", "correct", "num_tokens",
            "truncated"} <= set(preds[0])
    assert keys(preds)[:4] == [("img-0", 0), ("img-0", 1), ("img-1", 0), ("img-1", 1)]  # sorted: id, then sample
    assert all(0 < p["num_tokens"] <= 8 for p in preds)
    gold = {p["id"]: p["answer"] for p in preds}
    assert gold["mc-0"] == "B" and gold["sum-3"] == "6" and gold["img-1"] == "blue"


@pytest.mark.slow
def test_resume_generates_only_missing(first_run, tiny_dir, mixed_file, tmp_path):
    out_dir, _ = first_run
    resumed = str(tmp_path / "resumed")
    shutil.copytree(out_dir, resumed)
    path = os.path.join(resumed, "predictions.jsonl")
    lines = open(path).read().splitlines(keepends=True)
    dropped = [1, 4, 7, 12, 19]
    kept = [json.loads(line) for i, line in enumerate(lines) if i not in dropped]
    with open(path, "w") as f:  # a crash: five predictions never written, the last write cut off mid-line
        f.writelines(line for i, line in enumerate(lines) if i not in dropped)
        f.write(lines[dropped[-1]][:40])
    out = run_eval("--model", tiny_dir, "--data", mixed_file, "--out-dir", resumed, *SAMPLED,
                   "--compare", os.path.join(out_dir, "results.json"))
    assert "15 of 20 (item, sample) pairs already" in out.stdout and "generating 5 on" in out.stdout
    assert "skipped 1 unreadable prediction lines" in out.stdout
    preds = read_jsonl(path)
    assert len(preds) == 20 and sorted(keys(preds)) == sorted(keys(read_jsonl(os.path.join(out_dir, "predictions.jsonl"))))
    assert all(p in preds for p in kept)  # nothing already written was lost or rewritten
    assert "difference vs" in out.stdout and "| mixed10 |" in out.stdout.split("difference vs")[1]
    assert json.load(open(os.path.join(resumed, "results.json")))["mixed10"]["items"] == 10


@pytest.mark.slow
def test_compare_paper_limit_and_guard(first_run, tiny_dir, mixed_file, tmp_path):
    out_dir, _ = first_run
    again = str(tmp_path / "again")
    shutil.copytree(out_dir, again)
    out = run_eval("--model", tiny_dir, "--data", mixed_file, "--out-dir", again, *SAMPLED, "--limit", "4",
                   "--compare", "paper")
    assert "generating 0 on" in out.stdout  # everything done: no model load, no generation
    assert "ReVisual-R1-7B" in out.stdout and "Qwen2.5-VL-7B" in out.stdout
    assert json.load(open(os.path.join(again, "results.json")))["mixed10"]["items"] == 4
    assert len(read_jsonl(os.path.join(again, "predictions.jsonl"))) == 20  # predictions beyond --limit are kept
    # another decoding setting in the same folder would mix predictions: refused
    bad = run_eval("--model", tiny_dir, "--data", mixed_file, "--out-dir", again, "--max-new-tokens", "9", check=False)
    assert bad.returncode != 0 and "other settings" in bad.stderr


@pytest.mark.slow
def test_released_recipe_sampling_and_override(tiny_dir, mixed_file, tmp_path):
    out = str(tmp_path / "released")
    run_eval("--model", tiny_dir, "--data", mixed_file, "--out-dir", out, "--limit", "2",
             "--recipe", "released", "--max-new-tokens", "4")
    config = json.load(open(os.path.join(out, "config.json")))
    assert (config["recipe"], config["temperature"], config["top_p"]) == ("released", 0.3, 0.95)
    out2 = str(tmp_path / "released-greedy")
    run_eval("--model", tiny_dir, "--data", mixed_file, "--out-dir", out2, "--limit", "2",
             "--recipe", "released", "--max-new-tokens", "4", "--temperature", "0")
    assert json.load(open(os.path.join(out2, "config.json")))["temperature"] == 0.0  # a flag wins


@pytest.mark.skipif(not __import__("torch").distributed.is_available(), reason="no torch.distributed")
@pytest.mark.slow
def test_torchrun_resume_from_rank_files(first_run, tiny_dir, mixed_file, tmp_path):
    """2 CPU ranks (gloo, FSDP2) resume a torchrun crash: half in predictions.jsonl, some in a rank file, 6 missing."""
    out_dir, _ = first_run
    ddp_dir = str(tmp_path / "ddp")
    os.makedirs(ddp_dir)
    shutil.copy(os.path.join(out_dir, "config.json"), ddp_dir)
    lines = open(os.path.join(out_dir, "predictions.jsonl")).read().splitlines(keepends=True)
    open(os.path.join(ddp_dir, "predictions.jsonl"), "w").writelines(lines[:10])
    open(os.path.join(ddp_dir, "predictions.rank1.jsonl"), "w").writelines(lines[10:14] + lines[:2])  # 2 duplicates
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "eval.py"), "--model", tiny_dir, "--data", mixed_file, "--out-dir", ddp_dir, *SAMPLED]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-4000:]
    assert "14 of 20 (item, sample) pairs already" in out.stdout and "generating 6 on 2 rank(s)" in out.stdout
    assert sorted(os.listdir(ddp_dir)) == ["config.json", "predictions.jsonl", "results.json", "results.md"]
    preds = read_jsonl(os.path.join(ddp_dir, "predictions.jsonl"))
    assert keys(preds) == keys(read_jsonl(os.path.join(out_dir, "predictions.jsonl")))  # same order, each once
    assert preds[:14] == [json.loads(line) for line in lines[:14]]


@pytest.mark.slow
def test_dynamath_folder_end_to_end(tmp_path, tiny_dir):
    """`dynamath=DIR/` reads every variant file of the downloaded folder and reports worst case beside accuracy."""
    data = tmp_path / "DynaMath" / "data"
    os.makedirs(data)
    Image.new("RGB", (56, 56), (200, 30, 30)).save(data / "q.png")
    for k in (1, 2):
        rows = [{"id": str(seed), "question": f"What is {seed}+{k}?", "image": "q.png",
                 "ground_truth": str(seed + k), "answer_type": "free form"} for seed in range(5)]
        (data / f"sample_variant{k}-00000-of-00001.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out_dir = str(tmp_path / "out")
    out = run_eval("--model", tiny_dir, "--data", f"dynamath={tmp_path / 'DynaMath'}/", "--out-dir", out_dir,
                   "--max-new-tokens", "6", "--compare", "paper")
    assert "dynamath: 10 items" in out.stdout
    results = json.load(open(os.path.join(out_dir, "results.json")))
    dyn = results["dynamath"]
    assert dyn["items"] == 10 and dyn["metric"] == "worst-case" and dyn["score"] <= dyn["accuracy"]
    assert "| dynamath |" in out.stdout and "worst-case" in open(os.path.join(out_dir, "results.md")).read()
