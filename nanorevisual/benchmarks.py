"""Benchmark loaders and graders for the ten columns of ReVisual-R1 Table 2 (arXiv 2506.04207; docs/paper_notes.md §7).

Each public release file (JSON list / dict, JSONL, CSV or parquet) is read row by row and mapped by one
adapter per benchmark onto one plain-dict eval record, which `eval.py` consumes:

    {"id": str,                  # unique within the benchmark, e.g. "mathvista-1"
     "benchmark": str,           # one of BENCHMARKS ("jsonl" for the project's own files)
     "problem": str,             # question text with exactly len(images) "<image>" markers; options as "A. ..." lines
     "images": list,             # PIL.Image.Image (decoded bytes) or absolute file paths (str)
     "answer": str,              # gold: the letter(s) for multiple choice, else the free-form answer
     "kind": "choice" | "free",
     "options": dict[str, str],  # letter -> option text ({} for free form, or when the options live in the image)
     "meta": dict}               # subject / level / precision / answer_type / ...

Benchmark adapters always emit exactly len(images) "<image>" markers: an "<image1>"-style marker becomes
"<image>", and a question without markers gets them prepended ("<image>\\n" + text); the EasyR1 convention
(docs/paper_notes.md §6) puts an image slot at each marker. Rows in the project's own format are passed through as
written (no markers = images before the text). A real record (MathVista testmini pid 1, question shortened):

    {"id": "mathvista-1", "benchmark": "mathvista",
     "problem": "<image>\\nWhen a spring does work on an object, ... by what distance $d$ is the spring compressed?",
     "images": ["/data/mathvista/images/1.jpg"], "answer": "1.2", "kind": "free", "options": {},
     "meta": {"question_type": "free_form", "answer_type": "float", "precision": 1, "unit": None,
              "source": "SciBench", "task": "textbook question answering", ...}}

Where to get each benchmark, and what `load_benchmark(name, path)` expects to find (image paths in a file
are resolved against the file's folder, never the working directory; LogicVista's `imagename`,
a bare file name, against its `images/` subfolder; parquet exports carry the image bytes):

    mathverse   AI4Math/MathVerse, testmini (3940 rows = 788 problems x 5 versions): testmini.json beside the
                images_version_* folders, or the parquet export. Fields (sample_index, problem_index,
                problem_version, question, image, answer, question_type, metadata, query_wo, query_cot) confirmed
                from released rows; whether `image` in testmini.json includes the images_version_* folder was
                not checked (the path is resolved as given, relative to the json's folder).
    mathvision  MathLLMs/MathVision, split `test` (3040 rows): data/test-*.parquet, or test.jsonl + images/.
                Fields (id, question, options, image, decoded_image, answer, solution, level, subject) confirmed
                from the dataset card.
    mathvista   AI4Math/MathVista, split `testmini` (1000 rows): data/testmini-*.parquet, or annot_testmini.json
                (a dict keyed by pid) + images/. Fields confirmed from the dataset card.
    dynamath    DynaMath/DynaMath_Sample, the ten splits sample_variant1..10 (501 seed questions each): the
                downloaded folder (every sample_variant<k> file in it, e.g. data/sample_variant3-*.parquet) or
                one file per variant; the variant number is read from a `variant` field, else from the file name,
                else from how often the seed id has repeated. Fields (id, question,
                image, decoded_image, ground_truth, answer_type, subject, knowledge_level) confirmed from the card.
    wemath      We-Math/We-Math, testmini: testmini.json (+ its images) or a parquet export. Fields (ID, split,
                knowledge concept, question, option, answer, image_path, key, question number) confirmed from
                the official result template.
    logicvista  github.com/Yijia-Xiao/LogicVista data/dataset.json (a dict keyed "v1_0".. with `imagename`)
                + data/images/ (448 rows). Confirmed from the repo. The lscpku/LogicVista HF copy could not be
                checked: `image` / `image_path` / `id` / `question_id` are accepted as fallbacks.
    aime24      HuggingFaceH4/aime_2024 (30 rows: id, problem, solution, answer, url, year; confirmed).
    aime25      opencompass/AIME2025: aime2025-I.jsonl and aime2025-II.jsonl (field names `question`/`answer`
                not confirmed from the card); concatenate them into one file so ids stay unique.
                yentinglin/aime_2025 style rows (`problem`, `answer`, `id`) are accepted too.
    gpqa        Idavidrein/gpqa (gated), gpqa_diamond.csv (198 rows). Columns confirmed from the card.
    math500     HuggingFaceH4/MATH-500 test.jsonl (problem, solution, answer, subject, level, unique_id; confirmed).

Rows of any file that carry the project's own fields (`problem` and `answer`, but none of the benchmark's
own question fields) are read in the project's RL/eval JSONL format, as is everything under name "jsonl".

Deviations from the paper / released eval (CSfufu/Revisual-R1 eval/src; docs/paper_notes.md §7):
1. No LLM answer extractor. The released eval falls back to asking the served model to extract an answer
   when the last \\boxed{} does not match; here only the last \\boxed{} counts (rule-based, reproducible),
   which can score models that do not box their answer lower.
2. The released eval compares lower-cased, space-stripped, character-sorted strings. Here multiple choice is
   compared by letter (`extract_choice`, which also maps a boxed option text to its letter) and free form by
   `nanorevisual.grader.grade` (math equivalence).
3. GPQA: the four answers are shuffled with a per-question seed (sha256 of "0:" + question), so the gold
   letter is reproducible; no GPQA script was released.
4. AIME: Table 2 reports the mean over 8 samples (Table 2 caption); one record per problem with
   meta["n_samples"] = 8 tells eval.py how many samples to average.
5. MathVista: choices become lettered options and are graded by letter; free-form floats are rounded to
   meta["precision"] before comparing; the official "Hint: ..." query prompt is not used (the unit is kept).
6. Table 2's DynaMath and WeMath columns are not plain accuracy. DynaMath: the worst case over its 10 variants
   (a seed question counts only if every variant is right), the metric DynaMath itself headlines. WeMath: the
   strict score of its four-dimensional metric over the 525 composite testmini problems (`wemath_scores`). The
   paper does not name either; the column's values fit them (GPT-4o 34.5 on DynaMath is far below its average-case
   accuracy, and every WeMath value sits in the range of strict scores, loose ones run higher). eval.py reports
   both next to plain accuracy and compares the paper metric with Table 2.
7. MathVerse uses `query_cot` as the question, as the released eval does; "Vision Only" rows have their
   choices in the image, so their options are {} and any letter is accepted by `extract_choice`.
8. LogicVista answers can name several options ("A, C"); gold and prediction are both normalised to the
   sorted letters ("AC"), so a prediction must name exactly the gold set. Numbered options ("3") stay digits.
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
    "ReVisual-R1-7B": {"mathverse": 53.6, "mathvision": 48.8, "mathvista": 73.1, "dynamath": 27.5, "wemath": 42.0,
                       "logicvista": 52.3, "aime24": 53.3, "aime25": 43.3, "gpqa": 47.5, "math500": 89.2, "avg": 53.1},
    "Qwen2.5-VL-7B": {"mathverse": 38.7, "mathvision": 26.6, "mathvista": 69.1, "dynamath": 12.6, "wemath": 24.5,
                      "logicvista": 35.6, "aime24": 10.0, "aime25": 6.7, "gpqa": 32.8, "math500": 67.2, "avg": 32.4},
}

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
AIME_SAMPLES = 8  # paper Table 2 caption: AIME averaged over eight independent runs
DYNAMATH_TOLERANCE = 1e-3  # DynaMath's float check: |pred - gold| <= 0.001
_MISSING = object()

# -----------------------------------------------------------------------------
# small helpers


def _field(row, *names, default=_MISSING):
    """First of `names` present with a non-empty value; else `default`, else ValueError naming the field."""
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
    """Exactly num_images "<image>" markers: "<imageK>" -> "<image>"; on a count mismatch, markers go in front."""
    text = re.sub(r"<image\s*\d+>", "<image>", text)
    if text.count("<image>") == num_images:
        return text
    text = re.sub(r"[ \t]*<image>[ \t]*", " ", text).strip()
    return "<image>" * num_images + "\n" + text if num_images else text


def _options_text(options):
    return "\n".join(f"{letter}. {text}" for letter, text in options.items())


def _add_options(question, options):
    """Append "A. ..." lines, unless the options are only their own letters (the choices live in the image)."""
    if not options or all(text.strip() == letter for letter, text in options.items()):
        return question
    return question.rstrip() + "\n" + _options_text(options)


_OPTION_LINE = re.compile(r"^\s*\(?([A-H])\s*[.:)．：]\s*(.+?)\s*$")


def _parse_options(text):
    """Options written into a question ("A:40°", "(B) 12", "C. x", one per line) -> {"A": "40°", ...}; {} if none."""
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
    """Choice label of a gold / predicted answer, or None.

    "B", "(B)", "A, C", "A and C", "AC" -> "B", "B", "AC", "AC", "AC"; "3" -> "3"; "40°" -> None.
    """
    parts = [p for p in re.split(r"[\s,;/&()\[\].:]+|\band\b", str(text).strip(), flags=re.I) if p]
    single_letters = parts and all(re.fullmatch(r"[A-Za-z]", p) for p in parts)
    if single_letters and (len(parts) == 1 or all(p.isupper() for p in parts)):
        return "".join(sorted({p.upper() for p in parts}))
    if len(parts) == 1 and re.fullmatch(r"[A-Z]{2,8}", parts[0]) and len(set(parts[0])) == len(parts[0]):
        return "".join(sorted(parts[0]))
    if len(parts) == 1 and re.fullmatch(r"\d{1,2}", parts[0]):
        return parts[0]
    return None


def _gold_letter(answer, options, field="answer"):
    """Gold label for a choice question: a letter as given, or the letter whose option text equals the answer."""
    label = _choice_label(answer)
    if label is not None and (not options or set(label) <= set(options)):
        return label
    hits = [k for k, v in options.items() if _normalize_text(v) == _normalize_text(answer)]
    if len(hits) == 1:
        return hits[0]
    if label is not None:
        return label  # a letter the parsed options miss (e.g. drawn in the image): callers drop the options
    raise ValueError(f"field {field!r}: {answer!r} is neither an option letter nor one option's text")


def _source_id(row, names, name, index):
    value = _field(row, *names, default=None)
    return f"{name}-{value if value is not None else index}"


def _record(rid, benchmark, problem, images, answer, kind, options, meta):
    return {"id": rid, "benchmark": benchmark, "problem": problem, "images": images, "answer": str(answer).strip(),
            "kind": kind, "options": options, "meta": meta}


# -----------------------------------------------------------------------------
# adapters: one per benchmark, (row, index, base_dir) -> record


def adapt_mathverse(row, index, base_dir):
    """MathVerse testmini row -> record.

    query_cot (fallback: question) -> problem, the CoT prompt the released ReVisual-R1 eval uses;
    image (path like "images_version_1-4/image_1.png", or HF image dict; "" in the text-only version) -> images;
    question_type "multi-choice" -> kind "choice", answer is the letter ("D"); "free-form" -> kind "free";
    options parsed from the "Choices:\\nA:40°\\nB:60°" lines of `question` ({} for Vision-Only rows, whose
    choices are drawn in the image); sample_index -> id; problem_version, problem_index, question_type and
    metadata (subject, subfield, source) -> meta.
    """
    question = str(_field(row, "query_cot", "question"))
    images = _images(row, base_dir, ("image",), required=False)
    qtype = str(_field(row, "question_type", default="free-form"))
    kind = "choice" if qtype.replace("_", "-").startswith("multi") else "free"
    options = _parse_options(str(row.get("question") or question)) if kind == "choice" else {}
    answer = str(_field(row, "answer"))
    if kind == "choice":
        answer = _gold_letter(answer, options)
        if not set(answer) <= set(options):
            options = {}  # the parse missed options (or they are in the image): do not offer partial ones
    metadata = row.get("metadata") or {}
    meta = {"problem_version": row.get("problem_version"), "problem_index": row.get("problem_index"),
            "question_type": qtype, **{k: metadata.get(k) for k in ("subject", "subfield", "source")}}
    return _record(_source_id(row, ("sample_index", "id"), "mathverse", index), "mathverse",
                   _with_image_markers(question, len(images)), images, answer, kind, options, meta)


def adapt_mathvision(row, index, base_dir):
    """MathVision row -> record.

    question -> problem, any "<image1>"-style markers replaced by "<image>" (their presence is not on the card);
    options (list, [] for free form) -> lettered options appended as "A. ..." lines (not when the options are
    just "A".."E", i.e. drawn in the image); answer: the letter when options exist (an option's text is mapped
    to its letter), else free form; decoded_image (parquet bytes) or image (path "images/1.jpg") -> images;
    id -> id; level, subject -> meta (solution is dropped).
    """
    question = str(_field(row, "question"))
    images = _images(row, base_dir, ("decoded_image", "image"))
    options = {LETTERS[i]: str(text).strip() for i, text in enumerate(row.get("options") or [])}
    kind = "choice" if options else "free"
    answer = str(_field(row, "answer"))
    if kind == "choice":
        answer = _gold_letter(answer, options)
    problem = _add_options(_with_image_markers(question, len(images)), options)
    meta = {"level": row.get("level"), "subject": row.get("subject")}
    return _record(_source_id(row, ("id",), "mathvision", index), "mathvision", problem, images, answer, kind,
                   options, meta)


def adapt_mathvista(row, index, base_dir):
    """MathVista testmini row -> record.

    question (+ " (Unit: cm)" when `unit` is set) -> problem; choices (list or None) -> options A.., written as
    "A. ..." lines; question_type "multi_choice" -> kind "choice" and the gold letter is the index of `answer`
    in `choices`; "free_form" -> kind "free" with answer as given; precision (decimal places for float answers,
    NaN/None otherwise) -> meta["precision"] as int, which `grade_item` rounds the prediction to;
    answer_type (integer/float/text/list), unit, and metadata (source, task, category, context, grade, skills)
    -> meta; decoded_image (parquet bytes) or image (path "images/1.jpg") -> images; pid -> id.
    """
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
    meta = {"question_type": qtype, "answer_type": row.get("answer_type"), "precision": precision, "unit": unit,
            **{k: metadata.get(k) for k in ("source", "task", "category", "context", "grade", "skills")}}
    problem = _add_options(_with_image_markers(question, len(images)), options)
    return _record(_source_id(row, ("pid", "_key"), "mathvista", index), "mathvista", problem, images, answer, kind,
                   options, meta)


def adapt_dynamath(row, index, base_dir):
    """DynaMath_Sample row -> record.

    question -> problem (options stay as written; "A: ..", "(A) .." lines are parsed into `options` when
    present: how DynaMath writes its choices into the question was not checked); ground_truth -> answer; answer_type "multiple choice" -> kind "choice" (gold letter), "float" and
    "free form" -> kind "free", floats get meta["tolerance"] = 1e-3 (DynaMath's check); decoded_image or image
    -> images; id -> meta["seed_id"], variant (set by `load_benchmark` from the file name when absent) ->
    meta["variant"], id "dynamath-<seed>-v<variant>"; subject, knowledge_level, answer_type -> meta.
    """
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
    meta = {"answer_type": answer_type, "subject": row.get("subject"), "knowledge_level": row.get("knowledge_level"),
            "seed_id": str(seed_id), "variant": variant}
    if answer_type == "float":
        meta["tolerance"] = DYNAMATH_TOLERANCE
    rid = f"dynamath-{seed_id}" + (f"-v{variant}" if variant is not None else "")
    return _record(rid, "dynamath", _with_image_markers(question, len(images)), images, answer, kind, options, meta)


def adapt_wemath(row, index, base_dir):
    """We-Math testmini row -> record (every question is multiple choice).

    question -> problem; option ("A. 200.96;B. 3215.36;C. 6280;D. 32; E. No correct answer", split on ";")
    -> options written as "A. ..." lines (when `option` is absent the options are parsed from the question);
    answer -> the gold letter; image_path (path or HF image dict; image / decoded_image accepted) -> images;
    "question number" -> id (fallback ID); ID, key ("2steps_1", "3steps_multi", for the step-wise scores),
    knowledge concept, split -> meta.
    """
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
    meta = {"ID": row.get("ID"), "key": row.get("key"), "knowledge_concept": row.get("knowledge concept"),
            "split": row.get("split"), "question_number": row.get("question number")}
    return _record(_source_id(row, ("question number", "ID", "id"), "wemath", index), "wemath", problem, images,
                   answer, "choice", options, meta)


def adapt_logicvista(row, index, base_dir):
    """LogicVista row -> record (every question is multiple choice, options drawn in the image).

    question -> problem; imagename (official dataset.json, file in images/; image / image_path accepted)
    -> images; answer "C" / "A, C" / "3" -> "C" / "AC" / "3" (several letters: sorted, all must be named;
    numbered options stay digits); options {} unless written into the question ("A) 10 B) 12 ..");
    dict key "v1_0" (fallback id / question_id) -> id; skill, capability, raw answer -> meta.
    """
    question = str(_field(row, "question"))
    images = _images(row, base_dir, ("decoded_image", "image", "image_path", "imagename"))
    options = _parse_options(question)
    raw_answer = str(_field(row, "answer"))
    answer = _choice_label(raw_answer)
    if answer is None:
        raise ValueError(f"field 'answer': {raw_answer!r} is not an option label")
    if not set(answer) <= set(options):
        options = {}
    meta = {"skill": row.get("skill"), "capability": row.get("capability"), "answer_raw": raw_answer}
    return _record(_source_id(row, ("_key", "id", "question_id", "index"), "logicvista", index), "logicvista",
                   _with_image_markers(question, len(images)), images, answer, "choice", options, meta)


def _adapt_aime(row, index, name):
    problem = str(_field(row, "problem", "question"))
    raw = str(_field(row, "answer")).strip()
    if not re.fullmatch(r"\d+", raw):
        raise ValueError(f"field 'answer': AIME answers are integers, got {raw!r}")
    meta = {"year": row.get("year"), "url": row.get("url"), "n_samples": AIME_SAMPLES}
    return _record(_source_id(row, ("id",), name, index), name, problem, [], str(int(raw)), "free", {}, meta)


def adapt_aime24(row, index, base_dir):
    """AIME 2024 row (HuggingFaceH4/aime_2024) -> record.

    problem (or question) -> problem; answer "033" -> "33" (integers 0..999, leading zeros stripped);
    id -> id; year, url -> meta, plus meta["n_samples"] = 8 (Table 2 averages AIME over 8 runs). Text only.
    """
    return _adapt_aime(row, index, "aime24")


def adapt_aime25(row, index, base_dir):
    """AIME 2025 row (opencompass/AIME2025: question, answer; yentinglin style: problem, answer, id) -> record.

    Same mapping as `adapt_aime24`; rows without an id get "aime25-<row index>".
    """
    return _adapt_aime(row, index, "aime25")


def _row_seed(text, seed=0):
    return int.from_bytes(hashlib.sha256(f"{seed}:{text}".encode()).digest()[:8], "big")


def adapt_gpqa(row, index, base_dir):
    """GPQA row (gpqa_diamond.csv) -> record.

    Question -> problem, followed by four "A. ..." lines; Correct Answer + Incorrect Answer 1..3 (stripped)
    -> options in an order shuffled by random.Random(sha256("0:" + question)), so the same question always gets
    the same gold letter; answer = the letter of Correct Answer; Record ID -> id; High-level domain,
    Subdomain -> meta.
    """
    question = str(_field(row, "Question")).strip()
    answers = [str(_field(row, "Correct Answer")).strip()]
    answers += [str(_field(row, f"Incorrect Answer {i}")).strip() for i in (1, 2, 3)]
    order = random.Random(_row_seed(question)).sample(range(4), 4)  # order[j] = which answer goes to letter j
    options = {LETTERS[j]: answers[k] for j, k in enumerate(order)}
    answer = LETTERS[order.index(0)]
    meta = {"domain": row.get("High-level domain"), "subdomain": row.get("Subdomain"),
            "record_id": row.get("Record ID")}
    return _record(_source_id(row, ("Record ID",), "gpqa", index), "gpqa", _add_options(question, options), [],
                   answer, "choice", options, meta)


def adapt_math500(row, index, base_dir):
    """MATH-500 row -> record: problem -> problem; answer -> answer (free form); unique_id
    ("test/precalculus/807.json") -> id; subject, level -> meta (solution dropped). Text only."""
    meta = {"subject": row.get("subject"), "level": row.get("level"), "unique_id": row.get("unique_id")}
    return _record(_source_id(row, ("unique_id", "id"), "math500", index), "math500", str(_field(row, "problem")), [],
                   _field(row, "answer"), "free", {}, meta)


def adapt_jsonl(row, index, base_dir, benchmark="jsonl"):
    """The project's RL/eval JSONL row -> record, mapped straight through.

    id (fallback "<benchmark>-<row index>"), problem, answer; images: paths relative to the file's folder (or
    image dicts / bytes), and the number of "<image>" markers in problem must be 0 or len(images); kind
    (default "choice" if options else "free"); options (default {}); meta (default {}).
    """
    problem, answer = _field(row, "problem"), _field(row, "answer")
    if not isinstance(problem, str):
        raise ValueError(f"field 'problem': must be a string, got {type(problem).__name__}")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise ValueError(f"field 'answer': must be a string or a number, got {type(answer).__name__}")
    answer = str(answer).strip()
    images = row.get("images") or []
    if not isinstance(images, list):
        raise ValueError(f"field 'images': must be a list of paths or images, got {type(images).__name__}")
    images = [load_image(v, base_dir, "images") for v in images]
    if problem.count("<image>") not in (0, len(images)):
        raise ValueError(f"field 'images': {len(images)} images for {problem.count('<image>')} <image> markers")
    options = {str(k): str(v) for k, v in (row.get("options") or {}).items()}
    kind = row.get("kind") or ("choice" if options else "free")
    if kind not in ("choice", "free"):
        raise ValueError(f"field 'kind': expected 'choice' or 'free', got {kind!r}")
    rid = str(row["id"]) if row.get("id") not in (None, "") else f"{benchmark}-{index}"
    return _record(rid, str(row.get("benchmark") or benchmark), problem, images, answer, kind, options,
                   dict(row.get("meta") or {}))


ADAPTERS = {"mathverse": adapt_mathverse, "mathvision": adapt_mathvision, "mathvista": adapt_mathvista,
            "dynamath": adapt_dynamath, "wemath": adapt_wemath, "logicvista": adapt_logicvista,
            "aime24": adapt_aime24, "aime25": adapt_aime25, "gpqa": adapt_gpqa, "math500": adapt_math500}

# the benchmark's own question fields: a row with problem/answer but none of these is in the project's format
_SOURCE_FIELDS = {"mathverse": ("query_cot", "question"), "mathvision": ("question",), "mathvista": ("question",),
                  "dynamath": ("question",), "wemath": ("question",), "logicvista": ("question",),
                  "aime24": ("problem", "question"), "aime25": ("problem", "question"), "gpqa": ("Question",),
                  "math500": ("problem",)}

# -----------------------------------------------------------------------------
# reading files


def variant_files(folder):
    """The DynaMath release as downloaded: every sample_variant<k> file under `folder` (the HF export keeps one
    parquet per variant in data/), ordered by k. [(k, path)]."""
    found = []
    for root, _, files in os.walk(folder):
        for f in files:
            m = re.search(r"variant_?(\d+)", f)
            if m and f.lower().endswith(READABLE):
                found.append((int(m.group(1)), os.path.join(root, f)))
    return sorted(found)


def load_benchmark(name, path, *, limit=None):
    """Read a benchmark's release file and map every row to an eval record (see the module docstring).

    DynaMath also takes the release folder (every variant file in it). Bad input raises a one-line ValueError
    naming the file, the row or line (both counted from 1) and the field. `limit` counts rows per file (for a
    DynaMath folder: seed questions, so every variant of the kept seeds stays).
    """
    if os.path.isdir(path):
        if name != "dynamath":
            raise ValueError(f"{path}: is a folder; {name} reads one file (see nanorevisual/benchmarks.py)")
        files = variant_files(path)
        if not files:
            raise ValueError(f"{path}: no sample_variant<k> file ({'/'.join(READABLE)}) in this DynaMath folder")
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
                    row = {**row, "variant": int(file_variant.group(1)) if file_variant else seed_counts[seed]}
                record = ADAPTERS[name](row, index, base_dir)
            if record["id"] in seen:
                raise ValueError(f"field 'id': duplicate id {record['id']!r} (first at row {seen[record['id']]})")
            seen[record["id"]] = where
        except (ValueError, TypeError, AttributeError) as e:  # malformed values, e.g. a string where a list belongs
            message = " ".join(str(e).split())  # one line
            raise ValueError(f"{path}:{where}: {message}") from e
        records.append(record)
    return records


# -----------------------------------------------------------------------------
# grading


def _normalize_text(text):
    """Option-text comparison key: LaTeX wrappers and spaces removed, degrees unified, lower case."""
    text = plain_text(text).lower()
    for degree in ("^{\\circ}", "^\\circ", "\\circ", "\\degree"):
        text = text.replace(degree, "°")
    text = text.replace("\\%", "%").replace("\\left", "").replace("\\right", "")
    return re.sub(r"\s+", "", text).rstrip(".")


def extract_choice(completion, options):
    """The predicted option label from the last \\boxed{} of a completion, or None.

    Accepts a letter ("B", "(B)", "B.", "B)", "Option B", "\\text{B}", "B: text"), the text of exactly one option
    (normalised, case-insensitive; ambiguous -> None), or several letters ("A, C" -> "AC", for LogicVista).
    With options == {} (choices drawn in the image) any letter is accepted.
    """
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
    """DynaMath's worst-case accuracy: the share of seed questions answered right in every variant.

    items: [(record meta, correct)] for one sample index; returns a fraction (DynaMath README: "the percentage of
    correctly answered seed questions across all variations")."""
    by_seed = {}
    for meta, correct in items:
        by_seed.setdefault(meta["seed_id"], []).append(correct)
    return sum(all(v) for v in by_seed.values()) / max(len(by_seed), 1)


WEMATH_STEPS = (2, 3)


def wemath_scores(items):
    """We-Math's four-dimensional scores over its composite problems (evaluation/four_dimensional_metrics.py).

    items: [(record meta, correct)] for one sample index, meta carrying ID (the composite problem) and key
    ("2steps_1", "2steps_multi", ...). For each 2- or 3-step problem with all its parts present:
        IK  some one-step part wrong, composite wrong        IG  every part right, composite wrong
        CM  composite right and every part right (strict) / at least one part right (loose)
        RM  composite right and some part wrong (strict) / every part wrong (loose)
    score = (n - 0.5 IG - RM - IK) / n with n composite problems (525 in testmini); strict and loose differ in RM.
    Returns {"strict", "loose", "IK", "IG", "CM_strict", "CM_loose", "RM_strict", "RM_loose", "problems"}."""
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
            continue  # an incomplete problem (e.g. --limit): the official script drops it in its merge too
        n += 1
        singles = [got[str(i)] for i in range(1, steps + 1)]
        if not got["multi"]:
            counts["IG" if all(singles) else "IK"] += 1
        else:
            counts["CM_strict" if all(singles) else "RM_strict"] += 1
            counts["RM_loose" if not any(singles) else "CM_loose"] += 1
    base = n - 0.5 * counts["IG"] - counts["IK"]
    return {"strict": (base - counts["RM_strict"]) / n if n else 0.0,
            "loose": (base - counts["RM_loose"]) / n if n else 0.0, **counts, "problems": n}


def paper_metric(benchmark, items):
    """(name, value in [0, 1]) of the metric paper Table 2 reports for `benchmark`, or None for plain accuracy."""
    if benchmark == "dynamath":
        return "worst-case", dynamath_worst_case(items)
    if benchmark == "wemath":
        return "strict score", wemath_scores(items)["strict"]
    return None


def grade_item(completion, record):
    """(extracted answer, correct) for one completion: by letter for multiple choice, else grader.grade on the
    last \\boxed{}; numeric predictions are rounded to meta["precision"] (MathVista) or compared within
    meta["tolerance"] (DynaMath floats) first."""
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
