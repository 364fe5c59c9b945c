"""Training throughput on this machine: steps/s, peak memory, and the share of data loading.

Usage: python benchmarks/training_throughput.py CONFIG [--steps N] [--set KEY=VALUE ...]

Runs ``medidiff train`` for N steps in a child process (peak resident memory from the child's
rusage), then times the data side alone (drawing N batches of patches and their noise) in this
process, so "data share" = data time per step / training time per step. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        overrides = [*args.overrides, f"output_dir={run}", f"train.max_steps={args.steps}", "train.val_every=0",
                     f"train.save_every={args.steps}", "train.log_every=1"]
        cmd = [sys.executable, "-m", "medidiff", "train", "--config", args.config, "--progress", "log"]
        for o in overrides:
            cmd += ["--set", o]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        wall = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        # skip the first steps (warm-up, lazy imports); steps_per_s is per logged window of one step
        times = [1.0 / r["steps_per_s"] for r in records[2:]]
        step_s = sum(times) / len(times)

        import torch

        from medidiff.config import load_config
        from medidiff.data import PatchDataset
        from medidiff.training import draw_sigmas, make_noisy

        cfg = load_config(args.config, overrides)
        dataset = PatchDataset.from_config(cfg, "training")
        start = time.perf_counter()
        for step in range(args.steps):
            batch = torch.stack([dataset.sample(step * cfg.train.batch_size + i)["x0"]
                                 for i in range(cfg.train.batch_size)])
            g = torch.Generator().manual_seed(step)
            sigma, scan = draw_sigmas(cfg, batch.shape[0], g)
            make_noisy(cfg, batch, sigma, scan, g)
        data_s = (time.perf_counter() - start) / args.steps
    print(json.dumps({
        "config": args.config, "steps": args.steps, "batch_size": cfg.train.batch_size,
        "patch_size": cfg.data.patch_size, "steps_per_s": round(1.0 / step_s, 3),
        "step_time_s": round(step_s, 4), "data_time_per_step_s": round(data_s, 4),
        "data_share": round(data_s / step_s, 3), "peak_rss_mb": round(peak_mb, 1),
        "wall_s_including_startup": round(wall, 1), "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
    }))


if __name__ == "__main__":
    main()
