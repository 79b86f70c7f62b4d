"""Shared fixtures: hermetic (HF_HUB_OFFLINE=1), CPU, the tiny Qwen2.5-VL stack built in-process."""

import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"  # before any transformers import: tests never reach the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The tiny model written as an HF folder once per session."""
    from nanorevisual.tiny import build_tiny
    return build_tiny(str(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="session")
def tiny_stack(tiny_dir):
    """(model, processor) loaded through the same function real users call."""
    from nanorevisual.model import load_model_and_processor
    model, processor = load_model_and_processor(tiny_dir)
    return model, processor


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory):
    from nanorevisual.toy import make_toy_data
    out = str(tmp_path_factory.mktemp("toy") / "data")
    make_toy_data(out, num_sft=256, num_mm_train=64, num_mm_val=16)
    return out
