"""Benchmark loaders and graders for the ten columns of ReVisual-R1 Table 2 (how they differ from
the released eval: docs/paper_notes.md §7; downloads: README.md "Benchmarks"). One adapter per
benchmark maps each row of its release file onto an eval record, which eval.py consumes:

    {"id": str,                  # unique within the benchmark, e.g. "mathvista-1"
     "benchmark": str,           # one of BENCHMARKS ("jsonl" for the project's own files)
     "problem": str,             # question, exactly len(images) "<image>" markers, "A. ..." options
     "images": list,             # PIL.Image.Image (decoded bytes) or absolute file paths (str)
     "answer": str,              # gold: the letter(s) for multiple choice, else free form
     "kind": "choice" | "free",
     "options": dict[str, str],  # letter -> text ({} for free form, or choices drawn in the image)
     "meta": dict}               # subject / level / precision / answer_type / ...

A question without markers gets them prepended ("<image>\\n" + text); "<image1>" becomes "<image>".
Rows in the project's own format (`problem` and `answer`, none of the benchmark's question fields)
pass through as written. A real record (MathVista testmini pid 1, question shortened):

    {"id": "mathvista-1", "benchmark": "mathvista",
     "problem": "<image>\\nWhen a spring does work on an object, ... by what distance $d$ is the "
                "spring compressed?",
     "images": ["/data/mathvista/images/1.jpg"], "answer": "1.2", "kind": "free", "options": {},
     "meta": {"question_type": "free_form", "answer_type": "float", "precision": 1, ...}}
"""
import hashlib
import math
import os
import random
import re

from nanorevisual.files import READABLE, check_row, load_image, read_records
from nanorevisual.grader import choice_letter, extract_boxed, grade, plain_text

BENCHMARKS = ["mathverse", "mathvision", "mathvista", "dynamath", "wemath", "logicvista",
              "aime24", "aime25", "gpqa", "math500"]

# paper Table 2 (accuracy %, Avg over all ten columns); AIME is the mean over 8 runs (its caption)
PAPER_TABLE2 = {
    "ReVisual-R1-7B": {"mathverse": 53.6, "mathvision": 48.8, "mathvista": 73.1, "dynamath": 27.5,
                       "wemath": 42.0, "logicvista": 52.3, "aime24": 53.3, "aime25": 43.3,
                       "gpqa": 47.5, "math500": 89.2, "avg": 53.1},
    "Qwen2.5-VL-7B": {"mathverse": 38.7, "mathvision": 26.6, "mathvista": 69.1, "dynamath": 12.6,
                      "wemath": 24.5, "logicvista": 35.6, "aime24": 10.0, "aime25": 6.7,
                      "gpqa": 32.8, "math500": 67.2, "avg": 32.4},
}

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
AIME_SAMPLES = 8  # paper Table 2 caption: AIME averaged over eight independent runs
DYNAMATH_TOLERANCE = 1e-3  # DynaMath's float check: |pred - gold| <= 0.001
_MISSING = object()

# -----------------------------------------------------------------------------
# small helpers


