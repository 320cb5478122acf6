#!/usr/bin/env python3
"""The llama.cpp peer of `lorafuse bench model`: prefill the given token ids, then greedy-decode
--gen tokens (end tokens ignored), on the CPU through llama-cpp-python. Prints one JSON object."""
import argparse
import json
import time

import llama_cpp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", required=True, help="JSON list of prompt token ids")
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    ids = json.loads(a.ids)
    m = llama_cpp.Llama(model_path=a.model, n_ctx=len(ids) + a.gen + 8, n_threads=a.threads,
                        n_threads_batch=a.threads, n_batch=max(len(ids), 8), verbose=False)
    best_prefill, best_decode = 0.0, 0.0
    for _ in range(a.reps):
        m.reset()
        t0 = time.perf_counter()
        m.eval(ids)
        t1 = time.perf_counter()
        for _ in range(a.gen):
            tok = m.sample(temp=0.0)  # greedy
            m.eval([tok])
        t2 = time.perf_counter()
        best_prefill = max(best_prefill, len(ids) / (t1 - t0))
        best_decode = max(best_decode, a.gen / (t2 - t1))
    print(json.dumps({"version": llama_cpp.__version__, "prefill_tps": best_prefill, "decode_tps": best_decode}))


if __name__ == "__main__":
    main()
