"""Reading user files for the training data (data.py) and the benchmarks (benchmarks.py): rows of
.jsonl / .json / .csv / .parquet files, images from paths, bytes or HF image dicts. Row helpers
raise ValueError("field 'X': ..."); the loop that knows file and line adds the location.
"""

import csv
import io
import json
import os

from PIL import Image

from nanorevisual.common import MissingPackage, UserError

READABLE = (".jsonl", ".json", ".csv", ".parquet")


class DataError(UserError, ValueError):
    """A bad input file or row; the message is one line: "file:line: field 'X': problem"."""


def read_records(path):
    """[(line or row number from 1, row)] of a .jsonl, .json (a list of rows, a dict of rows keyed
    by id, or JSON lines), .csv or .parquet file."""
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder; expected a {', '.join(READABLE)} file")
    ext = os.path.splitext(path)[1].lower()
    if ext not in READABLE:
        raise DataError(f"{path}: unsupported file type (expected {', '.join(READABLE)})")
    if ext == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise MissingPackage(f"{path}: reading parquet needs pyarrow: "
                                 "pip install pyarrow") from None
        try:
            return list(enumerate(pq.read_table(path).to_pylist(), start=1))
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(f"{path}: unreadable parquet file ({one_line(e)[:200]})") from None
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")  # utf-8-sig: tolerate a byte-order mark
    except UnicodeDecodeError as e:
        lineno = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start]:#04x})") from None
    if ext == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            return [(i, dict(row)) for i, row in enumerate(reader, start=1)]
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    if ext == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            if "Extra data" not in e.msg:  # a .json file holding JSON lines is read as such below
                raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
        except RecursionError:
            pass  # read line by line below, which names the line
        else:
            if isinstance(rows, dict) and rows and all(isinstance(v, dict) for v in rows.values()):
                return list(enumerate(({"_key": k, **row} for k, row in rows.items()), start=1))
            if not isinstance(rows, list):
                raise DataError(f"{path}:1: expected a JSON list of rows or a dict of rows "
                                "keyed by id")
            return list(enumerate(rows, start=1))
    lines = enumerate(text.splitlines(), start=1)
    return [(lineno, json_line(line, path, lineno)) for lineno, line in lines if line.strip()]


def one_line(error):
    return " ".join(str(error).split())


def json_line(line, path, lineno):
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
    except RecursionError:  # e.g. a line of 100000 "["
        raise DataError(f"{path}:{lineno}: JSON nested too deeply") from None


def check_row(row):
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    return row


def load_image(value, base_dir, field="images"):
    """A path (absolute, or relative to base_dir: the data file's folder, never the working
    directory), bytes, an HF {"bytes", "path"} dict or a PIL image -> a PIL image or an absolute
    path, checked now: the file exists and decodes in full."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        try:
            image = Image.open(io.BytesIO(value))
            image.load()
        except Exception as e:  # PIL raises several types for bad bytes
            why = type(e).__name__
            raise ValueError(f"field '{field}': undecodable image bytes ({why})") from None
        return image
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"field '{field}': must hold paths or images, got {type(value).__name__}")
    rel = value.strip()
    path = os.path.join(base_dir, rel)  # an absolute rel stays itself
    if not os.path.isfile(path):
        raise ValueError(f"field '{field}': image not found: {rel}")
    try:
        with Image.open(path) as image:
            image.load()  # every pixel (verify() skips JPEG data): a truncated file fails now
    except Exception as e:
        raise ValueError(f"field '{field}': undecodable image {rel} ({one_line(e)})") from None
    return os.path.abspath(path)


def open_image(image):
    """A loaded image (PIL or path) as RGB."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    with Image.open(image) as img:
        return img.convert("RGB")
