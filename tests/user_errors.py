"""Bad user input for the three scripts, and how each run ended: the table behind tests/test_user_errors.py.

    python tests/user_errors.py     # every case (~3 min): the matrix per script and class
    python tests/user_errors.py -v  # ... and the last stderr line of every case

Every case runs the real script in a fresh process against a model folder whose weights file is garbage: a run that
read a single weight would die with a safetensors traceback, so "one line" also proves the error came before any
model loaded. Outcomes: "one line" (exit code 2, one stderr line `error: ...` naming the expected
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
    for name, edit in (("noweights", None), ("llama", "llama"), ("badconfig", "{not json")):
        shutil.copytree(model, os.path.join(base, name))
        if edit is None:  # config and tokenizer, no weight file
            os.remove(os.path.join(base, name, "model.safetensors"))
        elif edit == "llama":  # another architecture's config (weights present)
            with open(os.path.join(base, name, "config.json"), "w") as f:
                json.dump({"model_type": "llama", "hidden_size": 4096}, f)
        else:
            with open(os.path.join(base, name, "config.json"), "w") as f:
                f.write(edit)
    Image.new("RGB", (56, 56), (200, 30, 30)).save(os.path.join(base, "red.png"))
    with open(os.path.join(base, "broken.png"), "wb") as f:
        f.write(b"\x89PNG garbage")
    Image.effect_noise((64, 64), 50).convert("RGB").save(os.path.join(base, "full.jpg"))
    with open(os.path.join(base, "full.jpg"), "rb") as f:
        jpeg = f.read()
    with open(os.path.join(base, "cut.jpg"), "wb") as f:
        f.write(jpeg[:len(jpeg) // 2])  # a truncated JPEG: PIL's verify() passes it, decoding fails
    with open(os.path.join(base, "afile"), "w") as f:
        f.write("a regular file where a folder should be")
    for script in ("sft", "grpo"):  # a run checkpointed at step 7, for --resume 1 --max-steps 2
        os.makedirs(os.path.join(base, f"ckpt_{script}", "step_000007"))
        with open(os.path.join(base, f"ckpt_{script}", "step_000007", "meta.json"), "w") as f:
            json.dump({"step": 7, "user_config": {}}, f)
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
        "rl_cutjpg.jsonl": [{"problem": "<image>colour?", "answer": "red", "images": ["cut.jpg"]}],
        "sft_cutjpg.jsonl": [{"problem": "<image>colour?", "response": "red",
                              "images": ["cut.jpg"]}] * 16,
        # an image that exists relative to the working directory (the repository root) only
        "rl_cwdimage.jsonl": [{"problem": "<image>colour?", "answer": "red",
                               "images": ["docs/pad_explorer_dump_code.png"]}],
        "rl_nested.jsonl": [rl_ok, "[" * 100000],
        "sft_nested.jsonl": [sft_ok, "[" * 100000],
        "rl_long.jsonl": [{"problem": "x " * 100000, "answer": "1"}],  # 200k characters
    }
    for name, rows in files.items():
        if rows is None:
            continue
        with open(os.path.join(base, name), "w") as f:
            f.writelines((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    for name, good in (("rl_latin1.jsonl", rl_ok), ("sft_latin1.jsonl", sft_ok)):  # byte on line 2
        with open(os.path.join(base, name), "wb") as f:
            f.write((json.dumps(good) + "\n").encode() + b'{"problem": "caf\xe9", "answer": "1"}\n')
    with open(os.path.join(base, "mathvista_latin1.json"), "wb") as f:
        f.write(b'[{"pid": "1", "question": "caf\xe9?", "answer": "1"}]')
    with open(os.path.join(base, "mathvista.json"), "w") as f:
        json.dump([{"pid": "1", "question": "q?", "image": "red.png", "question_type": "free_form",
                    "answer_type": "integer", "answer": "1"}, {"pid": "2", "question": "q?", "image": "red.png",
                                                               "question_type": "free_form"}], f)
    return model


CLASSES = ("flags", "folders and models", "files", "rows")


def cases(base, model):
    """[(script, class, case name, args, text the one line must contain)]; paths under `base`."""
    def p(name):
        return os.path.join(base, name)
    sft = ["--model", model, "--data", p("sft_good.jsonl"), "--out-dir", p("out_sft")]
    grpo = ["--model", model, "--data", p("rl_good.jsonl"), "--val-data", "--out-dir", p("out_grpo")]
    ev = ["--model", model, "--out-dir", p("out_eval")]
    out = [
        ("train_sft.py", "rows", "malformed JSON",
         ["--model", model, "--data", p("sft_badjson.jsonl")], "sft_badjson.jsonl:2"),
        ("train_sft.py", "rows", "missing field",
         ["--model", model, "--data", p("sft_missing.jsonl")],
         "sft_missing.jsonl:2: field 'response'"),
        ("train_sft.py", "rows", "bad role", ["--model", model, "--data", p("sft_roles.jsonl")],
         "field 'messages[0].role'"),
        ("train_sft.py", "rows", "bad val file", [*sft, "--val-data", p("rl_badjson.jsonl")],
         "rl_badjson.jsonl:3"),
        ("train_sft.py", "rows", "empty file", ["--model", model, "--data", p("empty.jsonl")],
         "empty.jsonl: no rows"),
        ("train_sft.py", "files", "missing file", ["--model", model, "--data", p("nope.jsonl")],
         "nope.jsonl: file not found"),
        ("train_sft.py", "files", "folder as data", ["--model", model, "--data", base],
         "is a folder"),
        ("train_sft.py", "folders and models", "missing model",
         ["--model", p("nomodel"), "--data", p("sft_good.jsonl")], "--model"),
        ("train_sft.py", "folders and models", "model without config", ["--model", p("noconfig")],
         "no config.json"),
        ("train_sft.py", "flags", "max-steps 0", [*sft, "--max-steps", "0"], "--max-steps"),
        ("train_sft.py", "flags", "max-steps negative", [*sft, "--max-steps", "-3"], "--max-steps"),
        ("train_sft.py", "flags", "epochs 0", [*sft, "--epochs", "0"], "--epochs"),
        ("train_sft.py", "flags", "batch-size 0", [*sft, "--batch-size", "0"], "--batch-size"),
        ("train_sft.py", "flags", "grad-accum 0", [*sft, "--grad-accum", "0"], "--grad-accum"),
        ("train_sft.py", "rows", "too few rows", [*sft, "--batch-size", "64"],
         "fewer than one step"),
        ("train_sft.py", "flags", "non-integer flag", [*sft, "--batch-size", "x"], "--batch-size"),
        ("train_grpo.py", "rows", "malformed JSON",
         ["--model", model, "--data", p("rl_badjson.jsonl")], "rl_badjson.jsonl:3"),
        ("train_grpo.py", "rows", "missing field",
         ["--model", model, "--data", p("rl_missing.jsonl")],
         "rl_missing.jsonl:2: field 'answer'"),
        ("train_grpo.py", "rows", "wrong type", ["--model", model, "--data", p("rl_type.jsonl")],
         "field 'problem'"),
        ("train_grpo.py", "rows", "missing image",
         ["--model", model, "--data", p("rl_noimage.jsonl")], "gone.png"),
        ("train_grpo.py", "rows", "corrupt image",
         ["--model", model, "--data", p("rl_badimage.jsonl")], "broken.png"),
        ("train_grpo.py", "rows", "images as a string",
         ["--model", model, "--data", p("rl_imagestr.jsonl")],
         "field 'images'"),
        ("train_grpo.py", "rows", "markers vs images",
         ["--model", model, "--data", p("rl_markers.jsonl")], "<image> markers"),
        ("train_grpo.py", "rows", "bad val file", [*grpo, "--val-data", p("rl_missing.jsonl")],
         "rl_missing.jsonl:2"),
        ("train_grpo.py", "rows", "empty file", ["--model", model, "--data", p("empty.jsonl")],
         "empty.jsonl: no rows"),
        ("train_grpo.py", "files", "folder as data", ["--model", model, "--data", base],
         "is a folder"),
        ("train_grpo.py", "folders and models", "missing model",
         ["--model", p("nomodel"), "--data", p("rl_good.jsonl")], "--model"),
        ("train_grpo.py", "folders and models", "hub id, offline, not cached",
         ["--model", "Qwen/Qwen2.5-VL-7B-Instruct"], "HF_HUB_OFFLINE"),
        ("train_grpo.py", "flags", "max-steps 0", [*grpo, "--max-steps", "0"], "--max-steps"),
        ("train_grpo.py", "flags", "group-size 0", [*grpo, "--group-size", "0"], "--group-size"),
        ("train_grpo.py", "flags", "group-size 1", [*grpo, "--group-size", "1"], "--group-size 1"),
        ("train_grpo.py", "flags", "micro-batch-size 0", [*grpo, "--micro-batch-size", "0"],
         "--micro-batch-size"),
        ("train_grpo.py", "flags", "prompts-per-step 0", [*grpo, "--prompts-per-step", "0"],
         "--prompts-per-step"),
        ("train_grpo.py", "flags", "generate-batch-seqs 0", [*grpo, "--generate-batch-seqs", "0"],
         "--generate-batch-seqs"),
        ("train_grpo.py", "flags", "PAD thresholds crossed",
         [*grpo, "--pad-set", "t_low=2", "t_high=1"], "t_low < t_high"),
        ("train_grpo.py", "flags", "unknown PAD preset", [*grpo, "--pad", "fancy"], "--pad"),
        ("eval.py", "files", "missing file", [*ev, "--data", p("nope.jsonl")],
         "nope.jsonl: file not found"),
        ("eval.py", "rows", "malformed JSON", [*ev, "--data", p("rl_badjson.jsonl")],
         "rl_badjson.jsonl:3"),
        ("eval.py", "rows", "missing field", [*ev, "--data", p("rl_missing.jsonl")],
         "rl_missing.jsonl:2: field 'answer'"),
        ("eval.py", "rows", "images as a string", [*ev, "--data", p("rl_imagestr.jsonl")],
         "field 'images'"),
        ("eval.py", "rows", "answer as a list", [*ev, "--data", p("rl_answerlist.jsonl")],
         "field 'answer'"),
        ("eval.py", "rows", "empty file", [*ev, "--data", p("empty.jsonl")], "no items"),
        ("eval.py", "flags", "unknown benchmark name",
         [*ev, "--data", f"mathvist={p('mathvista.json')}"], "mathvist"),
        ("eval.py", "rows", "benchmark row missing a field",
         [*ev, "--data", f"mathvista={p('mathvista.json')}"],
         "mathvista.json:2: field 'answer'"),
        ("eval.py", "files", "folder for a one-file benchmark",
         [*ev, "--data", f"mathvista={base}"], "is a folder"),
        ("eval.py", "files", "empty DynaMath folder", [*ev, "--data", f"dynamath={p('noconfig')}"],
         "no sample_variant"),
        ("eval.py", "folders and models", "missing model",
         ["--model", p("nomodel"), "--data", p("rl_good.jsonl")], "--model"),
        ("eval.py", "flags", "samples 0", [*ev, "--data", p("rl_good.jsonl"), "--samples", "0"],
         "--samples"),
        ("eval.py", "flags", "limit negative", [*ev, "--data", p("rl_good.jsonl"), "--limit", "-1"],
         "--limit"),
        ("eval.py", "flags", "batch-size 0",
         [*ev, "--data", p("rl_good.jsonl"), "--batch-size", "0"], "--batch-size"),
        ("eval.py", "flags", "two entries, one label",
         [*ev, "--data", f"a={p('rl_good.jsonl')}", f"a={p('rl_good.jsonl')}"],
         "share a label"),
    ]
    # every numeric flag class: NaN, inf, zero, negative, out of range, wrong type; flag named
    sft_flags = ["--lr inf", "--lr nan", "--lr 0", "--lr -0.001", "--clip-grad -1", "--clip-grad 0",
                 "--clip-grad nan", "--epochs inf", "--epochs nan", "--epochs -1",
                 "--adam-beta2 1.5", "--adam-beta2 1", "--weight-decay -0.1", "--warmup-ratio 2",
                 "--min-lr-ratio -1",
                 "--max-length 0", "--seed -1", "--resume 2", "--log-every 0", "--save-every -1",
                 "--eval-every -5", "--lr abc", "--max-steps 2.5"]
    grpo_flags = ["--temperature 0", "--temperature nan", "--temperature -1", "--top-p 0",
                  "--top-p 1.5", "--lr nan", "--lr inf", "--clip-grad -1", "--kl-coef -1",
                  "--kl-coef inf", "--clip-low 1", "--clip-low -0.1", "--clip-high nan",
                  "--dual-clip 1", "--dual-clip 1.1", "--entropy-coef -1", "--rewards accuracy=nan",
                  "--rewards length=-1", "--rewards speed=1", "--rewards accuracy",
                  "--length-budget 0", "--pad-set ratio=0", "--pad-set ratio=nan",
                  "--pad-set t_low=nan", "--pad-set tau_start=0", "--pad-set tau_end=-1",
                  "--pad-set alpha=-1", "--pad-set weighting=best", "--pad-set replacement=2",
                  "--pad-set empty=maybe", "--pad-set ratio=abc", "--min-pixels 0",
                  "--max-prompt-length -1", "--eval-temperature -1", "--gather-for-rollout 2",
                  "--micro-batch-tokens -1", "--optim-batch-seqs -1", "--max-new-tokens 0",
                  "--weight-decay -1", "--scale-by-std 2", "--max-steps 1e3",
                  "--min-pixels 5000 --max-pixels 4000"]
    eval_flags = ["--dtype fp16", "--compare papr", f"--compare {p('rl_good.jsonl')}",
                  "--temperature -1", "--temperature nan", "--top-p 0", "--top-p 2", "--samples -1",
                  "--max-new-tokens 0", "--max-prompt-length -1", "--meta-samples 2",
                  "--batch-size -1", "--seed nan", "--limit inf",
                  "--min-pixels 5000 --max-pixels 4000"]
    ev_good = [*ev, "--data", p("rl_good.jsonl")]
    for script, base_args, table in (("train_sft.py", sft, sft_flags),
                                     ("train_grpo.py", grpo, grpo_flags),
                                     ("eval.py", ev_good, eval_flags)):
        out += [(script, "flags", case, [*base_args, *case.split()], case.split()[0])
                for case in table]
    # folders and models: checked before any model loads
    sft8 = [*sft, "--batch-size", "8"]  # enough rows for a step: past the data checks
    for script, base_args in (("train_sft.py", sft8), ("train_grpo.py", grpo),
                              ("eval.py", ev_good)):
        out += [(script, "folders and models", name, [*base_args, flag, p(path)], expected)
                for name, flag, path, expected in (
                    ("out-dir is a file", "--out-dir", "afile", "cannot create or write"),
                    ("out-dir under a file", "--out-dir", "afile/run", "Not a directory"),
                    ("model without weights", "--model", "noweights", "no weight files"),
                    ("model of another architecture", "--model", "llama", "model_type 'llama'"),
                    ("model config not JSON", "--model", "badconfig", "unreadable config.json"))]
    below = ["--resume", "1", "--max-steps", "2"]
    out += [
        ("train_sft.py", "folders and models", "max-steps below the checkpoint",
         [*sft8, "--out-dir", p("ckpt_sft"), *below], "below the checkpoint's step 7"),
        ("train_grpo.py", "folders and models", "max-steps below the checkpoint",
         [*grpo, "--out-dir", p("ckpt_grpo"), *below], "below the checkpoint's step 7"),
        ("train_sft.py", "flags", "two val files",
         [*sft, "--val-data", p("sft_good.jsonl"), p("sft_good.jsonl")], "unrecognized arguments"),
        ("train_sft.py", "folders and models", "released tags, no spare embedding rows",
         [*sft, "--recipe", "released"], "no spare row"),
        ("train_grpo.py", "flags", "one val file twice",
         [*grpo, "--val-data", p("rl_good.jsonl"), p("rl_good.jsonl")], "cannot be told apart"),
    ]
    # files: images decoded in full, image paths from the data file's folder only, bad bytes and
    # deep nesting named by file and line
    for script, base_args, kind in (("train_sft.py", sft, "sft"), ("train_grpo.py", grpo, "rl"),
                                    ("eval.py", ev, "rl")):
        out += [(script, "files", name, [*base_args, "--data", p(f"{kind}_{data}.jsonl")],
                 f"{kind}_{data}.jsonl:{expected}")
                for name, data, expected in (("truncated JPEG", "cutjpg", "1: field 'images'"),
                                             ("non-UTF-8 byte", "latin1", "2: not UTF-8"),
                                             ("nested brackets", "nested", "2: JSON nested"))]
    for script, base_args in (("train_grpo.py", grpo), ("eval.py", ev)):
        out.append((script, "files", "image only in the working dir",
                    [*base_args, "--data", p("rl_cwdimage.jsonl")], "image not found: docs/"))
    out += [
        ("eval.py", "files", "non-UTF-8 benchmark file",
         [*ev, "--data", f"mathvista={p('mathvista_latin1.json')}"],
         "mathvista_latin1.json:1: not UTF-8"),
        ("eval.py", "files", "200k-character problem",
         [*ev, "--data", p("rl_long.jsonl"), "--max-prompt-length", "512"],
         "every prompt is longer"),
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
    if done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") \
            and expected in lines[0]:
        return "one line", done.stderr
    return "other", done.stderr


def run_all(base, tiny_dir, jobs=2):
    """[(script, class, case name, outcome, stderr)] for every case."""
    model = make_fixtures(base, tiny_dir)
    table = cases(base, model)
    with ThreadPoolExecutor(jobs) as pool:
        outcomes = list(pool.map(lambda c: run_case(c[0], c[3], c[4]), table))
    return [(script, klass, name, *outcome)
            for (script, klass, name, _, _), outcome in zip(table, outcomes)]


if __name__ == "__main__":
    import tempfile
    sys.path.insert(0, ROOT)
    from nanorevisual.toy import ensure_tiny_model as build_tiny
    with tempfile.TemporaryDirectory() as tmp:
        results = run_all(tmp, build_tiny(os.path.join(tmp, "tiny")))

    def tally(rows):
        return " | ".join(f"{k} {sum(r[3] == k for r in rows)}"
                          for k in ("one line", "traceback", "silent", "other"))

    for script in ("train_sft.py", "train_grpo.py", "eval.py"):
        rows = [r for r in results if r[0] == script]
        print(f"\n{script}: {len(rows)} cases | {tally(rows)}")
        for klass in CLASSES:
            some = [r for r in rows if r[1] == klass]
            print(f"  {klass:18s} {len(some):3d} | {tally(some)}")
    for script, klass, name, outcome, stderr in results:
        if outcome != "one line" or "-v" in sys.argv:
            last = (stderr.strip().splitlines() or [""])[-1][:100]
            print(f"{outcome:9s} {script:13s} {klass:18s} {name:30s} {last}")
