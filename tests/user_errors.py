"""Bad user input for the three scripts, and how each run ended: the table behind tests/test_user_errors.py.

    python tests/user_errors.py          # runs every case (~1-2 min) and prints the matrix per script

Every case runs the real script in a fresh process against a model folder whose weights file is garbage: a run that
read a single weight would die with a safetensors traceback, so "one line" also proves the error came before any
model loaded. Outcomes: "one line" (non-zero exit, exactly one stderr line `error: ...` naming the expected
file/line/field or flag/path, no traceback), "traceback", "silent" (exit 0), "other" (anything else).
"""

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_fixtures(base, tiny_dir):
    """Files the cases point at, under `base`: a weights-less model, good and bad data files, images."""
    model = os.path.join(base, "model")
    shutil.copytree(tiny_dir, model)
    with open(os.path.join(model, "model.safetensors"), "wb") as f:
        f.write(b"not a safetensors file")  # reading any weight fails loudly
    os.makedirs(os.path.join(base, "noconfig"))
    Image.new("RGB", (56, 56), (200, 30, 30)).save(os.path.join(base, "red.png"))
    with open(os.path.join(base, "broken.png"), "wb") as f:
        f.write(b"\x89PNG garbage")
    rl_ok = {"problem": "What is 1+1?", "answer": "2"}
    sft_ok = {"problem": "What is 1+1?", "response": "<think>1+1=2</think> \\boxed{2}"}
    files = {
        "rl_good.jsonl": [rl_ok] * 4,
        "rl_badjson.jsonl": [rl_ok, rl_ok, '{"problem": "x", "answer": '],
        "rl_missing.jsonl": [rl_ok, {"problem": "x"}],
        "rl_type.jsonl": [rl_ok, {"problem": 3, "answer": "1"}],
        "rl_noimage.jsonl": [{"problem": "<image>colour?", "answer": "red", "images": ["gone.png"]}],
        "rl_badimage.jsonl": [{"problem": "<image>colour?", "answer": "red", "images": ["broken.png"]}],
        "rl_imagestr.jsonl": [{"problem": "<image>colour?", "answer": "red", "images": "red.png"}],
        "rl_markers.jsonl": [{"problem": "<image><image>colour?", "answer": "red", "images": ["red.png"]}],
        "rl_answerlist.jsonl": [rl_ok, {"problem": "x", "answer": ["red"]}],
        "empty.jsonl": [],
        "sft_good.jsonl": [sft_ok] * 16,
        "sft_missing.jsonl": [sft_ok, {"problem": "x"}],
        "sft_badjson.jsonl": [sft_ok, "{oops"],
        "sft_roles.jsonl": [{"messages": [{"role": "robot", "content": "hi"}]}],
        "mathvista.json": None,  # written below: a benchmark release file with a missing field
    }
    for name, rows in files.items():
        if rows is None:
            continue
        with open(os.path.join(base, name), "w") as f:
            f.writelines((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    with open(os.path.join(base, "mathvista.json"), "w") as f:
        json.dump([{"pid": "1", "question": "q?", "image": "red.png", "question_type": "free_form",
                    "answer_type": "integer", "answer": "1"}, {"pid": "2", "question": "q?", "image": "red.png",
                                                               "question_type": "free_form"}], f)
    return model


def cases(base, model):
    """[(script, case name, args, text the one line must contain)]; paths are under `base`."""
    def p(name):
        return os.path.join(base, name)
    sft = ["--model", model, "--data", p("sft_good.jsonl"), "--out-dir", p("out_sft")]
    grpo = ["--model", model, "--data", p("rl_good.jsonl"), "--val-data", "--out-dir", p("out_grpo")]
    ev = ["--model", model, "--out-dir", p("out_eval")]
    out = [
        ("train_sft.py", "malformed JSON", ["--model", model, "--data", p("sft_badjson.jsonl")], "sft_badjson.jsonl:2"),
        ("train_sft.py", "missing field", ["--model", model, "--data", p("sft_missing.jsonl")],
         "sft_missing.jsonl:2: field 'response'"),
        ("train_sft.py", "bad role", ["--model", model, "--data", p("sft_roles.jsonl")], "field 'messages[0].role'"),
        ("train_sft.py", "bad val file", [*sft, "--val-data", p("rl_badjson.jsonl")], "rl_badjson.jsonl:3"),
        ("train_sft.py", "empty file", ["--model", model, "--data", p("empty.jsonl")], "empty.jsonl: no rows"),
        ("train_sft.py", "missing file", ["--model", model, "--data", p("nope.jsonl")], "nope.jsonl: file not found"),
        ("train_sft.py", "folder as data", ["--model", model, "--data", base], "is a folder"),
        ("train_sft.py", "missing model", ["--model", p("nomodel"), "--data", p("sft_good.jsonl")], "--model"),
        ("train_sft.py", "model without config", ["--model", p("noconfig")], "no config.json"),
        ("train_sft.py", "max-steps 0", [*sft, "--max-steps", "0"], "--max-steps"),
        ("train_sft.py", "max-steps negative", [*sft, "--max-steps", "-3"], "--max-steps"),
        ("train_sft.py", "epochs 0", [*sft, "--epochs", "0"], "--epochs"),
        ("train_sft.py", "batch-size 0", [*sft, "--batch-size", "0"], "--batch-size"),
        ("train_sft.py", "grad-accum 0", [*sft, "--grad-accum", "0"], "--grad-accum"),
        ("train_sft.py", "too few rows", [*sft, "--batch-size", "64"], "fewer than one step"),
        ("train_sft.py", "non-integer flag", [*sft, "--batch-size", "x"], "--batch-size"),
        ("train_grpo.py", "malformed JSON", ["--model", model, "--data", p("rl_badjson.jsonl")], "rl_badjson.jsonl:3"),
        ("train_grpo.py", "missing field", ["--model", model, "--data", p("rl_missing.jsonl")],
         "rl_missing.jsonl:2: field 'answer'"),
        ("train_grpo.py", "wrong type", ["--model", model, "--data", p("rl_type.jsonl")], "field 'problem'"),
        ("train_grpo.py", "missing image", ["--model", model, "--data", p("rl_noimage.jsonl")], "gone.png"),
        ("train_grpo.py", "corrupt image", ["--model", model, "--data", p("rl_badimage.jsonl")], "broken.png"),
        ("train_grpo.py", "images as a string", ["--model", model, "--data", p("rl_imagestr.jsonl")],
         "field 'images'"),
        ("train_grpo.py", "markers vs images", ["--model", model, "--data", p("rl_markers.jsonl")], "<image> markers"),
        ("train_grpo.py", "bad val file", [*grpo, "--val-data", p("rl_missing.jsonl")], "rl_missing.jsonl:2"),
        ("train_grpo.py", "empty file", ["--model", model, "--data", p("empty.jsonl")], "empty.jsonl: no rows"),
        ("train_grpo.py", "folder as data", ["--model", model, "--data", base], "is a folder"),
        ("train_grpo.py", "missing model", ["--model", p("nomodel"), "--data", p("rl_good.jsonl")], "--model"),
        ("train_grpo.py", "hub id, offline, not cached", ["--model", "Qwen/Qwen2.5-VL-7B-Instruct"], "HF_HUB_OFFLINE"),
        ("train_grpo.py", "max-steps 0", [*grpo, "--max-steps", "0"], "--max-steps"),
        ("train_grpo.py", "group-size 0", [*grpo, "--group-size", "0"], "--group-size"),
        ("train_grpo.py", "group-size 1", [*grpo, "--group-size", "1"], "--group-size 1"),
        ("train_grpo.py", "micro-batch-size 0", [*grpo, "--micro-batch-size", "0"], "--micro-batch-size"),
        ("train_grpo.py", "prompts-per-step 0", [*grpo, "--prompts-per-step", "0"], "--prompts-per-step"),
        ("train_grpo.py", "generate-batch-seqs 0", [*grpo, "--generate-batch-seqs", "0"], "--generate-batch-seqs"),
        ("train_grpo.py", "PAD thresholds crossed", [*grpo, "--pad-t-low", "2", "--pad-t-high", "1"], "t_low < t_high"),
        ("train_grpo.py", "unknown PAD preset", [*grpo, "--pad", "fancy"], "--pad"),
        ("eval.py", "missing file", [*ev, "--data", p("nope.jsonl")], "nope.jsonl: file not found"),
        ("eval.py", "malformed JSON", [*ev, "--data", p("rl_badjson.jsonl")], "rl_badjson.jsonl:3"),
        ("eval.py", "missing field", [*ev, "--data", p("rl_missing.jsonl")], "rl_missing.jsonl:2: field 'answer'"),
        ("eval.py", "images as a string", [*ev, "--data", p("rl_imagestr.jsonl")], "field 'images'"),
        ("eval.py", "answer as a list", [*ev, "--data", p("rl_answerlist.jsonl")], "field 'answer'"),
        ("eval.py", "empty file", [*ev, "--data", p("empty.jsonl")], "no items"),
        ("eval.py", "unknown benchmark name", [*ev, "--data", f"mathvist={p('mathvista.json')}"], "mathvist"),
        ("eval.py", "benchmark row missing a field", [*ev, "--data", f"mathvista={p('mathvista.json')}"],
         "mathvista.json:2: field 'answer'"),
        ("eval.py", "folder for a one-file benchmark", [*ev, "--data", f"mathvista={base}"], "is a folder"),
        ("eval.py", "empty DynaMath folder", [*ev, "--data", f"dynamath={p('noconfig')}"], "no sample_variant"),
        ("eval.py", "missing model", ["--model", p("nomodel"), "--data", p("rl_good.jsonl")], "--model"),
        ("eval.py", "samples 0", [*ev, "--data", p("rl_good.jsonl"), "--samples", "0"], "--samples"),
        ("eval.py", "limit negative", [*ev, "--data", p("rl_good.jsonl"), "--limit", "-1"], "--limit"),
        ("eval.py", "batch-size 0", [*ev, "--data", p("rl_good.jsonl"), "--batch-size", "0"], "--batch-size"),
        ("eval.py", "two entries, one label", [*ev, "--data", f"a={p('rl_good.jsonl')}", f"a={p('rl_good.jsonl')}"],
         "share a label"),
    ]
    return out


def run_case(script, args, expected, timeout=120):
    """-> (outcome, stderr) for one run of `script`."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    if "Traceback" in done.stderr:
        return "traceback", done.stderr
    if done.returncode == 0:
        return "silent", done.stderr
    if len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]:
        return "one line", done.stderr
    return "other", done.stderr


def run_all(base, tiny_dir, jobs=2):
    model = make_fixtures(base, tiny_dir)
    table = cases(base, model)
    with ThreadPoolExecutor(jobs) as pool:
        outcomes = list(pool.map(lambda c: run_case(c[0], c[2], c[3]), table))
    return [(script, name, outcome, stderr) for (script, name, _, _), (outcome, stderr) in zip(table, outcomes)]


if __name__ == "__main__":
    import tempfile
    sys.path.insert(0, ROOT)
    from nanorevisual.toy import ensure_tiny_model as build_tiny
    with tempfile.TemporaryDirectory() as tmp:
        results = run_all(tmp, build_tiny(os.path.join(tmp, "tiny")))
    for script in ("train_sft.py", "train_grpo.py", "eval.py"):
        rows = [r for r in results if r[0] == script]
        counts = {k: sum(r[2] == k for r in rows) for k in ("one line", "traceback", "silent", "other")}
        print(f"\n{script}: {len(rows)} cases | " + " | ".join(f"{k} {v}" for k, v in counts.items()))
        for _, name, outcome, stderr in rows:
            last = (stderr.strip().splitlines() or [""])[-1][:110]
            print(f"  {outcome:9s} {name:32s} {last}")
