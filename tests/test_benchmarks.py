"""Tests for nanorevisual/benchmarks.py: one hand-made row per benchmark in its public release format goes through
`load_benchmark` and every record field is checked; plus the project JSONL pass-through, one-line errors,
`extract_choice` / `grade_item` tables, the GPQA shuffle and the missing-pyarrow message. CPU only, no network.

Run: python -m pytest -q tests/test_benchmarks.py
"""
import csv
import io
import json
import os
import sys

import pytest
from PIL import Image

from nanorevisual.benchmarks import (BENCHMARKS, PAPER_TABLE2, _choice_label, _parse_options, adapt_gpqa,
                                     adapt_mathvision, extract_choice, grade_item, load_benchmark)


def _png(path, size, color="red"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return str(path)


def _png_bytes(size):
    buf = io.BytesIO()
    Image.new("RGB", size, "blue").save(buf, format="PNG")
    return buf.getvalue()


def _write_json(path, data):
    path.write_text(json.dumps(data))
    return str(path)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _size(image):
    if isinstance(image, str):
        assert os.path.isabs(image), image
        with Image.open(image) as im:
            return im.size
    return image.size


# ----------------------------------------------------------------------------- paper numbers


def test_paper_table2_has_every_column_and_consistent_avg():
    for model, row in PAPER_TABLE2.items():
        assert list(row) == BENCHMARKS + ["avg"], model
        assert abs(sum(row[b] for b in BENCHMARKS) / 10 - row["avg"]) < 0.05, model
    assert PAPER_TABLE2["ReVisual-R1-7B"]["mathvista"] == 73.1 and PAPER_TABLE2["Qwen2.5-VL-7B"]["aime25"] == 6.7


# ----------------------------------------------------------------------------- one row per benchmark


def test_mathverse_testmini_row(tmp_path):
    _png(tmp_path / "images_version_1-4" / "image_1.png", (40, 30))
    question = ("As shown in the figure, in triangle ABC, angle A = 80.0, angle B = 60.0, DE parallel BC, "
                "then the size of angle CED is ()\nChoices:\nA:40°\nB:60°\nC:120°\nD:140°")
    cot = ("Please first conduct reasoning, and then answer the question and provide the correct option letter, "
           "e.g., A, B, C, D, at the end.\nQuestion: " + question)
    rows = [{"sample_index": "1", "problem_index": "1", "problem_version": "Text Dominant", "question": question,
             "image": "images_version_1-4/image_1.png", "answer": "D", "question_type": "multi-choice",
             "metadata": {"split": "testmini", "source": "GeoQA", "subject": "Plane Geometry", "subfield": "Angle"},
             "query_wo": "Please directly answer ...\nQuestion: " + question, "query_cot": cot},
            {"sample_index": "6", "problem_index": "2", "problem_version": "Vision Only", "question": "",
             "image": "images_version_1-4/image_1.png", "answer": "12", "question_type": "free-form",
             "metadata": {"subject": "Plane Geometry"}, "query_cot": "Please first conduct reasoning.\nQuestion: "}]
    mc, free = load_benchmark("mathverse", _write_json(tmp_path / "testmini.json", rows))
    assert mc["id"] == "mathverse-1" and mc["benchmark"] == "mathverse"
    assert mc["problem"] == "<image>\n" + cot
    assert len(mc["images"]) == 1 and _size(mc["images"][0]) == (40, 30)
    assert (mc["answer"], mc["kind"]) == ("D", "choice")
    assert mc["options"] == {"A": "40°", "B": "60°", "C": "120°", "D": "140°"}
    assert mc["meta"] == {"problem_version": "Text Dominant", "problem_index": "1", "question_type": "multi-choice",
                          "subject": "Plane Geometry", "subfield": "Angle", "source": "GeoQA"}
    assert free["id"] == "mathverse-6" and free["problem"] == "<image>\nPlease first conduct reasoning.\nQuestion:"
    assert (free["answer"], free["kind"], free["options"]) == ("12", "free", {})


def test_mathvision_row_with_image1_marker_and_options(tmp_path):
    _png(tmp_path / "images" / "4.jpg", (64, 48))
    rows = [{"id": "4", "question": "How many bricks are missing in the wall?\n<image1>",
             "options": ["3", "4", "5", "6", "7"], "image": "images/4.jpg", "answer": "C",
             "solution": None, "level": 1, "subject": "counting"},
            {"id": "9", "question": "<image1>\nWhich number is missing?", "options": [], "image": "images/4.jpg",
             "answer": "14", "solution": "...", "level": 2, "subject": "arithmetic"}]
    mc, free = load_benchmark("mathvision", _write_jsonl(tmp_path / "test.jsonl", rows))
    assert mc["id"] == "mathvision-4"
    assert mc["problem"] == "How many bricks are missing in the wall?\n<image>\nA. 3\nB. 4\nC. 5\nD. 6\nE. 7"
    assert _size(mc["images"][0]) == (64, 48)
    assert (mc["answer"], mc["kind"]) == ("C", "choice")
    assert mc["options"] == {"A": "3", "B": "4", "C": "5", "D": "6", "E": "7"}
    assert mc["meta"] == {"level": 1, "subject": "counting"}
    assert free["problem"] == "<image>\nWhich number is missing?"
    assert (free["answer"], free["kind"], free["options"]) == ("14", "free", {})


def test_mathvista_annot_testmini_dict(tmp_path):
    # pid 1 is the module docstring's example record (question shortened the same way)
    _png(tmp_path / "images" / "1.jpg", (151, 72))
    _png(tmp_path / "images" / "5.jpg", (30, 30))
    question = "When a spring does work on an object, ... by what distance $d$ is the spring compressed?"
    annot = {
        "1": {"question": question, "image": "images/1.jpg", "choices": None, "unit": None, "precision": 1.0,
              "answer": "1.2", "question_type": "free_form", "answer_type": "float", "pid": "1",
              "metadata": {"split": "testmini", "language": "english", "img_width": 151, "img_height": 72,
                           "source": "SciBench", "category": "math-targeted-vqa",
                           "task": "textbook question answering", "context": "scientific figure",
                           "grade": "college", "skills": ["scientific reasoning"]}},
        "5": {"question": "Find m\\angle H", "image": "images/5.jpg", "choices": ["97", "102", "107", "122"],
              "unit": None, "precision": None, "answer": "97", "question_type": "multi_choice",
              "answer_type": "text", "pid": "5",
              "metadata": {"source": "Geometry3K", "task": "geometry problem solving"}},
    }
    free, mc = load_benchmark("mathvista", _write_json(tmp_path / "annot_testmini.json", annot))
    assert free == {"id": "mathvista-1", "benchmark": "mathvista", "problem": "<image>\n" + question,
                    "images": [str(tmp_path / "images" / "1.jpg")], "answer": "1.2", "kind": "free", "options": {},
                    "meta": {"question_type": "free_form", "answer_type": "float", "precision": 1, "unit": None,
                             "source": "SciBench", "task": "textbook question answering",
                             "category": "math-targeted-vqa", "context": "scientific figure", "grade": "college",
                             "skills": ["scientific reasoning"]}}
    assert _size(free["images"][0]) == (151, 72)
    assert mc["problem"] == "<image>\nFind m\\angle H\nA. 97\nB. 102\nC. 107\nD. 122"
    assert (mc["answer"], mc["kind"]) == ("A", "choice")  # "97" is choices[0]
    assert mc["options"] == {"A": "97", "B": "102", "C": "107", "D": "122"}
    assert mc["meta"]["precision"] is None and mc["meta"]["question_type"] == "multi_choice"


def test_mathvista_parquet_with_image_bytes(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    row = {"pid": "7", "question": "How many bars are there?", "image": "images/7.jpg",
           "decoded_image": {"bytes": _png_bytes((20, 10)), "path": "7.jpg"}, "choices": None, "unit": None,
           "precision": float("nan"), "answer": "3", "question_type": "free_form", "answer_type": "integer",
           "metadata": {"source": "FigureQA", "task": "figure question answering"}, "query": "Hint: ..."}
    path = tmp_path / "testmini-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist([row]), path)
    (record,) = load_benchmark("mathvista", str(path))
    assert isinstance(record["images"][0], Image.Image) and record["images"][0].size == (20, 10)
    assert record["problem"] == "<image>\nHow many bars are there?"
    assert (record["id"], record["answer"], record["kind"]) == ("mathvista-7", "3", "free")
    assert record["meta"]["precision"] is None and record["meta"]["answer_type"] == "integer"


def test_image_bytes_decoded_without_pyarrow(tmp_path):
    row = {"id": "2", "question": "<image1> What is x?", "options": [], "answer": "5", "level": 3, "subject": "algebra",
           "image": "images/2.jpg", "decoded_image": {"bytes": _png_bytes((12, 34)), "path": None}}
    record = adapt_mathvision(row, 0, str(tmp_path))
    assert record["images"][0].size == (12, 34) and record["problem"] == "<image> What is x?"
    raw = adapt_mathvision({**row, "decoded_image": _png_bytes((5, 6))}, 0, str(tmp_path))
    assert raw["images"][0].size == (5, 6)


def test_dynamath_variant_from_file_name(tmp_path):
    _png(tmp_path / "images" / "q5.png", (50, 40))
    rows = [{"id": "5", "question": "Which function is shown?\nChoices:\n(A) sin(x)\n(B) cos(x)\n(C) tan(x)",
             "image": "images/q5.png", "ground_truth": "B", "answer_type": "multiple choice",
             "subject": "Analytic Geometry", "knowledge_level": "high school"},
            {"id": "6", "question": "What is the period of y = 2*sin(3*x)?", "image": "images/q5.png",
             "ground_truth": "2.0944", "answer_type": "float", "subject": "Graph Theory",
             "knowledge_level": "undergraduate"}]
    mc, flt = load_benchmark("dynamath", _write_jsonl(tmp_path / "sample_variant3.jsonl", rows))
    assert mc["id"] == "dynamath-5-v3"
    assert mc["problem"] == "<image>\n" + rows[0]["question"]
    assert _size(mc["images"][0]) == (50, 40)
    assert (mc["answer"], mc["kind"]) == ("B", "choice")
    assert mc["options"] == {"A": "sin(x)", "B": "cos(x)", "C": "tan(x)"}
    assert mc["meta"] == {"answer_type": "multiple choice", "subject": "Analytic Geometry",
                          "knowledge_level": "high school", "seed_id": "5", "variant": 3}
    assert (flt["id"], flt["answer"], flt["kind"], flt["options"]) == ("dynamath-6-v3", "2.0944", "free", {})
    assert flt["meta"]["tolerance"] == 1e-3 and flt["meta"]["variant"] == 3
    # all ten variants in one file (the sample_all split): the variant is the seed's occurrence count
    both = load_benchmark("dynamath", _write_jsonl(tmp_path / "all.jsonl", [rows[0], rows[0]]))
    assert [r["id"] for r in both] == ["dynamath-5-v1", "dynamath-5-v2"]


def test_wemath_testmini_row(tmp_path):
    _png(tmp_path / "3steps" / "image" / "165-3.png", (33, 22))
    rows = [{"ID": "3steps_165", "split": "testmini", "knowledge concept": "Area of Circles",
             "question": "Mary walked ... what is the area of the flower bed (  ) m²?(π = 3.14)",
             "option": "A. 200.96;B. 3215.36;C. 6280;D. 32; E. No correct answer", "answer": "B",
             "image_path": "3steps/image/165-3.png", "key": "3steps_3", "question number": 1575,
             "knowledge concept description": "Area of ..."}]
    (record,) = load_benchmark("wemath", _write_json(tmp_path / "testmini.json", rows))
    assert record["id"] == "wemath-1575"
    assert record["problem"] == ("<image>\nMary walked ... what is the area of the flower bed (  ) m²?(π = 3.14)\n"
                                 "A. 200.96\nB. 3215.36\nC. 6280\nD. 32\nE. No correct answer")
    assert _size(record["images"][0]) == (33, 22)
    assert (record["answer"], record["kind"]) == ("B", "choice")
    assert record["options"] == {"A": "200.96", "B": "3215.36", "C": "6280", "D": "32", "E": "No correct answer"}
    assert record["meta"] == {"ID": "3steps_165", "key": "3steps_3", "knowledge_concept": "Area of Circles",
                              "split": "testmini", "question_number": 1575}


def test_logicvista_dataset_json_with_multi_letter_answer(tmp_path):
    _png(tmp_path / "images" / "v1_1.png", (70, 20))
    _png(tmp_path / "images" / "v1_19.png", (10, 10))
    data = {"v1_1": {"imagename": "v1_1.png",
                     "question": "Which choices in the image (A-D) belong to the green category?",
                     "answer": "A, C", "reasoning": "...", "skill": ["inductive"], "capability": ["diagram"],
                     "imagesource": "aptitudetests", "sourcelink": "https://www.aptitudetests.org/"},
            "v1_19": {"imagename": "v1_19.png",
                      "question": "How many triangles? Select from A-D. \n A) 10 B) 12 C) 14 D) 16",
                      "answer": "C", "skill": ["inductive"], "capability": ["diagram"]}}
    multi, inline = load_benchmark("logicvista", _write_json(tmp_path / "dataset.json", data))
    assert multi["id"] == "logicvista-v1_1"
    assert multi["problem"] == "<image>\nWhich choices in the image (A-D) belong to the green category?"
    assert _size(multi["images"][0]) == (70, 20)
    assert (multi["answer"], multi["kind"], multi["options"]) == ("AC", "choice", {})
    assert multi["meta"] == {"skill": ["inductive"], "capability": ["diagram"], "answer_raw": "A, C"}
    assert inline["options"] == {"A": "10", "B": "12", "C": "14", "D": "16"} and inline["answer"] == "C"


def test_aime24_row_strips_leading_zeros(tmp_path):
    rows = [{"id": 60, "problem": "Every morning Aya goes for a $9$-kilometer-long walk ...", "solution": "...",
             "answer": "033", "url": "https://artofproblemsolving.com/wiki/index.php/2024_AIME_I_Problems/Problem_1",
             "year": "2024"}]
    (record,) = load_benchmark("aime24", _write_jsonl(tmp_path / "aime_2024.jsonl", rows))
    assert record == {"id": "aime24-60", "benchmark": "aime24", "problem": rows[0]["problem"], "images": [],
                      "answer": "33", "kind": "free", "options": {},
                      "meta": {"year": "2024", "url": rows[0]["url"], "n_samples": 8}}


def test_aime25_opencompass_rows(tmp_path):
    rows = [{"question": "Find the sum of all integer bases $b>9$ for which $17_b$ is a divisor of $97_b$.",
             "answer": "70"}, {"question": "Another problem", "answer": "0"}]
    first, second = load_benchmark("aime25", _write_jsonl(tmp_path / "aime2025.jsonl", rows))
    assert (first["id"], first["answer"], first["kind"]) == ("aime25-0", "70", "free")
    assert first["problem"] == rows[0]["question"]
    assert (second["id"], second["answer"], second["images"]) == ("aime25-1", "0", [])
    assert first["meta"]["n_samples"] == 8


GPQA_ROW = {"Record ID": "recABC", "High-level domain": "Chemistry", "Subdomain": "Organic Chemistry",
            "Question": "Which reagent converts an alkene to an epoxide?", "Correct Answer": " mCPBA\n",
            "Incorrect Answer 1": "NaBH4", "Incorrect Answer 2": "LiAlH4", "Incorrect Answer 3": "H2, Pd/C",
            "Explanation": "Peracids epoxidize alkenes."}


def test_gpqa_csv_row(tmp_path):
    path = tmp_path / "gpqa_diamond.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(GPQA_ROW))
        writer.writeheader()
        writer.writerow(GPQA_ROW)
    (record,) = load_benchmark("gpqa", str(path))
    assert record["id"] == "gpqa-recABC" and record["kind"] == "choice" and record["images"] == []
    assert sorted(record["options"]) == ["A", "B", "C", "D"]
    assert sorted(record["options"].values()) == sorted(["mCPBA", "NaBH4", "LiAlH4", "H2, Pd/C"])
    assert record["options"][record["answer"]] == "mCPBA"
    lines = "\n".join(f"{k}. {v}" for k, v in record["options"].items())
    assert record["problem"] == GPQA_ROW["Question"] + "\n" + lines
    assert record["meta"] == {"domain": "Chemistry", "subdomain": "Organic Chemistry", "record_id": "recABC"}


def test_gpqa_shuffle_is_deterministic_and_varies_with_the_question():
    first, again = adapt_gpqa(dict(GPQA_ROW), 0, "."), adapt_gpqa(dict(GPQA_ROW), 5, ".")
    assert first["options"] == again["options"] and first["answer"] == again["answer"]
    gold_letters = set()
    for i in range(20):
        record = adapt_gpqa({**GPQA_ROW, "Question": f"Question number {i}?"}, i, ".")
        assert record["options"][record["answer"]] == "mCPBA"
        gold_letters.add(record["answer"])
    assert len(gold_letters) > 1  # the gold is not always in the same slot


def test_math500_row(tmp_path):
    rows = [{"problem": "Convert the point $(0,3)$ in rectangular coordinates to polar coordinates.",
             "solution": "...", "answer": "\\left( 3, \\frac{\\pi}{2} \\right)", "subject": "Precalculus", "level": 2,
             "unique_id": "test/precalculus/807.json"}]
    (record,) = load_benchmark("math500", _write_jsonl(tmp_path / "test.jsonl", rows))
    assert record == {"id": "math500-test/precalculus/807.json", "benchmark": "math500", "problem": rows[0]["problem"],
                      "images": [], "answer": rows[0]["answer"], "kind": "free", "options": {},
                      "meta": {"subject": "Precalculus", "level": 2, "unique_id": "test/precalculus/807.json"}}


def test_limit_reads_only_the_first_rows(tmp_path):
    rows = [{"problem": f"p{i}", "answer": str(i), "unique_id": f"u{i}"} for i in range(5)]
    records = load_benchmark("math500", _write_jsonl(tmp_path / "test.jsonl", rows), limit=2)
    assert [r["id"] for r in records] == ["math500-u0", "math500-u1"]


# ----------------------------------------------------------------------------- the project's own format


def test_project_jsonl_passes_through(tmp_path):
    _png(tmp_path / "img" / "a.png", (16, 8))
    rows = [{"id": "toy-1", "problem": "<image>What is 2+3?", "answer": "5", "images": ["img/a.png"]},
            {"id": "toy-2", "problem": "Pick one.\nA. red\nB. blue", "answer": "B", "images": [], "kind": "choice",
             "options": {"A": "red", "B": "blue"}}]
    free, mc = load_benchmark("jsonl", _write_jsonl(tmp_path / "eval.jsonl", rows))
    assert free == {"id": "toy-1", "benchmark": "jsonl", "problem": "<image>What is 2+3?",
                    "images": [str(tmp_path / "img" / "a.png")], "answer": "5", "kind": "free", "options": {},
                    "meta": {}}
    assert _size(free["images"][0]) == (16, 8)
    assert (mc["kind"], mc["options"], mc["answer"], mc["images"]) == ("choice", {"A": "red", "B": "blue"}, "B", [])
    # a benchmark name with rows already in the project format: mapped straight through, tagged with the name
    (converted,) = load_benchmark("mathvista", _write_jsonl(tmp_path / "mv.jsonl", rows[:1]))
    assert (converted["benchmark"], converted["answer"]) == ("mathvista", "5")
    assert converted["problem"] == "<image>What is 2+3?"


# ----------------------------------------------------------------------------- errors


def _error(name, path):
    with pytest.raises(ValueError) as info:
        load_benchmark(name, path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    return message[len(os.path.dirname(str(path))) + 1:]  # FILE:LINE: ... with the folder stripped


def test_bad_rows_give_one_line_errors_naming_file_row_and_field(tmp_path):
    good = {"pid": "1", "question": "q", "image": "images/1.jpg", "answer": "2", "question_type": "free_form"}
    _png(tmp_path / "images" / "1.jpg", (4, 4))
    path = _write_json(tmp_path / "mathvista.json", [good, {k: v for k, v in good.items() if k != "answer"}])
    assert _error("mathvista", path) == "mathvista.json:2: field 'answer': missing"
    path = _write_json(tmp_path / "mathvista.json", [{**good, "image": "images/nope.jpg"}])
    message = _error("mathvista", path)
    assert message.startswith("mathvista.json:1: field 'image': image not found: images/nope.jpg")
    path = _write_json(tmp_path / "mathvista.json", [{**good, "question_type": "multi_choice", "choices": ["1", "3"]}])
    assert _error("mathvista", path) == "mathvista.json:1: field 'answer': '2' is not one of 'choices'"
    path = _write_json(tmp_path / "mathvista.json", [good, good])
    assert _error("mathvista", path) == ("mathvista.json:2: field 'id': duplicate id 'mathvista-1' "
                                         "(first at row 1)")
    path = tmp_path / "aime.jsonl"
    path.write_text('{"problem": "p", "answer": "1"}\n{"problem": oops}\n')
    assert _error("aime24", str(path)).startswith("aime.jsonl:2: malformed JSON")
    path = _write_jsonl(tmp_path / "aime.jsonl", [{"problem": "p", "answer": "12.5"}])
    assert _error("aime24", path) == "aime.jsonl:1: field 'answer': AIME answers are integers, got '12.5'"
    path = _write_jsonl(tmp_path / "own.jsonl", [{"id": "x", "problem": "<image><image>two?", "answer": "1",
                                                  "images": ["images/1.jpg"]}])
    assert _error("jsonl", path) == "own.jsonl:1: field 'images': 1 images for 2 <image> markers"
    with pytest.raises(ValueError, match="unknown benchmark 'mmmu'"):
        load_benchmark("mmmu", path)


def test_malformed_values_are_reported_as_value_errors(tmp_path):
    _png(tmp_path / "images" / "1.jpg", (4, 4))
    row = {"id": "1", "question": "q", "options": 5, "image": "images/1.jpg", "answer": "A"}
    message = _error("mathvision", _write_jsonl(tmp_path / "test.jsonl", [row]))
    assert message.startswith("test.jsonl:1: ") and "int" in message


def test_missing_pyarrow_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow...` raise ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = tmp_path / "testmini.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(ImportError, match=r"testmini.parquet: reading parquet needs pyarrow: pip install pyarrow$"):
        load_benchmark("mathvista", str(path))


# ----------------------------------------------------------------------------- answer extraction and grading

OPTIONS = {"A": "40°", "B": "60°", "C": "120°", "D": "140°"}


@pytest.mark.parametrize("completion, options, expected", [
    ("so \\boxed{B}", OPTIONS, "B"),
    ("\\boxed{(B)}", OPTIONS, "B"),
    ("\\boxed{B.}", OPTIONS, "B"),
    ("\\boxed{B)}", OPTIONS, "B"),
    ("\\boxed{Option B}", OPTIONS, "B"),
    ("\\boxed{\\text{B}}", OPTIONS, "B"),
    ("\\boxed{B: 60°}", OPTIONS, "B"),
    ("\\boxed{(C) 120^\\circ}", OPTIONS, "C"),
    ("\\boxed{b}", OPTIONS, "B"),
    ("first \\boxed{A} then \\boxed{D}", OPTIONS, "D"),              # the last box counts
    ("\\boxed{120^{\\circ}}", OPTIONS, "C"),                           # option text instead of the letter
    ("\\boxed{140 °}", OPTIONS, "D"),
    ("\\boxed{\\text{No correct answer}}", {"A": "32", "B": "No correct answer"}, "B"),
    ("\\boxed{5}", {"A": "5", "B": "5", "C": "7"}, None),              # ambiguous option text
    ("\\boxed{80°}", OPTIONS, None),                                   # matches no option
    ("The answer is B.", OPTIONS, None),                               # no box
    ("\\boxed{A, C}", {}, "AC"),                                       # LogicVista: several letters
    ("\\boxed{C and A}", {}, "AC"),
    ("\\boxed{3}", {}, "3"),                                           # numbered options drawn in the image
    ("\\boxed{E}", {}, "E"),                                           # options in the image: any letter
])
def test_extract_choice(completion, options, expected):
    assert extract_choice(completion, options) == expected


@pytest.mark.parametrize("text, expected", [("B", "B"), ("(B)", "B"), ("A, C", "AC"), ("A and C", "AC"), ("AC", "AC"),
                                            ("3", "3"), ("40°", None), ("5 cm", None)])
def test_choice_label_docstring_examples(text, expected):
    assert _choice_label(text) == expected


def test_parse_options_docstring_examples():
    assert _parse_options("Find x.\nChoices:\nA:40°\n(B) 12\nC. x") == {"A": "40°", "B": "12", "C": "x"}
    assert _parse_options("How many? A) 10 B) 12 C) 14") == {"A": "10", "B": "12", "C": "14"}
    assert _parse_options("Point A lies on the circle.") == {}


def _choice_record(answer, options):
    return {"id": "t", "benchmark": "gpqa", "problem": "", "images": [], "answer": answer, "kind": "choice",
            "options": options, "meta": {}}


def _free_record(answer, **meta):
    return {"id": "t", "benchmark": "mathvista", "problem": "", "images": [], "answer": answer, "kind": "free",
            "options": {}, "meta": meta}


def test_grade_item_multiple_choice():
    record = _choice_record("C", OPTIONS)
    assert grade_item("<think>...</think> \\boxed{C}", record) == ("C", True)
    assert grade_item("\\boxed{120°}", record) == ("C", True)
    assert grade_item("\\boxed{(A)}", record) == ("A", False)
    assert grade_item("no box, C", record) == (None, False)
    assert grade_item("\\boxed{A, C}", _choice_record("AC", {})) == ("AC", True)
    assert grade_item("\\boxed{A}", _choice_record("AC", {})) == ("A", False)


def test_grade_item_free_form():
    assert grade_item("\\boxed{33}", _free_record("33")) == ("33", True)
    assert grade_item("\\boxed{\\frac{1}{2}}", _free_record("0.5")) == ("\\frac{1}{2}", True)
    assert grade_item("\\boxed{34}", _free_record("33")) == ("34", False)
    assert grade_item("I think 33", _free_record("33")) == (None, False)
    # MathVista precision: the prediction is rounded to the gold's decimal places
    assert grade_item("\\boxed{1.23}", _free_record("1.2", precision=1)) == ("1.23", True)
    assert grade_item("\\boxed{1.26}", _free_record("1.2", precision=1)) == ("1.26", False)
    assert grade_item("\\boxed{1.23}", _free_record("1.2")) == ("1.23", False)
    # DynaMath floats: |pred - gold| <= 1e-3
    assert grade_item("\\boxed{2.0940}", _free_record("2.0944", tolerance=1e-3)) == ("2.0940", True)
    assert grade_item("\\boxed{2.09}", _free_record("2.0944", tolerance=1e-3)) == ("2.09", False)


# ----------------------------------------------------------------------------------------------------------------
# the paper's metrics: DynaMath worst case over variants, WeMath strict / loose scores


def reference_worst_case(correct_by_variant):
    """Slow reference: {seed: [correct in variant 1, 2, ...]} -> share of seeds right in every variant."""
    right = 0
    for answers in correct_by_variant.values():
        ok = True
        for a in answers:
            ok = ok and a
        right += ok
    return right / len(correct_by_variant)


def test_dynamath_folder_and_worst_case(tmp_path):
    """The release folder as downloaded (data/sample_variant<k>-*.jsonl here) loads every variant; worst case
    counts a seed only when all its variants are right."""
    from nanorevisual.benchmarks import dynamath_worst_case, paper_metric
    folder = tmp_path / "DynaMath" / "data"
    _png(folder / "q.png", (40, 40))
    for k in (1, 2, 3):
        rows = [{"id": str(seed), "question": f"What is {seed}+{k}?", "image": "q.png", "ground_truth": str(seed + k),
                 "answer_type": "free form"} for seed in (1, 2, 3, 4)]
        _write_jsonl(folder / f"sample_variant{k}-00000-of-00001.jsonl", rows)
    (folder / "README.md").write_text("not a variant")
    records = load_benchmark("dynamath", str(tmp_path / "DynaMath"))
    assert len(records) == 12 and {r["meta"]["variant"] for r in records} == {1, 2, 3}
    assert records[0]["id"] == "dynamath-1-v1" and records[-1]["id"] == "dynamath-4-v3"
    assert len(load_benchmark("dynamath", str(tmp_path / "DynaMath"), limit=2)) == 6  # 2 seeds x 3 variants
    wrong = {("1", 2), ("3", 1), ("3", 3)}  # (seed, variant) answered wrong
    items = [(r["meta"], (r["meta"]["seed_id"], r["meta"]["variant"]) not in wrong) for r in records]
    by_seed = {}
    for meta, ok in items:
        by_seed.setdefault(meta["seed_id"], []).append(ok)
    assert dynamath_worst_case(items) == reference_worst_case(by_seed) == 0.5
    assert paper_metric("dynamath", items) == ("worst-case", 0.5)
    with pytest.raises(ValueError, match="is a folder"):
        load_benchmark("mathvista", str(tmp_path / "DynaMath"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no sample_variant"):
        load_benchmark("dynamath", str(empty))


def reference_wemath(parts):
    """Slow reference of We-Math's four_dimensional_metrics.py: parts {problem: (singles list, multi bool)}."""
    ik = ig = rm_strict = rm_loose = 0
    for singles, multi in parts.values():
        if not multi and all(singles):
            ig += 1
        if not multi and not all(singles):
            ik += 1
        if multi and not all(singles):
            rm_strict += 1
        if multi and not any(singles):
            rm_loose += 1
    n = len(parts)
    return (n - 0.5 * ig - rm_strict - ik) / n, (n - 0.5 * ig - rm_loose - ik) / n


def test_wemath_strict_and_loose_scores():
    from nanorevisual.benchmarks import paper_metric, wemath_scores
    parts = {  # every category: CM (strict and loose), IG, IK, RM strict only, RM loose, and a 3-step problem
        "2steps_1": ([True, True], True), "2steps_2": ([True, True], False), "2steps_3": ([False, True], False),
        "2steps_4": ([True, False], True), "2steps_5": ([False, False], True),
        "3steps_1": ([True, True, False], True), "3steps_2": ([True, True, True], False)}
    items = []
    for pid, (singles, multi) in parts.items():
        steps = int(pid[0])
        items += [({"ID": pid, "key": f"{steps}steps_{i + 1}"}, ok) for i, ok in enumerate(singles)]
        items.append(({"ID": pid, "key": f"{steps}steps_multi"}, multi))
    items.append(({"ID": "2steps_9", "key": "2steps_1"}, True))  # incomplete problem (e.g. --limit): not counted
    scores = wemath_scores(items)
    strict, loose = reference_wemath(parts)
    assert scores["problems"] == 7
    assert scores["strict"] == pytest.approx(strict) and scores["loose"] == pytest.approx(loose)
    assert (scores["IG"], scores["IK"], scores["RM_strict"], scores["RM_loose"]) == (2, 1, 3, 1)
    assert scores["loose"] > scores["strict"]
    assert paper_metric("wemath", items) == ("strict score", pytest.approx(strict))
    assert paper_metric("mathvista", items) is None
