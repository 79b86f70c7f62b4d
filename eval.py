"""Evaluate a checkpoint on the ReVisual-R1 benchmarks (paper Table 2, §5.1) or any file in the
project's RL format, with the training prompt and answer checker (docs/paper_notes.md §7).

    python eval.py                        # tiny model on the toy mm_val + text_val files, greedy
    torchrun --nproc_per_node=8 eval.py --model runs/trl/final --out-dir runs/eval-trl \
        --data mathvista=data/mathvista/testmini.parquet data/math500/test.jsonl --compare paper

Writes predictions.jsonl (a line per benchmark, id and sample), results.json, results.md and
config.json into --out-dir, which one eval at a time owns (OUT_DIR/.lock). To resume, rerun the
same command: finished (benchmark, id, sample) triples are skipped, stored ones re-graded.
"""

import argparse
import glob
import json
import os
import re
import statistics

from tqdm import tqdm

from nanorevisual import checkpoint, dist, toy
from nanorevisual.benchmarks import (BENCHMARKS, PAPER_TABLE2, grade_item, load_benchmark,
                                     paper_metric)
from nanorevisual.common import UserError, check_flags, default_dtype, one_line_errors, set_seed
from nanorevisual.dist import print0
from nanorevisual.model import check_model_path, is_toy_model, load_model_and_processor, load_policy
from nanorevisual.processor import load_processor, vision_token_ids
from nanorevisual.prompts import (INSTRUCTION, RELEASED_SYSTEM_PROMPT, build_messages,
                                  filter_long_prompts)
from nanorevisual.rollout import generate_rollouts

# ------------------------------------------------------------------------------------------------
# CLI (parsed in the script section below, so tests can import the pure functions)
parser = argparse.ArgumentParser(description="Evaluate a checkpoint on ReVisual-R1 Table 2 "
                                 "benchmarks / JSONL files")
# Model
parser.add_argument("--model", default="tiny", help="HF folder or hub id; 'tiny': the tiny model")
parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                    help="auto: bf16 on CUDA, fp32 on CPU")
parser.add_argument("--min-pixels", type=int, default=None, help="min image pixels (real: 262144)")
parser.add_argument("--max-pixels", type=int, default=None, help="max image pixels (real: 1048576)")
# Data
parser.add_argument("--data", nargs="+", default=None,
                    help="NAME=PATH or PATH entries (default: toy mm_val + text_val)")
parser.add_argument("--instruction", type=int, default=1, help="1: append the paper's think/boxed "
                    "instruction to every problem (docs/paper_notes.md §6); 0: as written")
parser.add_argument("--limit", type=int, default=0, help="only the first N items per benchmark")
parser.add_argument("--max-prompt-length", type=int, default=None, help="drop (and count) items "
                    "with longer prompts (0: keep all; default 8192, tiny 0, as train_grpo.py)")
# Generation
parser.add_argument("--samples", type=int, default=1, help="k: samples per item (pass@1 over k)")
parser.add_argument("--meta-samples", type=int, default=1,
                    help="1: meta n_samples (AIME: 8) raises k if temperature > 0")
parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
parser.add_argument("--max-new-tokens", type=int, default=None, help="default: 32 tiny, 8192 real")
parser.add_argument("--batch-size", type=int, default=64, help="sequences per generate call")
parser.add_argument("--seed", type=int, default=0, help="sampling seed")
parser.add_argument("--deterministic", type=int, default=0, help="1: deterministic kernels only")
# Output
parser.add_argument("--out-dir", default="runs/eval", help="predictions, results, config go here")
parser.add_argument("--compare", default=None, help="'paper' or a results.json: print differences")
parser.add_argument("--recipe", choices=["paper", "released"], default="paper", help="released: "
                    "temperature 0.3, top-p 0.95, the instruction as the system message (RECIPE)")
RECIPE = {"paper": {}, "released": dict(temperature=0.3, top_p=0.95)}  # released eval/src/main.py

# flags that change what a prediction means: a resume must not mix them
GENERATION_KEYS = ("model", "temperature", "top_p", "max_new_tokens", "min_pixels", "max_pixels",
                   "instruction", "recipe")

# ------------------------------------------------------------------------------------------------
# pure helpers


def item_messages(item, recipe, instruction):
    """The chat of one item: the training prompt, or (released) the instruction without "step by
    step" as the system turn and the problem alone as the user turn."""
    if recipe == "released":
        return [{"role": "system", "content": RELEASED_SYSTEM_PROMPT},
                *build_messages(item["problem"], item["images"], "")]
    return build_messages(item["problem"], item["images"], instruction)


