"""Tests of bench.py that run no benchmark: `gpu` refuses a machine without CUDA in one line; the
Qwen2.5 shapes that `plan` and `gpu` build have the model cards' sizes; and, slow, the GPU check's
whole path on a CPU with a small model (what a GPU node runs, minus CUDA)."""
import math
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import bench  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the check would run")
def test_gpu_check_refuses_a_machine_without_cuda_in_one_line():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench.py"), "gpu"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("bench.py: error: gpu: no CUDA device") and proc.stderr.count("\n") == 1


def test_qwen25_shapes_have_the_model_cards_sizes():
    # the model cards: Qwen2.5-0.5B 0.49B parameters, 0.36B without embeddings; Qwen2.5-7B 7.61B, 6.53B
    for size, total, body in (("0.5B", 0.49, 0.36), ("7B", 7.61, 6.53)):
        config = bench.qwen25_config(size)
        n = bench.count_params(config)  # on the meta device
        embeddings = config.vocab_size * config.hidden_size * (1 if config.tie_word_embeddings else 2)
        assert math.floor(n / 1e7) / 100 == total and round((n - embeddings) / 1e9, 2) == body, size


@pytest.mark.slow
def test_gpu_check_runs_on_a_cpu_with_a_small_model(capsys):
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=4096, tie_word_embeddings=True)
    sizes = dict(sft_chats=64, sft_batch=16, sft_micro=8, sft_steps=3, rl_prompts=4, rl_group=2, rl_new=16, rl_micro=4,
                 rl_steps=2, greedy_prompts=4, greedy_new=8, fsdp_steps=1)
    assert bench.gpu_check(torch.device("cpu"), shape, sizes, seed=0, gpus=2) == 0  # two gloo processes for --fsdp
    out = capsys.readouterr().out
    assert "gpu check: 7 of 7 passed" in out and "MFU unknown" in out
