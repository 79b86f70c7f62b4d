"""Time one GRPO step of TRL's GRPOTrainer on the project's tiny model: the reference side of
bench/bench_grpo_step.py, which runs this script with --trl-python. Not part of the project: nothing
imports it, and TRL is never a dependency. Install TRL in its own virtual environment, torch first
(the CPU wheel), never torchvision (it breaks transformers' Qwen2.5-VL imports on CPU):

    python3 -m venv /tmp/trl-venv
    /tmp/trl-venv/bin/pip install torch==2.13.0
    /tmp/trl-venv/bin/pip install trl==1.16.0 transformers==5.23.0 accelerate==1.15.0 \\
        datasets==5.2.0 tokenizers==0.23.3 pillow==13.0.0
    /tmp/trl-venv/bin/python bench/trl_grpo_step.py --load-dir TINY --data DATA/rl.jsonl --steps 20

The step is ours: 8 prompts x 4 samples, at most 32 new tokens, temperature 1, lr 1e-5, beta 0 (no
reference model), one optimizer step per generation batch, HF generate (no vLLM), CPU, offline.
The reward is a constant: a random tiny model earns none anyway, and TRL still runs the full
forward, backward and optimizer step. The last line printed is "median of steps 2..N: X s".
"""

import argparse
import json
import os
import statistics
import tempfile
import time

for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(key, "1")

import torch
from datasets import Dataset
from PIL import Image
from transformers import AutoModelForImageTextToText, Qwen2_5_VLProcessor, TrainerCallback
from trl import GRPOConfig, GRPOTrainer


class ImageOnlyProcessor(Qwen2_5_VLProcessor):
    """The Qwen2.5-VL processor without its video processor (which needs torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        kwargs.pop("video_processor", None)
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                         chat_template=chat_template, **kwargs)


class MixedBatchTrainer(GRPOTrainer):
    """TRL 1.16 without vLLM crashes on a batch mixing image and text prompts: a text row's images
    come back from _generate as None, which the processor rejects; it accepts [] for no image."""

    def _generate(self, prompts):
        out = list(super()._generate(prompts))
        if out[6] is not None:  # the per-prompt image lists
            out[6] = [imgs or [] for imgs in out[6]]
        return tuple(out)


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step: generation, reward, forward, backward, optimizer step."""

    def __init__(self):
        self.times, self.start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.start)


def constant_reward(completions, **kwargs):
    return [0.0] * len(completions)


def load_prompts(path):
    """rl.jsonl rows (problem, answer, images relative to the file) as TRL chat prompts."""
    folder, rows = os.path.dirname(os.path.abspath(path)), []
    with open(path) as f:
        for row in map(json.loads, f):
            images = [Image.open(os.path.join(folder, p)).convert("RGB")
                      for p in row.get("images", [])]
            text = row["problem"].replace("<image>", "")  # TRL puts the image in front of the text
            rows.append({"prompt": [{"role": "user", "content": text}], "images": images,
                         "answer": row["answer"]})
    return Dataset.from_list(rows)


def main():
    parser = argparse.ArgumentParser(description="Time TRL GRPOTrainer steps on a local HF model.")
    parser.add_argument("--load-dir", required=True, help="HF model folder (the tiny model)")
    parser.add_argument("--data", required=True, help="rl.jsonl from bench_grpo_step.py")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps; median over 2..N")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (step 1 is warm-up)")
    torch.set_num_threads(args.threads)

    processor = ImageOnlyProcessor.from_pretrained(args.load_dir)
    tok = processor.tokenizer
    model = AutoModelForImageTextToText.from_pretrained(args.load_dir, dtype=torch.float32)
    # stop on either end token and never sample a vision token, as the project's rollout does
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids(t)
                                            for t in ("<|im_end|>", "<|endoftext|>")]
    vision = [tok.convert_tokens_to_ids(t)
              for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")]
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl_grpo_step_"), use_cpu=True, report_to="none",
        save_strategy="no", eval_strategy="no", disable_tqdm=True, max_steps=args.steps,
        per_device_train_batch_size=32, num_generations=4,  # 8 prompts x 4 completions
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
        max_completion_length=32, temperature=1.0, learning_rate=1e-5, beta=0.0,
        use_vllm=False, gradient_checkpointing=False, dataloader_num_workers=0,
        generation_kwargs={"suppress_tokens": vision})
    timer = StepTimer()
    trainer = MixedBatchTrainer(model=model, reward_funcs=constant_reward, args=config,
                                train_dataset=load_prompts(args.data), processing_class=processor,
                                callbacks=[timer])
    trainer.train()
    print("step times: " + " ".join(f"{t:.3f}" for t in timer.times))
    print(f"median of steps 2..{len(timer.times)}: {statistics.median(timer.times[1:]):.3f} s")


if __name__ == "__main__":
    main()