def parse_data_spec(spec):
    """'NAME=PATH' or 'PATH' -> (label, loader: a benchmark or 'jsonl', path). A NAME that is
    not a benchmark labels a file in the project's own format (checked when it is read)."""
    label, path = spec.split("=", 1) if "=" in spec and not os.path.exists(spec) else (None, spec)
    if label is None:  # innermost path part naming a benchmark ("MathVista/x.parquet"), else stem
        parts = [re.sub(r"[^a-z0-9]", "", p.lower())
                 for p in reversed(os.path.normpath(path).split(os.sep))]
        parts = [re.sub(r"aime20(2\d)", r"aime\1", p) for p in parts]  # aime_2024 / AIME2025
        hits = [b for part in parts for b in BENCHMARKS if b in part]
        label = hits[0] if hits else os.path.splitext(os.path.basename(path))[0]
    if label.lower() in BENCHMARKS:
        label = label.lower()
    return label, label if label in BENCHMARKS else "jsonl", path


def ordered_labels(labels, extra=()):
    """Paper Table 2 column order first, then the other labels in the order given."""
    labels = list(dict.fromkeys([*labels, *extra]))
    return [b for b in BENCHMARKS if b in labels] + [b for b in labels if b not in BENCHMARKS]


def natural_key(text):
    return [int(t) if i % 2 else t for i, t in enumerate(re.split(r"(\d+)", str(text)))]


def summarize(predictions, labels=(), metas=None, loaders=None):
    """Prediction dicts (benchmark, id, sample, correct) -> {label: {score, metric, accuracy, std,
    items, samples}, "average": {score, items, benchmarks}} in percent. `score` is Table 2's metric
    (benchmarks.paper_metric per sample index, averaged; needs metas {(label, id): meta} and loaders
    {label: benchmark}), else the accuracy; "average" is Table 2's unweighted "Avg" of scores."""
    metas, loaders = metas or {}, loaders or {}
    by_bench = {}
    for p in predictions:
        items = by_bench.setdefault(p["benchmark"], {})
        items.setdefault(p["id"], {})[p["sample"]] = float(p["correct"])
    results = {}
    for b in ordered_labels(labels, by_bench):
        if b not in by_bench:
            continue
        items = by_bench[b]
        sample_ids = sorted({j for s in items.values() for j in s})
        # accuracy of sample j over the items that have one; std over j: 0 for one sample
        per_sample = [statistics.mean(s[j] for s in items.values() if j in s) for j in sample_ids]
        accuracy = 100 * statistics.mean(statistics.mean(s.values()) for s in items.values())
        results[b] = {"accuracy": accuracy, "std": 100 * statistics.pstdev(per_sample),
                      "items": len(items), "samples": max(len(s) for s in items.values()),
                      "metric": "accuracy", "score": accuracy}
        paper = [paper_metric(loaders.get(b, b),
                              [(metas.get((b, i), {}), s[j]) for i, s in items.items() if j in s])
                 for j in sample_ids]
        if paper[0] is not None:
            results[b]["metric"] = paper[0][0]
            results[b]["score"] = 100 * statistics.mean(value for _, value in paper)
    scores = [r["score"] for r in results.values()]
    results["average"] = {"score": statistics.mean(scores) if scores else 0.0,
                          "items": sum(r["items"] for r in results.values()),
                          "benchmarks": len(scores)}
    return results