def _field(row, *names, default=_MISSING):
    """First of `names` with a non-empty value; else `default`, else ValueError naming the field."""
    for name in names:
        value = row.get(name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if isinstance(value, str) and not value.strip():
            continue
        return value
    if default is not _MISSING:
        return default
    raise ValueError(f"field {names[0]!r}: missing")


def _images(row, base_dir, names, required=True):
    """Images from the first of `names` that holds one (a single image or a list of them)."""
    for name in names:
        value = row.get(name)
        if value is None or (isinstance(value, (str, list, dict)) and not value):
            continue
        if isinstance(value, dict) and not value.get("bytes") and not value.get("path"):
            continue  # an empty HF Image struct: fall through to the path column
        values = value if isinstance(value, list) else [value]
        folder = os.path.join(base_dir, "images") if name == "imagename" else base_dir  # LogicVista
        return [load_image(v, folder, name) for v in values]
    if required:
        raise ValueError(f"field {names[-1]!r}: missing")
    return []


def _with_image_markers(text, num_images):
    """Exactly num_images "<image>" markers ("<imageK>" -> "<image>"); on a mismatch, in front."""
    text = re.sub(r"<image\s*\d+>", "<image>", text)
    if text.count("<image>") == num_images:
        return text
    text = re.sub(r"[ \t]*<image>[ \t]*", " ", text).strip()
    return "<image>" * num_images + "\n" + text if num_images else text


def _options_text(options):
    return "\n".join(f"{letter}. {text}" for letter, text in options.items())


def _add_options(question, options):
    """Append "A. ..." lines, unless the options are only their own letters (drawn in the image)."""
    if not options or all(text.strip() == letter for letter, text in options.items()):
        return question
    return question.rstrip() + "\n" + _options_text(options)


_OPTION_LINE = re.compile(r"^\s*\(?([A-H])\s*[.:)．：]\s*(.+?)\s*$")


def _parse_options(text):
    """Options written into a question ("A:40°", "(B) 12", "C. x", one per line, or inline
    "A) 10 B) 12") -> {"A": "40°", ...}; {} if none."""
    options = {}
    for line in text.splitlines():
        m = _OPTION_LINE.match(line)
        if m and m.group(1) == LETTERS[len(options)]:
            options[m.group(1)] = m.group(2)
        elif m and m.group(1) == "A":  # a second option block restarts the list
            options = {"A": m.group(2)}
    if len(options) < 2:  # fall back to one line of inline options: "A) 10 B) 12 C) 14"
        parts = re.split(r"(?:^|\s)\(?([A-H])\)\s*", text)
        labels, texts = parts[1::2], [t.strip() for t in parts[2::2]]
        options = dict(zip(labels, texts)) if "".join(labels) == LETTERS[:len(labels)] else {}
    return options if len(options) >= 2 else {}


def _choice_label(text):
    """Choice label of a gold / predicted answer, or None: "B", "(B)" -> "B"; "A, C", "A and C",
    "AC" -> "AC"; "3" -> "3"; "40°" -> None."""
    parts = [p for p in re.split(r"[\s,;/&()\[\].:]+|\band\b", str(text).strip(), flags=re.I) if p]
    single_letters = parts and all(re.fullmatch(r"[A-Za-z]", p) for p in parts)
    if single_letters and (len(parts) == 1 or all(p.isupper() for p in parts)):
        return "".join(sorted({p.upper() for p in parts}))
    if (len(parts) == 1 and re.fullmatch(r"[A-Z]{2,8}", parts[0])
            and len(set(parts[0])) == len(parts[0])):
        return "".join(sorted(parts[0]))
    if len(parts) == 1 and re.fullmatch(r"\d{1,2}", parts[0]):
        return parts[0]
    return None


def _gold_letter(answer, options, field="answer"):
    """Gold label of a choice question: a letter as given, or the letter whose option text equals
    the answer."""
    label = _choice_label(answer)
    if label is not None and (not options or set(label) <= set(options)):
        return label
    hits = [k for k, v in options.items() if _normalize_text(v) == _normalize_text(answer)]
    if len(hits) == 1:
        return hits[0]
    if label is not None:
        return label  # a letter the parsed options miss (drawn in the image): callers drop them
    raise ValueError(f"field {field!r}: {answer!r} is neither an option letter nor one option's "
                     "text")


def _source_id(row, names, name, index):
    value = _field(row, *names, default=None)
    return f"{name}-{value if value is not None else index}"


def _record(rid, benchmark, problem, images, answer, kind, options, meta):
    return {"id": rid, "benchmark": benchmark, "problem": problem, "images": images,
            "answer": str(answer).strip(), "kind": kind, "options": options, "meta": meta}


# -----------------------------------------------------------------------------
# adapters: one per benchmark, (row, index, base_dir) -> record


def adapt_mathverse(row, index, base_dir):
    """MathVerse testmini row -> record. AI4Math/MathVerse (3940 rows = 788 problems x 5 versions):
    testmini.json beside the images_version_* folders, or the parquet export; fields confirmed from
    released rows. Whether `image` in testmini.json includes the images_version_* folder was not
    checked (resolved as given). Options come from the "Choices:\\nA:40°" lines of `question`."""
    question = str(_field(row, "query_cot", "question"))
    images = _images(row, base_dir, ("image",), required=False)
    qtype = str(_field(row, "question_type", default="free-form"))
    kind = "choice" if qtype.replace("_", "-").startswith("multi") else "free"
    options = _parse_options(str(row.get("question") or question)) if kind == "choice" else {}
    answer = str(_field(row, "answer"))
    if kind == "choice":
        answer = _gold_letter(answer, options)
        if not set(answer) <= set(options):
            options = {}  # the parse missed options (or they are in the image): offer none
    metadata = row.get("metadata") or {}
    meta = {"problem_version": row.get("problem_version"),
            "problem_index": row.get("problem_index"), "question_type": qtype,
            **{k: metadata.get(k) for k in ("subject", "subfield", "source")}}
    return _record(_source_id(row, ("sample_index", "id"), "mathverse", index), "mathverse",
                   _with_image_markers(question, len(images)), images, answer, kind, options, meta)


def adapt_mathvision(row, index, base_dir):
    """MathVision row -> record. MathLLMs/MathVision, split test (3040 rows): data/test-*.parquet,
    or test.jsonl + images/; fields confirmed from the dataset card. Options that are just "A".."E"
    (drawn in the image) are not written out; "<image1>" markers (not on the card) -> "<image>"."""
    question = str(_field(row, "question"))
    images = _images(row, base_dir, ("decoded_image", "image"))
    options = {LETTERS[i]: str(text).strip() for i, text in enumerate(row.get("options") or [])}
    kind = "choice" if options else "free"
    answer = str(_field(row, "answer"))
    if kind == "choice":
        answer = _gold_letter(answer, options)
    problem = _add_options(_with_image_markers(question, len(images)), options)
    meta = {"level": row.get("level"), "subject": row.get("subject")}
    return _record(_source_id(row, ("id",), "mathvision", index), "mathvision", problem, images,
                   answer, kind, options, meta)


def adapt_mathvista(row, index, base_dir):
    """MathVista testmini row -> record. AI4Math/MathVista (1000 rows): data/testmini-*.parquet, or
    annot_testmini.json (a dict keyed by pid) + images/; fields confirmed from the dataset card. The
    gold letter is the index of `answer` in `choices`; `precision` (decimals of a float answer) goes
    to meta as int, which `grade_item` rounds to; " (Unit: cm)" is appended when `unit` is set."""
    question = str(_field(row, "question"))
    images = _images(row, base_dir, ("decoded_image", "image"))
    unit = row.get("unit") or None
    choices = [str(c) for c in (row.get("choices") or [])]
    qtype = str(_field(row, "question_type", default="multi_choice" if choices else "free_form"))
    answer = str(_field(row, "answer")).strip()
    options, kind = {}, "free"
    if qtype == "multi_choice":
        if not choices:
            raise ValueError("field 'choices': missing")
        options, kind = {LETTERS[i]: c.strip() for i, c in enumerate(choices)}, "choice"
        if answer not in options.values():
            raise ValueError(f"field 'answer': {answer!r} is not one of 'choices'")
        answer = next(k for k, v in options.items() if v == answer)
    elif unit:
        question = f"{question.rstrip()} (Unit: {unit})"
    precision = row.get("precision")
    if precision is not None and not (isinstance(precision, float) and math.isnan(precision)):
        precision = int(float(precision))  # decimal places, stored as float64 in the parquet export
    else:
        precision = None
    metadata = row.get("metadata") or {}
    meta = {"question_type": qtype, "answer_type": row.get("answer_type"), "precision": precision,
            "unit": unit, **{k: metadata.get(k)
                             for k in ("source", "task", "category", "context", "grade", "skills")}}
    problem = _add_options(_with_image_markers(question, len(images)), options)
    return _record(_source_id(row, ("pid", "_key"), "mathvista", index), "mathvista", problem,
                   images, answer, kind, options, meta)


def adapt_dynamath(row, index, base_dir):
    """DynaMath_Sample row -> record "dynamath-<seed>-v<variant>". DynaMath/DynaMath_Sample, splits
    sample_variant1..10 of 501 seed questions; fields confirmed from the card. "A: ..", "(A) .."
    lines of the question become options (how DynaMath writes its choices was not checked); float
    answers get meta["tolerance"] = 1e-3, DynaMath's check."""
    question = str(_field(row, "question"))
    images = _images(row, base_dir, ("decoded_image", "image"))
    answer_type = str(_field(row, "answer_type", default="free form"))
    kind = "choice" if answer_type.lower().startswith("multiple") else "free"
    answer = str(_field(row, "ground_truth", "answer"))
    options = {}
    if kind == "choice":
        options = _parse_options(question)
        answer = _gold_letter(answer, options, field="ground_truth")
        if not set(answer) <= set(options):
            options = {}
    seed_id, variant = _field(row, "id", default=index), row.get("variant")
    meta = {"answer_type": answer_type, "subject": row.get("subject"),
            "knowledge_level": row.get("knowledge_level"), "seed_id": str(seed_id),
            "variant": variant}
    if answer_type == "float":
        meta["tolerance"] = DYNAMATH_TOLERANCE
    rid = f"dynamath-{seed_id}" + (f"-v{variant}" if variant is not None else "")
    return _record(rid, "dynamath", _with_image_markers(question, len(images)), images, answer,
                   kind, options, meta)


def adapt_wemath(row, index, base_dir):
    """We-Math testmini row -> record, always multiple choice. We-Math/We-Math: testmini.json (+ its
    images) or a parquet export; fields confirmed from the official result template. `option`
    ("A. 200.96;B. 3215.36;...") is split on ";" (absent: parsed from the question); `key`
    ("2steps_1", "3steps_multi") feeds the step-wise scores."""
    question = str(_field(row, "question"))
    images = _images(row, base_dir, ("decoded_image", "image", "image_path"))
    raw = row.get("option") or row.get("options") or ""
    if isinstance(raw, list):
        options = {LETTERS[i]: str(t).strip() for i, t in enumerate(raw)}
    else:
        options = {}
        for part in str(raw).split(";"):
            m = re.match(r"^\s*([A-Z])\s*[.:、：]\s*(.*?)\s*$", part, flags=re.S)
            if m:
                options[m.group(1)] = m.group(2)
    problem = _with_image_markers(question, len(images))
    if options:
        problem = _add_options(problem, options)
    else:
        options = _parse_options(question)
        if raw and not options:  # keep unparsed option text visible rather than dropping it
            problem = problem.rstrip() + "\n" + str(raw).strip()
    answer = _gold_letter(str(_field(row, "answer")), options)
    meta = {"ID": row.get("ID"), "key": row.get("key"),
            "knowledge_concept": row.get("knowledge concept"), "split": row.get("split"),
            "question_number": row.get("question number")}
    return _record(_source_id(row, ("question number", "ID", "id"), "wemath", index), "wemath",
                   problem, images, answer, "choice", options, meta)


def adapt_logicvista(row, index, base_dir):
    """LogicVista row -> record, always multiple choice with options drawn in the image. github
    Yijia-Xiao/LogicVista data/dataset.json (448 rows, a dict keyed "v1_0".., `imagename` a file in
    data/images/), confirmed from the repo; for the unchecked lscpku/LogicVista HF copy, image,
    image_path, id and question_id are accepted. "A, C" -> "AC"; numbered options stay digits."""
    question = str(_field(row, "question"))
    images = _images(row, base_dir, ("decoded_image", "image", "image_path", "imagename"))
    options = _parse_options(question)
    raw_answer = str(_field(row, "answer"))
    answer = _choice_label(raw_answer)
    if answer is None:
        raise ValueError(f"field 'answer': {raw_answer!r} is not an option label")
    if not set(answer) <= set(options):
        options = {}
    meta = {"skill": row.get("skill"), "capability": row.get("capability"),
            "answer_raw": raw_answer}
    rid = _source_id(row, ("_key", "id", "question_id", "index"), "logicvista", index)
    return _record(rid, "logicvista", _with_image_markers(question, len(images)), images, answer,
                   "choice", options, meta)


def _adapt_aime(row, index, name):
    problem = str(_field(row, "problem", "question"))
    raw = str(_field(row, "answer")).strip()
    if not re.fullmatch(r"\d+", raw):
        raise ValueError(f"field 'answer': AIME answers are integers, got {raw!r}")
    meta = {"year": row.get("year"), "url": row.get("url"), "n_samples": AIME_SAMPLES}
    return _record(_source_id(row, ("id",), name, index), name, problem, [], str(int(raw)), "free",
                   {}, meta)


def adapt_aime24(row, index, base_dir):
    """AIME 2024 row -> record. HuggingFaceH4/aime_2024 (30 rows: id, problem, solution, answer,
    url, year; confirmed). "033" -> "33"; meta["n_samples"] = 8 (Table 2 averages over 8 runs)."""
    return _adapt_aime(row, index, "aime24")


def adapt_aime25(row, index, base_dir):
    """AIME 2025 row -> record, as `adapt_aime24`. opencompass/AIME2025: aime2025-I.jsonl and
    -II.jsonl concatenated so ids stay unique (fields question / answer not confirmed from the
    card); yentinglin/aime_2025 style rows (problem, answer, id) too; no id: "aime25-<index>"."""
    return _adapt_aime(row, index, "aime25")


def _row_seed(text, seed=0):
    return int.from_bytes(hashlib.sha256(f"{seed}:{text}".encode()).digest()[:8], "big")


def adapt_gpqa(row, index, base_dir):
    """GPQA row -> record. Idavidrein/gpqa (gated), gpqa_diamond.csv (198 rows; columns confirmed
    from the card). Correct Answer and Incorrect Answer 1..3 become options A..D in an order seeded
    by the question, so the same question always gets the same gold letter."""
    question = str(_field(row, "Question")).strip()
    answers = [str(_field(row, "Correct Answer")).strip()]
    answers += [str(_field(row, f"Incorrect Answer {i}")).strip() for i in (1, 2, 3)]
    order = random.Random(_row_seed(question)).sample(range(4), 4)  # order[j]: answer at letter j
    options = {LETTERS[j]: answers[k] for j, k in enumerate(order)}
    answer = LETTERS[order.index(0)]
    meta = {"domain": row.get("High-level domain"), "subdomain": row.get("Subdomain"),
            "record_id": row.get("Record ID")}
    return _record(_source_id(row, ("Record ID",), "gpqa", index), "gpqa",
                   _add_options(question, options), [], answer, "choice", options, meta)


def adapt_math500(row, index, base_dir):
    """MATH-500 row -> free-form record. HuggingFaceH4/MATH-500 test.jsonl (problem, solution,
    answer, subject, level, unique_id; confirmed)."""
    meta = {"subject": row.get("subject"), "level": row.get("level"),
            "unique_id": row.get("unique_id")}
    return _record(_source_id(row, ("unique_id", "id"), "math500", index), "math500",
                   str(_field(row, "problem")), [], _field(row, "answer"), "free", {}, meta)


def adapt_jsonl(row, index, base_dir, benchmark="jsonl"):
    """The project's RL/eval row -> record, mapped straight through: id (default
    "<benchmark>-<row index>"), problem, answer, images (0 or len(images) "<image>" markers), kind
    (default "choice" if options else "free"), options (default {}), meta (default {})."""
    problem, answer = _field(row, "problem"), _field(row, "answer")
    if not isinstance(problem, str):
        raise ValueError(f"field 'problem': must be a string, got {type(problem).__name__}")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise ValueError(f"field 'answer': must be a string or a number, "
                         f"got {type(answer).__name__}")
    answer = str(answer).strip()
    images = row.get("images") or []
    if not isinstance(images, list):
        raise ValueError(f"field 'images': must be a list of paths or images, "
                         f"got {type(images).__name__}")
    images = [load_image(v, base_dir, "images") for v in images]
    if problem.count("<image>") not in (0, len(images)):
        raise ValueError(f"field 'images': {len(images)} images for {problem.count('<image>')} "
                         "<image> markers")
    options = {str(k): str(v) for k, v in (row.get("options") or {}).items()}
    kind = row.get("kind") or ("choice" if options else "free")
    if kind not in ("choice", "free"):
        raise ValueError(f"field 'kind': expected 'choice' or 'free', got {kind!r}")
    rid = str(row["id"]) if row.get("id") not in (None, "") else f"{benchmark}-{index}"
    return _record(rid, str(row.get("benchmark") or benchmark), problem, images, answer, kind,
                   options, dict(row.get("meta") or {}))


ADAPTERS = {"mathverse": adapt_mathverse, "mathvision": adapt_mathvision,
            "mathvista": adapt_mathvista, "dynamath": adapt_dynamath, "wemath": adapt_wemath,
            "logicvista": adapt_logicvista, "aime24": adapt_aime24, "aime25": adapt_aime25,
            "gpqa": adapt_gpqa, "math500": adapt_math500}

# the benchmark's own question fields: a row with problem/answer but none of these is ours
_SOURCE_FIELDS = {"mathverse": ("query_cot", "question"), "mathvision": ("question",),
                  "mathvista": ("question",), "dynamath": ("question",), "wemath": ("question",),
                  "logicvista": ("question",), "aime24": ("problem", "question"),
                  "aime25": ("problem", "question"), "gpqa": ("Question",), "math500": ("problem",)}

# -----------------------------------------------------------------------------
# reading files


def variant_files(folder):
    """[(k, path)] of every sample_variant<k> file under a DynaMath release folder (the HF export
    keeps one parquet per variant in data/), ordered by k."""
    found = []
    for root, _, files in os.walk(folder):
        for f in files:
            m = re.search(r"variant_?(\d+)", f)
            if m and f.lower().endswith(READABLE):
                found.append((int(m.group(1)), os.path.join(root, f)))
    return sorted(found)


def load_benchmark(name, path, *, limit=None):
    """A benchmark's release file (DynaMath: also its folder) as eval records. Bad input raises a
    one-line ValueError naming the file, the row or line (from 1) and the field. `limit` counts rows
    per file (so for a DynaMath folder, seed questions: every variant of the kept seeds stays)."""
    if os.path.isdir(path):
        if name != "dynamath":
            raise ValueError(f"{path}: is a folder; {name} reads one file "
                             "(see nanorevisual/benchmarks.py)")
        files = variant_files(path)
        if not files:
            raise ValueError(f"{path}: no sample_variant<k> file ({'/'.join(READABLE)}) in this "
                             "DynaMath folder")
        return [r for _, f in files for r in load_benchmark(name, f, limit=limit)]
    if name != "jsonl" and name not in ADAPTERS:
        raise ValueError(f"unknown benchmark {name!r}: expected one of {BENCHMARKS} or 'jsonl'")
    fname, base_dir = os.path.basename(path), os.path.dirname(os.path.abspath(path))
    rows = read_records(path)[:limit]
    file_variant = re.search(r"(?:variant|sample)_?(\d+)", fname) if name == "dynamath" else None
    records, seen, seed_counts = [], {}, {}
    for index, (where, row) in enumerate(rows):
        try:
            check_row(row)
            if name == "jsonl" or ("problem" in row and "answer" in row
                                   and not any(f in row for f in _SOURCE_FIELDS[name])):
                record = adapt_jsonl(row, index, base_dir, benchmark=name)
            else:
                if name == "dynamath" and row.get("variant") is None:
                    # NOTE: the HF export has one split per variant and no variant column
                    seed = str(row.get("id"))
                    seed_counts[seed] = seed_counts.get(seed, 0) + 1
                    variant = int(file_variant.group(1)) if file_variant else seed_counts[seed]
                    row = {**row, "variant": variant}
                record = ADAPTERS[name](row, index, base_dir)
            if record["id"] in seen:
                raise ValueError(f"field 'id': duplicate id {record['id']!r} "
                                 f"(first at row {seen[record['id']]})")
            seen[record["id"]] = where
        except (ValueError, TypeError, AttributeError) as e:  # e.g. a string where a list belongs
            message = " ".join(str(e).split())  # one line
            raise ValueError(f"{path}:{where}: {message}") from e
        records.append(record)
    return records


# -----------------------------------------------------------------------------
# grading


def _normalize_text(text):
    """Option-text comparison key: LaTeX wrappers, spaces removed, degrees unified, lower case."""
    text = plain_text(text).lower()
    for degree in ("^{\\circ}", "^\\circ", "\\circ", "\\degree"):
        text = text.replace(degree, "°")
    text = text.replace("\\%", "%").replace("\\left", "").replace("\\right", "")
    return re.sub(r"\s+", "", text).rstrip(".")


def extract_choice(completion, options):
    """The predicted option label from the last \\boxed{} of a completion, or None: a letter
    ("B", "(B)", "Option B", "\\text{B}", "B: text"), the text of exactly one option (normalised;
    ambiguous -> None), or several letters ("A, C" -> "AC", LogicVista). options {}: any letter."""
    boxed = extract_boxed(completion)
    if boxed is None:
        return None
    text = plain_text(boxed)
    if not text:
        return None
    letter = choice_letter(text)
    if letter is not None and (not options or letter in options):
        return letter
    hits = [k for k, v in options.items() if _normalize_text(v) == _normalize_text(text)]
    if hits:
        return hits[0] if len(hits) == 1 else None
    label = _choice_label(text)
    if label is not None and (label.isalpha() or not options or all(k.isdigit() for k in options)):
        return label
    return letter


def _to_float(text):
    text = plain_text(text)
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text):
        text = text.replace(",", "")
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# -----------------------------------------------------------------------------
# the paper's metrics for DynaMath and WeMath (Table 2 columns)


