"""Benchmarks, each side by side with a reference implementation in one run.

    python bench.py envs      # rooms/hands generated and solved per second vs gym-sokoban
    python bench.py sft       # SFT tokens/s of the tiny model vs a Hugging Face Trainer loop
    python bench.py sampler   # KV-cached sampler tokens/s vs model.generate and vs no cache

The peers (gym-sokoban, the Trainer's extras) are installed only for benchmarking and are never
dependencies of the project. Each benchmark's last line is its headline ratio.
"""
import argparse
import sys

# -----------------------------------------------------------------------------
# envs


def bench_envs(args):
    raise NotImplementedError


# -----------------------------------------------------------------------------
# sft


def bench_sft(args):
    raise NotImplementedError


# -----------------------------------------------------------------------------
# sampler


def bench_sampler(args):
    raise NotImplementedError


# -----------------------------------------------------------------------------

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=["envs", "sft", "sampler"], help="which benchmark to run")
    parser.add_argument("--seconds", type=float, default=10.0, help="rough time budget per measured item")
    parser.add_argument("--seed", type=int, default=0, help="seed for every random choice")
    args = parser.parse_args()
    {"envs": bench_envs, "sft": bench_sft, "sampler": bench_sampler}[args.which](args)
    sys.exit(0)
