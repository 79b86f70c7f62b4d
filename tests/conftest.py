"""Shared fixtures: hermetic (HF_HUB_OFFLINE=1), CPU, the tiny Qwen2.5-VL stack built in-process."""

import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"  # before any transformers import: tests never reach the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))  # the margins run sets 1 and 2


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: launches scripts or torchrun, or runs a study (fast tier: -m 'not slow')")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The tiny model written as an HF folder once per session."""
    from nanorevisual.toy import ensure_tiny_model
    return ensure_tiny_model(str(tmp_path_factory.mktemp("tiny") / "model"))


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


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory):
    """The tiny model in a folder laid out like Qwen2.5-VL-7B-Instruct, with its generation_config.json sampling
    defaults (repetition penalty raised to 1.3) and bf16 shards: what a real --model folder looks like."""
    from nanorevisual.toy import tiny_stack as build_tiny_stack
    from qwen_folder import write_qwen_style_folder
    out = str(tmp_path_factory.mktemp("qwen") / "Qwen2.5-VL-7B-Instruct")
    write_qwen_style_folder(*build_tiny_stack(), out)
    return out