def dynamath_worst_case(items):
    """DynaMath's worst-case accuracy, a fraction: the share of seed questions answered right in
    every variant. items: [(record meta, correct)] for one sample index."""
    by_seed = {}
    for meta, correct in items:
        by_seed.setdefault(meta["seed_id"], []).append(correct)
    return sum(all(v) for v in by_seed.values()) / max(len(by_seed), 1)


WEMATH_STEPS = (2, 3)


def wemath_scores(items):
    """We-Math's four-dimensional scores (its evaluation/four_dimensional_metrics.py) from items
    [(meta with ID and key "2steps_1", "2steps_multi", ..., correct)] of one sample index ->
    {"strict", "loose", "IK", "IG", "CM_strict", "CM_loose", "RM_strict", "RM_loose", "problems"}.
    score = (n - 0.5 IG - RM - IK) / n over n complete composite problems (525 in testmini)."""
    parts = {}
    for meta, correct in items:
        key = str(meta.get("key") or "")
        m = re.fullmatch(r"(\d)steps_(\d|multi)", key)
        if m and int(m.group(1)) in WEMATH_STEPS:
            parts.setdefault((int(m.group(1)), str(meta.get("ID"))), {})[m.group(2)] = bool(correct)
    counts = dict.fromkeys(("IK", "IG", "CM_strict", "CM_loose", "RM_strict", "RM_loose"), 0)
    n = 0
    for (steps, _), got in parts.items():
        if set(got) != {str(i) for i in range(1, steps + 1)} | {"multi"}:
            continue  # incomplete (e.g. --limit): the official script drops it in its merge too
        n += 1
        singles = [got[str(i)] for i in range(1, steps + 1)]
        if not got["multi"]:  # composite wrong: every part right (IG) or some part wrong (IK)
            counts["IG" if all(singles) else "IK"] += 1
        else:  # composite right: CM/RM strict by every part right, loose by at least one
            counts["CM_strict" if all(singles) else "RM_strict"] += 1
            counts["RM_loose" if not any(singles) else "CM_loose"] += 1
    base = n - 0.5 * counts["IG"] - counts["IK"]
    return {"strict": (base - counts["RM_strict"]) / n if n else 0.0,
            "loose": (base - counts["RM_loose"]) / n if n else 0.0, **counts, "problems": n}


