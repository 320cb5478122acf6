#!/usr/bin/env python3
"""lorafuse's LoRA GGUF export checked inside llama.cpp itself (llama-cpp-python).

Run with .venv-bench/bin/python (scripts/setup-bench.sh). Makes random PEFT adapters here (numpy; no
torch), exports each with `lorafuse export gguf-lora`, loads the base GGUF in llama.cpp with the
exported adapters, and compares llama.cpp's logits at every position of a chat prompt with
`lorafuse logits --adapter ...` on the same token ids. Cases:
  base          no adapter
  all7          r 8, alpha 16, all seven projections of every layer (q and k rows permuted on export)
  rslora        r 4, alpha 8, rsLoRA (scale alpha/sqrt(r)), q/k/v
  fusion        all7 at 0.6 and rslora at 0.4 at once (llama.cpp's runtime fusion, lorafuse's fused kernel)
  trained       --adapter DIR, when given (the adapter .ci/run trains)
  control       rslora with its q/k rows left in Hugging Face order in the GGUF: on the f16 base its
                off must exceed 10x the limit, showing the check sees a wrong export
And lorafuse reading the exported GGUFs back (--adapter F.gguf) must give exactly the logits of their
PEFT directories.
Metrics, llama.cpp's against lorafuse's: top-1 agreement per position; the logits' relative Frobenius
error; and the adapter's effect (its logits minus the base's, in each framework) compared through
"off": how far apart the two effects are, in units of how far apart the two bases already are
(||effect_cpp - effect_ours|| / ||base_cpp - base_ours||). The frameworks round differently, so the bases
differ; an exact export adds about as much again (off ~1-3), a wrong permutation, scale or layout adds the
effect itself (off ~ effect size / base error: 10-500 here). A case passes at off <= 4.

Two bases. "f16": the model converted to f16 by llama.cpp's own llama_model_quantize, read by both
(llama.cpp's CPU matmul rounds activations to f16, lorafuse keeps them f32: logits ~2e-3 apart), also
logits <= 1e-2 and top-1 >= 0.95. "file": the GGUF as given (Q4_1), as users run it: llama.cpp's CPU
kernels quantize activations to 8 bits for the 4-bit dot products (logits ~3e-2 apart), and random
adapters' flat distributions make top-1 fragile: top-1 >= 0.75. 
Then `lorafuse export gguf`: all7 at 0.6 and rslora at 0.4 merged into one GGUF (f16, q8_0, q4_1), run
by llama.cpp and by lorafuse on the same file; llama.cpp's merged f16 against its own runtime fusion of
the two LoRA GGUFs; and with --adapter, that adapter merged at f16: greedy tokens of three prompts,
llama.cpp against lorafuse, identical. Exits 1 when any case fails.
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

import llama_cpp

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPT = "Name the three primary colours of light, and say why screens use them."


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        dt = {"F32": "<f4", "I32": "<i4"}[t["dtype"]]
        out[name] = np.frombuffer(raw[8 + n + a : 8 + n + b], dtype=dt).reshape(t["shape"])
    return out


def make_adapter(d, dims, layers, r, alpha, targets, rslora, rng):
    """A PEFT adapter with random A and B (B large enough that the effect is plain)."""
    os.makedirs(d, exist_ok=True)
    tensors = {}
    for layer in range(layers):
        for t in targets:
            inp, out = dims[t]
            block = "mlp" if t in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            p = f"base_model.model.model.layers.{layer}.{block}.{t}"
            tensors[f"{p}.lora_A.weight"] = rng.normal(0, 1 / np.sqrt(inp), (r, inp))
            tensors[f"{p}.lora_B.weight"] = rng.normal(0, 2.0 / np.sqrt(r * layers), (out, r))
    write_safetensors(os.path.join(d, "adapter_model.safetensors"), tensors)
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0,
           "target_modules": targets, "bias": "none", "fan_in_fan_out": False, "use_rslora": rslora}
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump(cfg, f)
    return d


def lorafuse(args, *cmd):
    r = subprocess.run([args.lorafuse, *cmd], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"lorafuse {' '.join(cmd)} failed:\n{r.stderr}")
    return r


def ours(args, model, tmp, name, adapters):
    out = os.path.join(tmp, f"{name}.logits.safetensors")
    cmd = ["logits", "--model", model, "--prompt", PROMPT, "--out", out]
    for d, w in adapters:
        cmd += ["--adapter", f"{d}:{w}"]
    lorafuse(args, *cmd)
    t = read_safetensors(out)
    return t["tokens"].astype(int).tolist(), t["logits"].astype(np.float64)


def to_f16(model, out):
    """The model in f16, converted by llama.cpp itself (requantizing: its 4-bit values widened)."""
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = 1  # LLAMA_FTYPE_MOSTLY_F16
    p.allow_requantize = True
    if llama_cpp.llama_model_quantize(model.encode(), out.encode(), llama_cpp.ctypes.byref(p)) != 0:
        sys.exit(f"llama.cpp could not convert {model} to f16")


def unpermuted_copy(src, dst, heads, hd):
    """A copy of the PEFT adapter `src` whose q/k B rows are pre-permuted by the inverse of
    llama.cpp's rotary permutation, so its export carries them in Hugging Face order: a wrong GGUF."""
    os.makedirs(dst, exist_ok=True)
    t = read_safetensors(os.path.join(src, "adapter_model.safetensors"))
    out = {}
    for name, a in t.items():
        target = name.split(".")[-3]
        if name.endswith("lora_B.weight") and target in heads:
            h = heads[target]
            rows = a.shape[0]
            # export maps row h*hd + j*half + i to h*hd + 2i + j; feed it rows already moved back
            idx = np.arange(rows).reshape(h, 2, hd // 2).transpose(0, 2, 1).reshape(rows)
            inv = np.empty_like(idx)
            inv[idx] = np.arange(rows)
            a = a[inv]
        out[name] = a
    write_safetensors(os.path.join(dst, "adapter_model.safetensors"), out)
    with open(os.path.join(src, "adapter_config.json")) as f, open(os.path.join(dst, "adapter_config.json"), "w") as g:
        g.write(f.read())
    return dst


class LlamaCpp:
    def __init__(self, model, n_ctx, threads):
        self.llm = llama_cpp.Llama(model_path=model, n_ctx=n_ctx, n_batch=n_ctx, logits_all=True,
                                   n_threads=threads, verbose=False)
        self.loaded = {}

    def logits(self, tokens, adapters):
        """Logits at every position with `adapters` [(gguf path, scale)] applied, nothing else."""
        ptrs, scales = [], []
        for path, s in adapters:
            if path not in self.loaded:
                p = llama_cpp.llama_adapter_lora_init(self.llm._model.model, path.encode())
                if not p:
                    sys.exit(f"llama.cpp refused the LoRA GGUF {path}")
                self.loaded[path] = p
            ptrs.append(self.loaded[path])
            scales.append(s)
        n = len(ptrs)
        arr = (llama_cpp.llama_adapter_lora_p_ctypes * max(n, 1))(*ptrs)
        sc = (llama_cpp.ctypes.c_float * max(n, 1))(*scales)
        if llama_cpp.llama_set_adapters_lora(self.llm._ctx.ctx, arr if n else None, n, sc if n else None):
            sys.exit("llama.cpp could not set the adapters")
        self.llm.reset()  # the KV cache of an earlier eval was computed under other adapters
        self.llm.eval(tokens)
        return np.array(self.llm.scores[: len(tokens)], dtype=np.float64)


def greedy_cpp(llm, prompt, n, eos):
    """llama.cpp's greedy continuation of `prompt`: argmax each step, up to n tokens or EOS."""
    llm.reset()
    llm.eval(prompt)
    out = []
    for _ in range(n):
        t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(t)
        if t in eos:
            break
        llm.eval([t])
    return out


def merged_models(args, tmp, all7, rs, trained, f16_base):
    """`lorafuse export gguf`: the fusion merged into one GGUF, run by llama.cpp and by lorafuse."""
    failed = []
    print("merged GGUFs (lorafuse export gguf), llama.cpp against lorafuse on the same file:")
    print(f"  {'file':<28} {'top-1':>7} {'logits rel err':>15}  {'limit':>7}")
    tokens = None
    runtime_cpp = None
    # f16: both frameworks' rounding is small; q8_0 and q4_1: llama.cpp quantizes the activations to
    # 8 bits for its quantized dot products (lorafuse's own q8_0 path agrees with the file's exact
    # f32 values to 2e-4), ~8e-2 apart on this adapter-perturbed model: a sanity bound there (a wrong
    # permutation or block layout is off by ~0.7)
    for ty, limit, min_top1 in [("f16", 1e-2, 0.95), ("q8_0", 0.15, 0.85), ("q4_1", 0.15, 0.8)]:
        out = os.path.join(tmp, f"merged-{ty}.gguf")
        lorafuse(args, "export", "gguf", "--model", args.model, "--adapter", f"{all7}:0.6", "--adapter",
                 f"{rs}:0.4", "--type", ty, "--out", out)
        tokens, mine = ours(args, out, tmp, f"merged-{ty}", [])
        cpp = LlamaCpp(out, len(tokens) + 8, args.threads)
        theirs = cpp.logits(tokens, [])
        del cpp
        top1 = float(np.mean(mine.argmax(1) == theirs.argmax(1)))
        err = rel(theirs, mine)
        ok = err <= limit and top1 >= min_top1
        print(f"  {'all7:0.6 + rslora:0.4 ' + ty:<28} {top1:>7.3f} {err:>15.2e}  {limit:>7}  {'ok' if ok else 'FAIL'}")
        if not ok:
            failed.append(f"merged/{ty}")
        if ty == "f16":
            # llama.cpp's own runtime fusion of the two exported LoRA GGUFs on its f16 base
            merged_cpp = theirs
            cpp = LlamaCpp(f16_base, len(tokens) + 8, args.threads)
            la = os.path.join(tmp, "f16-all7.gguf")
            lr = os.path.join(tmp, "f16-rslora.gguf")
            runtime_cpp = cpp.logits(tokens, [(la, 0.6), (lr, 0.4)])
            del cpp
            err = rel(merged_cpp, runtime_cpp)
            ok = err <= 1e-2
            print(f"  llama.cpp: merged f16 against its runtime fusion of the LoRA GGUFs: {err:.2e} "
                  f"(limit 1e-2) {'ok' if ok else 'FAIL'}")
            if not ok:
                failed.append("merged/runtime")
    if trained:
        # greedy text of the trained adapter merged at f16, token for token
        out = os.path.join(tmp, "trained-f16.gguf")
        lorafuse(args, "export", "gguf", "--model", args.model, "--adapter", trained, "--type", "f16", "--out", out)
        cpp = LlamaCpp(out, 512, args.threads)
        eos = {cpp.llm.token_eos()}
        for prompt in ["Write a haiku about the sea.", "How do I pick a lock?", "What is 17 times 3?"]:
            r = lorafuse(args, "generate", "--model", out, "--prompt", prompt, "--max-new-tokens", "32",
                         "--temperature", "0", "--json")
            g = json.loads(r.stdout.strip().splitlines()[-1])
            theirs = greedy_cpp(cpp.llm, g["prompt_ids"], len(g["ids"]), eos)
            same = theirs[: len(g["ids"])] == g["ids"]
            print(f"  greedy, trained adapter merged at f16, {prompt!r}: {len(g['ids'])} tokens "
                  f"{'identical' if same else 'DIFFER'}")
            if not same:
                print(f"    lorafuse: {g['ids']}\n    llama.cpp: {theirs}")
                failed.append(f"greedy/{prompt}")
        del cpp
    return failed


def hf_round_trip(args, tmp, adapter):
    """`lorafuse export gguf` from a Hugging Face directory: the adapter merged into an f16 HF
    directory (`fuse --merge-into-base`, the tokenizer rebuilt from the GGUF), that directory
    exported as GGUF (the tokenizer converted back). llama.cpp must read the same vocabulary and
    tokenize as from the original file, and the export must generate what the directory does, in
    lorafuse and in llama.cpp."""
    failed = []
    hf = os.path.join(tmp, "hf-merged")
    out = os.path.join(tmp, "from-hf.gguf")
    lorafuse(args, "fuse", "--adapter", adapter, "--merge-into-base", "--model", args.model,
             "--merged-dtype", "f16", "--out", hf)
    lorafuse(args, "export", "gguf", "--model", hf, "--type", "f16", "--out", out)
    print("a Hugging Face directory exported as GGUF (fuse --merge-into-base, then export gguf):")
    orig = llama_cpp.Llama(model_path=args.model, vocab_only=True, verbose=False)
    cpp = LlamaCpp(out, 512, args.threads)
    back = cpp.llm
    keys = [k for k in orig.metadata if k.startswith("tokenizer.") or k.startswith(orig.metadata["general.architecture"])]
    diff = [k for k in keys if k != "general.file_type" and back.metadata.get(k) != orig.metadata[k]]
    vocab = lambda m: [(llama_cpp.llama_token_get_text(m._model.vocab, i), llama_cpp.llama_token_get_attr(m._model.vocab, i))
                       for i in range(m.n_vocab())]
    same_vocab = vocab(orig) == vocab(back)
    texts = ["Hello, world! 12345 ?? <|im_start|>user\nWhat's 3.14 x 2?<|im_end|>\n", "  tabs\tand\n\nnewlines, caf\u00e9 \u4f60\u597d"]
    same_tok = all(orig.tokenize(t.encode(), add_bos=False, special=True) ==
                   back.tokenize(t.encode(), add_bos=False, special=True) for t in texts)
    ok = not diff and same_vocab and same_tok
    print(f"  metadata ({len(keys)} tokenizer and {orig.metadata['general.architecture']} keys) "
          f"{'equal' if not diff else 'DIFFER: ' + ', '.join(diff)}; vocabulary of {back.n_vocab()} tokens "
          f"{'equal' if same_vocab else 'DIFFERS'}; llama.cpp's tokenization {'equal' if same_tok else 'DIFFERS'}"
          f"  {'ok' if ok else 'FAIL'}")
    if not ok:
        failed.append("hf/tokenizer")
    eos = {back.token_eos()}
    for prompt in ["Write a haiku about the sea.", "What is 17 times 3?"]:
        gen = lambda model: json.loads(lorafuse(args, "generate", "--model", model, "--prompt", prompt,
                                                "--max-new-tokens", "32", "--temperature", "0", "--json")
                                       .stdout.strip().splitlines()[-1])
        from_dir, from_gguf = gen(hf), gen(out)
        theirs = greedy_cpp(back, from_gguf["prompt_ids"], len(from_gguf["ids"]), eos)
        same = from_dir["ids"] == from_gguf["ids"] and from_dir["prompt_ids"] == from_gguf["prompt_ids"]
        same_cpp = theirs[: len(from_gguf["ids"])] == from_gguf["ids"]
        print(f"  greedy {prompt!r}: {len(from_gguf['ids'])} tokens; lorafuse on the GGUF and on the directory "
              f"{'identical' if same else 'DIFFER'}; llama.cpp on the GGUF {'identical' if same_cpp else 'DIFFERS'}")
        if not (same and same_cpp):
            print(f"    directory: {from_dir['ids']}\n    GGUF:      {from_gguf['ids']}\n    llama.cpp: {theirs}")
            failed.append(f"hf/greedy/{prompt}")
    del back, cpp, orig
    return failed


def rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--lorafuse", default="target/release/lorafuse")
    ap.add_argument("--adapter", help="also check this PEFT adapter (e.g. one lorafuse trained)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()

    # SmolLM2-135M's projection sizes, from the GGUF's metadata as llama.cpp reads it
    meta = llama_cpp.Llama(model_path=args.model, vocab_only=True, verbose=False).metadata
    arch = meta["general.architecture"]
    h, f = int(meta[f"{arch}.embedding_length"]), int(meta[f"{arch}.feed_forward_length"])
    layers = int(meta[f"{arch}.block_count"])
    heads, kv = int(meta[f"{arch}.attention.head_count"]), int(meta[f"{arch}.attention.head_count_kv"])
    hd = h // heads
    dims = {"q_proj": (h, heads * hd), "k_proj": (h, kv * hd), "v_proj": (h, kv * hd), "o_proj": (heads * hd, h),
            "gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h)}

    rng = np.random.default_rng(20261202)
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        all7 = make_adapter(os.path.join(tmp, "all7"), dims, layers, 8, 16, TARGETS, False, rng)
        rs = make_adapter(os.path.join(tmp, "rslora"), dims, layers, 4, 8, ["q_proj", "k_proj", "v_proj"], True, rng)
        peft = {"all7": all7, "rslora": rs}
        if args.adapter:
            peft["trained"] = args.adapter
        control = unpermuted_copy(rs, os.path.join(tmp, "control"), {"q_proj": heads, "k_proj": kv}, hd)
        f16 = os.path.join(tmp, "base-f16.gguf")
        to_f16(args.model, f16)
        limits = {"f16": (1e-2, 0.95), "file": (None, 0.75)}
        max_off = 4.0
        for base_name, base in [("f16", f16), ("file", args.model)]:
            gguf = {}
            for name, d in list(peft.items()) + [("control", control)]:
                gguf[name] = os.path.join(tmp, f"{base_name}-{name}.gguf")
                lorafuse(args, "export", "gguf-lora", "--adapter", d, "--model", base, "--out", gguf[name])
            tokens, base_ours = ours(args, base, tmp, "base", [])
            cpp = LlamaCpp(base, len(tokens) + 8, args.threads)
            base_cpp = cpp.logits(tokens, [])
            cases = [("base", [], [])] + [(n, [(peft[n], 1.0)], [(gguf[n], 1.0)]) for n in peft]
            cases.append(("fusion", [(all7, 0.6), (rs, 0.4)], [(gguf["all7"], 0.6), (gguf["rslora"], 0.4)]))
            cases.append(("control", [(rs, 1.0)], [(gguf["control"], 1.0)]))
            max_logits, min_top1 = limits[base_name]
            base_off = np.linalg.norm(base_cpp - base_ours)
            print(f"base {base_name} ({base}): {len(tokens)} positions; {arch}, {layers} layers; "
                  f"llama-cpp-python {llama_cpp.__version__}; limits: off {max_off}, logits {max_logits}, "
                  f"top-1 {min_top1}")
            print(f"  {'case':<8} {'top-1':>7} {'logits rel err':>15} {'effect size':>12} {'effect rel err':>15} {'off':>8}")
            for name, mine_mix, cpp_mix in cases:
                mine = ours(args, base, tmp, name, mine_mix)[1] if mine_mix else base_ours
                theirs = cpp.logits(tokens, cpp_mix) if cpp_mix else base_cpp
                top1 = float(np.mean(mine.argmax(1) == theirs.argmax(1)))
                err = rel(theirs, mine)
                effect = rel(mine, base_ours) if mine_mix else 0.0
                derr = rel(theirs - base_cpp, mine - base_ours) if mine_mix else 0.0
                off = np.linalg.norm((theirs - base_cpp) - (mine - base_ours)) / base_off if mine_mix else 0.0
                ok = top1 >= min_top1 and off <= max_off and (max_logits is None or err <= max_logits)
                note = ""
                if name == "control" and base_name == "f16":
                    ok, note = off > 10 * max_off, " (off > 10x the limit, as it must be)"
                elif name == "control":
                    ok, note = True, " (for information: the 8-bit activations' noise is larger here)"
                print(f"  {name:<8} {top1:>7.3f} {err:>15.2e} {effect:>12.3f} {derr:>15.2e} {off:>8.2f}  "
                      f"{'ok' if ok else 'FAIL'}{note}")
                if not ok:
                    failed.append(f"{base_name}/{name}")
            del cpp
            # lorafuse reading its own export: the same logits as from the PEFT directory, exactly
            back = ours(args, base, tmp, "roundtrip", [(gguf["all7"], 0.6), (gguf["rslora"], 0.4)])[1]
            same = ours(args, base, tmp, "fusion-again", [(all7, 0.6), (rs, 0.4)])[1]
            exact = np.array_equal(back, same)
            print(f"  lorafuse --adapter all7.gguf:0.6 --adapter rslora.gguf:0.4 equals the PEFT directories: "
                  f"{'ok' if exact else 'FAIL'} (max |diff| {np.abs(back - same).max():.2e})")
            if not exact:
                failed.append(f"{base_name}/roundtrip")
        failed += merged_models(args, tmp, all7, rs, peft.get("trained"), f16)
        failed += hf_round_trip(args, tmp, peft.get("trained", all7))
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
