"""Data readers, the prompt builder, SFT labels and one-line errors for bad input.

    python -m pytest -q tests/test_data.py
"""

import builtins
import json
import os

import pytest
import torch
from PIL import Image

from nanorevisual import data, prompts
from nanorevisual.files import DataError
from nanorevisual.prompts import IGNORE_INDEX


def write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


@pytest.fixture
def img_dir(tmp_path):
    Image.new("RGB", (56, 56), (200, 30, 30)).save(tmp_path / "red.png")
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    return tmp_path


def test_assistant_mask_on_row_with_image(img_dir, tiny_stack):
    _, processor = tiny_stack
    path = write(img_dir / "sft.jsonl", [
        {"messages": [{"role": "user", "content": [{"type": "image", "image": "red.png"},
                                                   {"type": "text", "text": "What colour is the shape?"}]},
                      {"role": "assistant", "content": "<think>The shape is red.</think> \\boxed{red}"}]}])
    (row,) = data.load_sft_rows(path)
    enc = prompts.encode_sft_row(processor, row["messages"], max_length=512)
    tok = processor.tokenizer
    label_ids = enc["labels"][enc["labels"] != IGNORE_INDEX]
    # exactly the assistant reply and its closing <|im_end|>, nothing else
    assert tok.decode(label_ids) == "<think>The shape is red.</think> \\boxed{red}<|im_end|>"
    expected = tok("<think>The shape is red.</think> \\boxed{red}<|im_end|>")["input_ids"]
    assert label_ids.tolist() == expected
    image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
    assert (enc["input_ids"] == image_pad).sum() == 4
    assert (enc["labels"][enc["input_ids"] == image_pad] == IGNORE_INDEX).all()
    assert enc["mm_token_type_ids"].sum() == 4 and enc["image_grid_thw"].tolist() == [[1, 4, 4]]


def test_problem_response_rows_use_the_rl_prompt(tmp_path, tiny_stack):
    _, processor = tiny_stack
    path = write(tmp_path / "sft.jsonl", [{"problem": "What is 3+4?", "response": "<think>3+4=7</think> \\boxed{7}"}])
    (row,) = data.load_sft_rows(path)
    assert row["messages"][0]["content"][-1]["text"] == "What is 3+4?" + prompts.INSTRUCTION
    enc = prompts.encode_sft_row(processor, row["messages"], max_length=512)
    assert processor.tokenizer.decode(enc["labels"][enc["labels"] != IGNORE_INDEX]).endswith("\\boxed{7}<|im_end|>")


def test_image_markers_place_images(img_dir):
    red = str(img_dir / "red.png")
    msgs = prompts.build_messages("Compare <image> with <image>.", [red, red])
    kinds = [item["type"] for item in msgs[0]["content"]]
    assert kinds == ["text", "image", "text", "image", "text"]
    assert msgs[0]["content"][-1]["text"] == "." + prompts.INSTRUCTION
    msgs = prompts.build_messages("What colour?", [red])  # no markers: images first
    assert [item["type"] for item in msgs[0]["content"]] == ["image", "text"]


def test_truncation_only_inside_assistant(tmp_path, tiny_stack):
    _, processor = tiny_stack
    long_reply = "<think>" + "3+4=7 " * 60 + "</think> \\boxed{7}"
    path = write(tmp_path / "sft.jsonl", [{"problem": "What is 3+4?", "response": long_reply}])
    (row,) = data.load_sft_rows(path)
    full = prompts.encode_sft_row(processor, row["messages"], max_length=10_000)
    prompt_len = int((full["labels"] != IGNORE_INDEX).nonzero()[0])  # first assistant token
    cut = prompts.encode_sft_row(processor, row["messages"], max_length=prompt_len + 5)
    assert cut["input_ids"].numel() == prompt_len + 5
    assert (cut["labels"] != IGNORE_INDEX).sum() == 5
    assert prompts.encode_sft_row(processor, row["messages"], max_length=prompt_len - 1) is None  # prompt too long


def test_collate_right_pads_and_concatenates_pixels(img_dir, tiny_stack):
    _, processor = tiny_stack
    path = write(img_dir / "sft.jsonl", [
        {"problem": "<image>What colour is the shape?", "response": "red", "images": ["red.png"]},
        {"problem": "What is 3+4?", "response": "<think>3+4=7</think> \\boxed{7}"},
        {"problem": "<image>Again?", "response": "red", "images": ["red.png"]}])
    encoded = [prompts.encode_sft_row(processor, r["messages"], 512) for r in data.load_sft_rows(path)]
    batch = prompts.collate_sft(encoded, processor.tokenizer.pad_token_id)
    B, L = batch["input_ids"].shape
    assert B == 3 and L == max(e["input_ids"].numel() for e in encoded)
    assert batch["pixel_values"].shape[0] == 2 * 16 and batch["image_grid_thw"].shape == (2, 3)
    for i, e in enumerate(encoded):
        n = e["input_ids"].numel()
        assert batch["attention_mask"][i, :n].all() and not batch["attention_mask"][i, n:].any()
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()


def test_rl_rows(img_dir):
    path = write(img_dir / "rl.jsonl", [
        {"id": "a", "problem": "<image>What colour is the shape?", "answer": "red", "images": ["red.png"]},
        {"problem": "What is 3+4?", "answer": 7}])
    rows = data.load_rl_rows(path)
    assert rows[0]["id"] == "a" and rows[0]["images"] == [str(img_dir / "red.png")]
    assert rows[1]["answer"] == "7" and rows[1]["id"] == "rl.jsonl-2" and rows[1]["images"] == []


