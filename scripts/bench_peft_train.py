#!/usr/bin/env python3
"""The PyTorch + PEFT peer of `lorafuse bench train`: LoRA training steps (forward, backward,
AdamW) of the same GGUF model, dequantized to f32 by transformers, on the CPU, over the same
token ids. Run with .venv-peft/bin/python (scripts/setup-peft.sh). Prints one JSON object."""
import argparse
import json
import os
import resource
import time
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")
warnings.filterwarnings("ignore")

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a GGUF file")
    ap.add_argument("--ids", required=True, help="a JSON file: a list of sequences of token ids")
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=32)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--targets", default="q_proj,v_proj")
    ap.add_argument("--steps", type=int, default=3, help="timed steps, after one warm-up step")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    with open(a.ids) as f:
        ids = torch.tensor(json.load(f))
    d, name = os.path.split(os.path.abspath(a.model))
    t0 = time.perf_counter()
    base = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    load_s = time.perf_counter() - t0
    cfg = LoraConfig(task_type="CAUSAL_LM", r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout,
                     target_modules=a.targets.split(","))
    model = get_peft_model(base, cfg)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)

    def step():
        opt.zero_grad(set_to_none=True)
        # labels = inputs: transformers shifts them, so every position but the last is labelled
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        return float(loss)

    step()  # warm-up
    times, losses = [], []
    for _ in range(a.steps):
        t = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t)
    tokens = ids.numel()
    print(json.dumps({
        "engine": f"PyTorch {torch.__version__.split('+')[0]} + PEFT (CPU, {a.threads} threads, f32)",
        "tokens_per_step": tokens,
        "step_s": sum(times) / len(times),
        "best_step_s": min(times),
        "tokens_per_s": tokens / min(times),
        "losses": losses,
        "load_s": load_s,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


if __name__ == "__main__":
    main()