def paper_metric(benchmark, items):
    """(name, value in [0, 1]) of the metric Table 2 reports for `benchmark`; None: accuracy."""
    if benchmark == "dynamath":
        return "worst-case", dynamath_worst_case(items)
    if benchmark == "wemath":
        return "strict score", wemath_scores(items)["strict"]
    return None


def grade_item(completion, record):
    """(extracted answer, correct) for one completion: by letter for multiple choice, else
    grader.grade on the last \\boxed{}, after numbers are rounded to meta["precision"] (MathVista)
    or compared within meta["tolerance"] (DynaMath floats)."""
    if record["kind"] == "choice":
        predicted = extract_choice(completion, record["options"])
        return predicted, predicted is not None and predicted == record["answer"]
    predicted = extract_boxed(completion)
    if predicted is None:
        return None, False
    meta, gold = record.get("meta") or {}, record["answer"]
    value, gold_value = _to_float(predicted), _to_float(gold)
    if value is not None and gold_value is not None:
        digits = meta.get("precision")
        if digits is not None and round(value, int(digits)) == round(gold_value, int(digits)):
            return predicted, True
        if meta.get("tolerance") is not None and abs(value - gold_value) <= meta["tolerance"]:
            return predicted, True
    return predicted, bool(grade(predicted, gold))