@pytest.mark.parametrize("line, message", [
    ('{"problem": "x", "answer": "1"', "rl.jsonl:2: malformed JSON"),
    ({"answer": "1"}, "rl.jsonl:2: field 'problem': missing"),
    ({"problem": 5, "answer": "1"}, "rl.jsonl:2: field 'problem': must be str, got int"),
    ({"problem": "x"}, "rl.jsonl:2: field 'answer': missing"),
    ({"problem": "<image>x", "answer": "1", "images": ["gone.png"]}, "rl.jsonl:2: field 'images': image not found: gone.png"),
    ({"problem": "<image>x", "answer": "1", "images": ["broken.png"]}, "rl.jsonl:2: field 'images': undecodable image broken.png"),
    ({"problem": "<image><image>x", "answer": "1", "images": ["red.png"]}, "rl.jsonl:2: field 'images': 2 <image> markers but 1 images"),
    ({"problem": "x", "answer": "1", "images": "red.png"}, "rl.jsonl:2: field 'images': must be list, got str"),
    ("[1, 2]", "rl.jsonl:2: expected a JSON object, got list"),
])
def test_bad_rl_rows_give_one_line_errors(img_dir, line, message):
    path = write(img_dir / "rl.jsonl", [{"problem": "ok", "answer": "1"}, line])
    with pytest.raises(DataError) as e:
        data.load_rl_rows(path)
    text = str(e.value)
    assert "\n" not in text and text.startswith(str(img_dir)) and message in text
    rows = data.load_rl_rows(path, skip_bad=True) if "malformed" not in message and "JSON object" not in message else None
    if rows is not None:
        assert len(rows) == 1  # the bad row skipped (and counted on stdout), never silently kept


@pytest.mark.parametrize("row, message", [
    ({"problem": "x"}, "sft.jsonl:1: field 'response': missing"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "sft.jsonl:1: field 'messages': no assistant turn"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "sft.jsonl:1: field 'messages[0].role'"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "image": "gone.png"}]},
                   {"role": "assistant", "content": "x"}]}, "sft.jsonl:1: field 'images': image not found"),
    ({"messages": "hi"}, "sft.jsonl:1: field 'messages': must be list, got str"),
])
def test_bad_sft_rows(img_dir, row, message):
    path = write(img_dir / "sft.jsonl", [row])
    with pytest.raises(DataError, match=None) as e:
        data.load_sft_rows(path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_skip_bad_rows_prints_count(img_dir, capsys):
    path = write(img_dir / "sft.jsonl", [{"problem": "x"}, {"problem": "a", "response": "b"}, {"response": "y"}])
    rows = data.load_sft_rows(path, skip_bad=True)
    assert len(rows) == 1
    assert "skipped 2 bad rows" in capsys.readouterr().out


def test_missing_file_folder_and_empty_file(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        data.load_rl_rows("nope.jsonl")
    with pytest.raises(DataError, match="is a folder"):
        data.load_rl_rows(str(tmp_path))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty.jsonl: no rows"):
        data.load_sft_rows(str(tmp_path / "empty.jsonl"))


def test_parquet_without_pyarrow_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "rows.parquet"
    path.write_bytes(b"PAR1")
    real_import = builtins.__import__

    def no_pyarrow(name, *a, **k):
        if name.startswith("pyarrow"):
            raise ImportError("No module named 'pyarrow'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(ImportError, match="pip install pyarrow"):
        data.load_rl_rows(str(path))


def test_parquet_rows_with_image_bytes(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import io
    import pyarrow.parquet as pq
    buf = io.BytesIO()
    Image.new("RGB", (30, 20), (0, 0, 255)).save(buf, format="PNG")
    table = pa.table({"problem": ["<image>colour?"], "answer": ["blue"],
                      "images": [[{"bytes": buf.getvalue(), "path": None}]]})
    pq.write_table(table, tmp_path / "rows.parquet")
    (row,) = data.load_rl_rows(str(tmp_path / "rows.parquet"))
    assert row["images"][0].size == (30, 20)


def test_toy_data_is_deterministic(tmp_path):
    from nanorevisual.toy import make_toy_data
    a, b = tmp_path / "a", tmp_path / "b"
    make_toy_data(str(a), num_sft=50, num_mm_train=5, num_mm_val=5)
    make_toy_data(str(b), num_sft=50, num_mm_train=5, num_mm_val=5)
    for name in ("sft_train.jsonl", "mm_val.jsonl", "text_val.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "images" / "mm_val-0003.png").read_bytes() == (b / "images" / "mm_val-0003.png").read_bytes()
    rows = data.load_rl_rows(str(a / "mm_val.jsonl"))
    assert len(rows) == 5 and all(len(r["images"]) == 1 for r in rows)
    assert len(data.load_rl_rows(str(a / "text_val.jsonl"))) == 20
    sft = [json.loads(line) for line in open(a / "sft_train.jsonl")]
    bare = [r for r in sft if r["problem"] == "What colour is the shape?"]
    assert 0 < len(bare) < len(sft) // 2  # the prior rows exist (the toy.py docstring says why)
    assert torch.tensor([1]).item() == 1 and os.path.exists(a / "DONE")