def markdown_table(results):
    lines = ["| benchmark | score % | metric | accuracy % | ± std | items | samples |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for b, r in results.items():
        if b != "average":
            lines.append(f"| {b} | {r['score']:.1f} | {r['metric']} | {r['accuracy']:.1f} | "
                         f"±{r['std']:.1f} | {r['items']} | {r['samples']} |")
    avg = results["average"]
    lines.append(f"| **average** | {avg['score']:.1f} | | | | {avg['items']} | |")
    return "\n".join(lines)


def compare_table(results, references):
    """Per-benchmark difference (points) of `results` vs each reference {name: {benchmark: %}};
    the last row compares the means over the benchmarks that ours and every reference have."""
    names = list(references)
    lines = ["| benchmark | ours | " + " | ".join(f"{n} | Δ" for n in names) + " |",
             "|---|---:|" + "---:|---:|" * len(names)]
    ours = {b: r["score"] for b, r in results.items() if b != "average"}  # Table 2's metric
    for b, acc in ours.items():
        cells = [f"{references[n][b]:.1f} | {acc - references[n][b]:+.1f}"
                 if b in references[n] else "- | -" for n in names]
        lines.append(f"| {b} | {acc:.1f} | " + " | ".join(cells) + " |")
    shared = [b for b in ours if all(b in references[n] for n in names)]
    if shared:
        mine = statistics.mean(ours[b] for b in shared)
        theirs = [statistics.mean(references[n][b] for b in shared) for n in names]
        lines.append(f"| **mean over {len(shared)} shared** | {mine:.1f} | "
                     + " | ".join(f"{t:.1f} | {mine - t:+.1f}" for t in theirs) + " |")
    return "\n".join(lines)


def load_references(compare):
    """--compare: 'paper' (Table 2's rows) or an earlier eval's results.json, else UserError."""
    if compare == "paper":
        rows = ("ReVisual-R1-7B", "Qwen2.5-VL-7B")
        return {name: {b: v for b, v in PAPER_TABLE2[name].items() if b in BENCHMARKS}
                for name in rows}
    try:
        with open(compare, encoding="utf-8") as f:
            other = json.load(f)
        scores = {b: r.get("score", r.get("accuracy")) for b, r in other.items()
                  if isinstance(r, dict) and b != "average"}
        return {compare: {b: v for b, v in scores.items() if isinstance(v, (int, float))}}
    except (OSError, ValueError, AttributeError, RecursionError) as e:  # missing, not JSON/dict
        raise UserError(f"--compare {compare}: expected 'paper' or the results.json of an earlier "
                        f"eval ({type(e).__name__})") from None


def prediction_key(p):
    return (p["benchmark"], str(p["id"]), int(p["sample"]))


def read_predictions(paths):
    """{(benchmark, id, sample): prediction} from every file; a line cut off by a crash is
    skipped, the first copy of a key wins."""
    done, bad = {}, 0
    for path in paths:
        with open(path) as f:
            for line in f:
                try:
                    p = json.loads(line)
                    done.setdefault(prediction_key(p), p)
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    bad += line.strip() != ""
    if bad:
        print0(f"skipped {bad} unreadable prediction lines (cut off by a crash)")
    return done


def regrade(done, records):
    """Grade every stored completion again (cheap), so a gold answer, option or grader changed
    since it was written leaves no stale score. Returns how many changed."""
    by_key = {(r["benchmark"], str(r["id"])): r for r in records}
    changed = 0
    for key, p in done.items():
        record = by_key.get(key[:2])
        if record is None:
            continue
        extracted, correct = grade_item(p["completion"], record)
        if (p.get("answer"), p.get("correct")) != (record["answer"], bool(correct)):
            changed += 1
        p.update(extracted=extracted, answer=record["answer"], correct=bool(correct))
    return changed


def prediction_files(out_dir):
    main = os.path.join(out_dir, "predictions.jsonl")
    ranks = sorted(glob.glob(os.path.join(out_dir, "predictions.rank*.jsonl")))
    return ([main] if os.path.exists(main) else []) + ranks


def open_append(path):
    """Append mode, starting on a fresh line if a crash left the last line unfinished."""
    with open(path, "ab+") as f:
        end = f.seek(0, os.SEEK_END)
        f.seek(max(end - 1, 0))
        if end and f.read(1) != b"\n":
            f.write(b"\n")
    return open(path, "a")


# ------------------------------------------------------------------------------------------------
if __name__ == "__main__":
    one_line_errors(parser)
    parser.set_defaults(**RECIPE[parser.parse_known_args()[0].recipe])  # explicit flags still win
    args = parser.parse_args()
    args.model = toy.ensure_tiny_model() if args.model == "tiny" else check_model_path(args.model)
    tiny = is_toy_model(args.model)
    if args.max_new_tokens is None:
        args.max_new_tokens = 32 if tiny else 8192
    if args.max_prompt_length is None:  # train_grpo.py's rule: released RL filter, none for tiny
        args.max_prompt_length = 0 if tiny else 8192
    if not tiny:  # released eval: image pixels in [262144, 1048576] (docs/paper_notes.md §7)
        args.min_pixels = args.min_pixels or 262144
        args.max_pixels = args.max_pixels or 1048576
    check_flags(args, temperature="[0, inf)")  # presets applied; temperature 0 is greedy here
    references = load_references(args.compare) if args.compare else None  # a typo fails now
    if not args.data:
        toy_dir = toy.ensure_toy_data()
        args.data = [os.path.join(toy_dir, f) for f in ("mm_val.jsonl", "text_val.jsonl")]
    specs = [parse_data_spec(s) for s in args.data]
    labels = [label for label, _, _ in specs]
    if len(set(labels)) != len(labels):
        raise UserError(f"two --data entries share a label: {labels}; name them with LABEL=PATH")
    user_config = vars(args).copy()

    # --------------------------------------------------------------------------------------------
    # Compute init
    ddp, rank, local_rank, world_size, device = dist.compute_init()
    master_process = rank == 0
    set_seed(args.seed, bool(args.deterministic))
    print0(json.dumps(user_config, indent=1))

    # --------------------------------------------------------------------------------------------
    # Data: records (prompts over --max-prompt-length dropped, counted), the out-dir, resume guard
    processor = None
    if args.max_prompt_length:  # counts what the model would see, image tokens included
        processor = load_processor(args.model, min_pixels=args.min_pixels,
                                   max_pixels=args.max_pixels)
    records, dropped = [], {}
    instruction = INSTRUCTION if args.instruction else ""
    for spec, (label, name, path) in zip(args.data, specs):
        try:
            recs = load_benchmark(name, path, limit=args.limit or None)
        except ValueError as e:  # one line naming the file, row and field
            hint = ""
            if name == "jsonl" and "=" in spec and "field" in str(e):
                hint = (f" ('{label}' is not one of {', '.join(BENCHMARKS)}: a custom label "
                        "reads the project's format: problem, answer, images)")
            raise UserError(f"{e}{hint}") from None
        if not recs:
            raise UserError(f"--data {label}={path}: no items in the file")
        for r in recs:
            r["benchmark"] = label  # the --data label names the results row
            r["messages"] = item_messages(r, args.recipe, instruction)
        if processor is not None:
            recs, dropped[label] = filter_long_prompts(processor, recs, args.max_prompt_length)
            if not recs:
                raise UserError(f"--data {label}={path}: every prompt is longer than "
                                f"--max-prompt-length {args.max_prompt_length}")
        records += recs
        over = f"; dropped {dropped[label]} over --max-prompt-length" if dropped.get(label) else ""
        print0(f"{label}: {len(recs)} items from {path} ({name} loader){over}")
    checkpoint.claim_out_dir(args.out_dir)  # a second eval into this folder stops here
    config_path = os.path.join(args.out_dir, "config.json")
    if prediction_files(args.out_dir) and os.path.exists(config_path):
        with open(config_path) as f:
            old = json.load(f)
        changed = {k: (old.get(k), user_config[k]) for k in GENERATION_KEYS
                   if old.get(k) != user_config[k]}
        if changed:
            raise UserError(f"{args.out_dir} holds predictions made with other settings {changed} "
                            "(old, new): pass a new --out-dir or delete it")

    def num_samples(r):  # AIME's meta n_samples applies when sampling (docs/paper_notes.md §7)
        sampled = args.meta_samples and args.temperature > 0
        n = (r.get("meta") or {}).get("n_samples") if sampled else None
        return max(args.samples, int(n or 1))

    wanted = [(r, j) for r in records for j in range(num_samples(r))]  # (item, sample), file order
    unit_index = {(r["benchmark"], r["id"], j): i for i, (r, j) in enumerate(wanted)}
    done = read_predictions(prediction_files(args.out_dir))
    if done:
        print0(f"re-graded the {len(done)} stored predictions: {regrade(done, records)} changed")
    dist.barrier()  # every rank has read the files before anyone appends to them
    if master_process:
        with open(config_path, "w") as f:
            json.dump(user_config, f, indent=1)
    pending_keys = [k for k in unit_index if k not in done]
    mine = {(r["benchmark"], r["id"]) for r in records[rank::world_size]}  # this rank's items
    pending = [(r, j) for r, j in wanted
               if (r["benchmark"], r["id"], j) not in done and (r["benchmark"], r["id"]) in mine]
    print0(f"resume: {len(unit_index) - len(pending_keys)} of {len(unit_index)} (item, sample) "
           f"pairs already in {args.out_dir}; generating {len(pending_keys)} on {world_size} "
           "rank(s)")

    # --------------------------------------------------------------------------------------------
    # Model (only if there is anything to generate) and generation
    new = []
    if pending_keys:
        if ddp:  # sharded: rank 0 reads the weights (FSDP2 casts to bf16 itself on CUDA)
            model, processor = load_policy(args.model, device, ddp, min_pixels=args.min_pixels,
                                           max_pixels=args.max_pixels)
        else:
            model, processor = load_model_and_processor(
                args.model, dtype=default_dtype(device, args.dtype), device=device,
                min_pixels=args.min_pixels, max_pixels=args.max_pixels)
        model.eval()
        suppress_ids = vision_token_ids(processor)
        # torchrun: a file per rank, merged at the end (multi-node resume needs a shared --out-dir)
        out_name = f"predictions.rank{rank}.jsonl" if ddp else "predictions.jsonl"
        pbar = tqdm(total=len(pending), desc="eval", unit="seq", disable=not master_process)
        with open_append(os.path.join(args.out_dir, out_name)) as f, dist.gathered_params(model):
            for start in range(0, len(pending), args.batch_size):
                batch = pending[start:start + args.batch_size]
                messages = [r["messages"] for r, _ in batch]
                first = unit_index[(batch[0][0]["benchmark"], batch[0][0]["id"], batch[0][1])]
                # seeds follow the batch layout: a resumed sampled run draws other (equally valid)
                # samples than an uninterrupted one
                outs = generate_rollouts(
                    model, processor, messages, group_size=1, max_new_tokens=args.max_new_tokens,
                    temperature=args.temperature, top_p=args.top_p,
                    micro_batch_size=args.batch_size, suppress_ids=suppress_ids,
                    seed=args.seed * 1_000_003 + first, synced_gpus=False if ddp else None)
                for (r, j), o in zip(batch, outs):
                    extracted, correct = grade_item(o["text"], r)
                    new.append({"benchmark": r["benchmark"], "id": r["id"], "sample": j,
                                "completion": o["text"], "extracted": extracted,
                                "answer": r["answer"], "correct": bool(correct),
                                "num_tokens": o["num_tokens"], "truncated": o["truncated"]})
                    f.write(json.dumps(new[-1]) + "\n")
                f.flush()  # a crash after this line loses nothing of this batch
                pbar.update(len(batch))
        pbar.close()

    # --------------------------------------------------------------------------------------------
    # Gather, merge, summarize (rank 0)
    gathered = dist.all_gather_objects(new)
    if master_process:
        merged = dict(done)
        for p in (p for rank_new in gathered for p in rank_new):
            merged.setdefault(prediction_key(p), p)
        missing = [k for k in unit_index if k not in merged]
        assert not missing, f"{len(missing)} (benchmark, id, sample) without a prediction, " \
                            f"e.g. {missing[:3]}"
        order = {b: i for i, b in enumerate(ordered_labels(labels, sorted({k[0] for k in merged})))}
        keys = sorted(merged, key=lambda k: (order[k[0]], natural_key(k[1]), k[2]))
        final_path = os.path.join(args.out_dir, "predictions.jsonl")
        with open(final_path + ".tmp", "w") as f:
            f.writelines(json.dumps(merged[k]) + "\n" for k in keys)
        os.replace(final_path + ".tmp", final_path)  # atomic: a crash leaves resumable old files
        for path in glob.glob(os.path.join(args.out_dir, "predictions.rank*.jsonl")):
            os.remove(path)
        metas = {(r["benchmark"], r["id"]): r.get("meta") or {} for r in records}
        loaders = {label: name for label, name, _ in specs}
        results = summarize([merged[k] for k in unit_index], labels, metas, loaders)
        for label, n in dropped.items():  # over --max-prompt-length: not scored, counted here
            results[label]["dropped"] = n
        with open(os.path.join(args.out_dir, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        table = markdown_table(results)
        header = (f"model `{args.model}` | temperature {args.temperature} | top_p {args.top_p} | "
                  f"max_new_tokens {args.max_new_tokens} | samples {args.samples}")
        with open(os.path.join(args.out_dir, "results.md"), "w") as f:
            f.write(header + "\n\n" + table + "\n")
        truncated = sum(merged[k]["truncated"] for k in unit_index)
        print(f"\n{header}\n\n{table}\n\n{truncated} of {len(unit_index)} completions hit "
              f"max_new_tokens; {sum(dropped.values())} items dropped as longer than "
              f"--max-prompt-length (not scored); wrote {args.out_dir}/predictions.jsonl, "
              "results.json, results.md", flush=True)
        if args.compare:
            print(f"\ndifference vs {args.compare} (accuracy points):\n\n"
                  + compare_table(results, references), flush=True)
    dist.barrier()
    dist.compute_cleanup()
