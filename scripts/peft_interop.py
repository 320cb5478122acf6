#!/usr/bin/env python3
"""lorafuse's LoRA adapters against Hugging Face PEFT, both ways, on the logits of a chat prompt.

Run with .venv-peft/bin/python (scripts/setup-peft.sh). The reference is transformers' model of
the same GGUF (dequantized to f32) with PEFT's adapter layers; lorafuse computes the same logits
through `lorafuse logits`. Cases:
  base                 no adapter
  lorafuse-trained     --lorafuse-adapter DIR, loaded by PeftModel.from_pretrained (lorafuse -> PEFT)
  peft-r8              made here by PEFT (r 8, alpha 32; q, v, o, down), save_pretrained (PEFT -> lorafuse)
  peft-rslora          made here, rsLoRA, all seven projections
  fusion               peft-r8 at weight 1 plus peft-rslora at 0.5, both active at once
A case passes when the relative Frobenius error of the logits is <= --max-rel-err and the argmax
agrees at >= --min-top1 of the positions.

Then every fusion method (unless --skip-fusion): two PEFT adapters (q/v, r 8) fused at [0.6, 0.4]
by PEFT's add_weighted_adapter and by `lorafuse fuse`, the result loaded back into PEFT and its
delta weights compared module by module (dare at density 1, since the two draw their random masks
from different generators); cat and svd also with different ranks and targets; and `svd-legacy`,
lorafuse's --peft-svd-scale against the weighting of PEFT 0.20 and before (Σ w s² B A, computed
here in f64). And cat at [0.6, 0.4] end to end: PEFT's fused adapter's logits
against lorafuse's runtime fusion, lorafuse's fused adapter, and the model merged by
`lorafuse fuse --merge-into-base`, as lorafuse and as transformers load it.
Exits 1 when any case fails.
"""
import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF loader has a progress bar of its own

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", message="Could not find a config file")  # PEFT looks for the base's config.json

CHAT = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "Name the three primary colours of light."},
]


def load_base(model):
    d, name = os.path.split(os.path.abspath(model))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    base = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()
    return tok, base


def prompt_ids(tok):
    ids = tok.apply_chat_template(CHAT, add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)  # transformers 5 returns a BatchEncoding


def make_peft_adapter(base, out, seed, **cfg):
    """A PEFT adapter with random A (PEFT's init) and small random B, so it is not a no-op."""
    torch.manual_seed(seed)
    m = get_peft_model(copy.deepcopy(base), LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, **cfg))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.02)
    m.save_pretrained(out)
    return out


@torch.no_grad()
def peft_logits(base, adapters, ids):
    """Logits [T, vocab] with the (dir, weight) adapters all active; weights scale each delta."""
    m = base
    if adapters:
        names = [f"a{i}" for i in range(len(adapters))]
        m = PeftModel.from_pretrained(copy.deepcopy(base), adapters[0][0], adapter_name=names[0])
        for name, (d, _) in zip(names[1:], adapters[1:]):
            m.load_adapter(d, adapter_name=name)
        m.base_model.set_adapter(names)
        for mod in m.modules():
            if isinstance(getattr(mod, "scaling", None), dict):
                for name, (_, w) in zip(names, adapters):
                    if name in mod.scaling:
                        mod.scaling[name] *= w
        m.eval()
    return m(torch.tensor([ids])).logits[0].float().numpy()


def lorafuse_logits(a, adapters, ids, tmp, model=None):
    out = os.path.join(tmp, "logits.safetensors")
    cmd = [a.lorafuse, "logits", "--model", model or a.model, "--dtype", a.dtype, "--tokens", ",".join(map(str, ids)),
           "--out", out]
    for d, w in adapters:
        cmd += ["--adapter", d if w == 1 else f"{d}:{w:g}"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"peft_interop: `{' '.join(cmd)}` failed ({r.returncode}):\n{r.stderr.strip()}")
    t = load_file(out)
    if t["tokens"].tolist() != ids or t["logits"].shape != (len(ids), a.vocab):
        sys.exit(f"peft_interop: {out}: tokens or logits shape {t['logits'].shape} do not match the request")
    return t["logits"].astype(np.float32), time.perf_counter() - t0


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"peft_interop: `{' '.join(cmd)}` failed ({r.returncode}):\n{r.stderr.strip()}")


METHODS = ["cat", "linear", "svd", "ties", "ties_svd", "dare_linear", "dare_linear_svd", "dare_ties", "dare_ties_svd",
           "magnitude_prune", "magnitude_prune_svd"]


def delta_error(model, ours, ref):
    """||ours - ref||_F / ||ref||_F over every module's delta weight, two adapters of `model`."""
    num = den = 0.0
    modules = 0
    for mod in model.modules():
        if hasattr(mod, "get_delta_weight") and ref in getattr(mod, "lora_A", {}):
            d_ref = mod.get_delta_weight(ref).double()
            d_ours = mod.get_delta_weight(ours).double() if ours in mod.lora_A else torch.zeros_like(d_ref)
            num += float((d_ours - d_ref).pow(2).sum())
            den += float(d_ref.pow(2).sum())
            modules += 1
    return (num / den) ** 0.5, modules


@torch.no_grad()
def fusion_cases(a, base, ids, tmp):
    """Every method: PEFT's add_weighted_adapter against `lorafuse fuse`, on the delta weights."""
    if a.fusion_adapters:
        fa, fb = a.fusion_adapters
    else:
        fa = make_peft_adapter(base, f"{tmp}/fuse-a", 3, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
        fb = make_peft_adapter(base, f"{tmp}/fuse-b", 4, r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"])
    fc = make_peft_adapter(base, f"{tmp}/fuse-c", 5, r=4, lora_alpha=8, target_modules=["v_proj"])
    dirs = {"a": fa, "b": fb, "c": fc}
    m = PeftModel.from_pretrained(copy.deepcopy(base), fa, adapter_name="a")
    m.load_adapter(fb, adapter_name="b")
    m.load_adapter(fc, adapter_name="c")
    w = [0.6, 0.4]
    rows = []
    cases = [(meth, ["a", "b"]) for meth in METHODS] + [("cat", ["a", "c"]), ("svd", ["a", "c"])]
    for meth, pair in cases:
        name = f"{meth}[{''.join(pair)}]"
        density = 1.0 if meth.startswith("dare") else (0.5 if meth not in ("cat", "linear", "svd") else None)
        m.add_weighted_adapter(pair, w, f"peft_{name}", combination_type=meth, density=density)
        out = f"{tmp}/lf-{name}"
        cmd = [a.lorafuse, "fuse", "--method", meth, "--out", out]
        for d, wt in zip(pair, w):
            cmd += ["--adapter", f"{dirs[d]}:{wt}"]
        if density is not None:
            cmd += ["--density", str(density)]
        run(cmd)
        m.load_adapter(out, adapter_name=f"lf_{name}")
        err, modules = delta_error(m, f"lf_{name}", f"peft_{name}")
        rows.append({"case": name, "rel_err": err, "modules": modules, "tol": 1e-4 if "svd" in meth else 1e-5})
    # PEFT 0.20 and before weighted each delta (which holds s) by w·s again: Σ w s² B A, rank 8
    out = f"{tmp}/lf-svd-legacy"
    run([a.lorafuse, "fuse", "--method", "svd", "--peft-svd-scale", "--out", out, "--adapter", f"{fa}:0.6",
         "--adapter", f"{fb}:0.4"])
    m.load_adapter(out, adapter_name="lf_legacy")
    num = den = 0.0
    modules = 0
    for mod in m.modules():
        if hasattr(mod, "get_delta_weight") and "lf_legacy" in getattr(mod, "lora_A", {}):
            legacy = sum(wt * mod.scaling[n] * mod.get_delta_weight(n).double() for n, wt in zip(["a", "b"], w))
            u, sv, vh = torch.linalg.svd(legacy)
            best = (u[:, :8] * sv[:8]) @ vh[:8]
            num += float((mod.get_delta_weight("lf_legacy").double() - best).pow(2).sum())
            den += float(best.pow(2).sum())
            modules += 1
    rows.append({"case": "svd-legacy[ab]", "rel_err": (num / den) ** 0.5, "modules": modules, "tol": 1e-5})

    # cat at [0.6, 0.4] end to end, on the logits
    m.set_adapter("peft_cat[ab]")
    ref = m(torch.tensor([ids])).logits[0].float().numpy()
    merged = f"{tmp}/merged"
    run([a.lorafuse, "fuse", "--adapter", f"{fa}:0.6", "--adapter", f"{fb}:0.4", "--merge-into-base",
         "--model", a.model, "--merged-dtype", "f32", "--out", merged])
    hf = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    hf_tok = AutoTokenizer.from_pretrained(merged)
    logit_rows = [
        ("runtime fusion", lorafuse_logits(a, [(fa, 0.6), (fb, 0.4)], ids, tmp)[0]),
        ("fused adapter", lorafuse_logits(a, [(f"{tmp}/lf-cat[ab]", 1.0)], ids, tmp)[0]),
        ("merged (lorafuse)", lorafuse_logits(a, [], ids, tmp, model=merged)[0]),
        ("merged (transformers)", hf(torch.tensor([ids])).logits[0].float().numpy()),
    ]
    same_ids = prompt_ids(hf_tok) == ids
    return rows, ref, logit_rows, same_ids


def compare(lf, pt, lf_base, pt_base, adapted):
    rel = lambda x, y: float(np.linalg.norm(x - y) / np.linalg.norm(y))
    return {
        "max_abs": float(np.abs(lf - pt).max()),
        "rel_fro": rel(lf, pt),
        "top1": float((lf.argmax(-1) == pt.argmax(-1)).mean()),
        # the adapter's own effect on the logits, and lorafuse's error on that effect alone
        "effect": rel(pt, pt_base) if adapted else 0.0,
        "delta_rel": rel(lf - lf_base, pt - pt_base) if adapted else 0.0,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lorafuse", default="target/release/lorafuse")
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--dtype", default="f32", choices=["f32", "f16", "q4"])
    ap.add_argument("--lorafuse-adapter", metavar="DIR", help="a lorafuse-trained PEFT adapter directory")
    ap.add_argument("--json", metavar="FILE", help="write the comparison numbers here")
    ap.add_argument("--max-rel-err", type=float, default=2e-3)
    ap.add_argument("--min-top1", type=float, default=0.95)
    ap.add_argument("--peft-only", action="store_true", help="PEFT side alone: the adapters' effects, no lorafuse")
    ap.add_argument("--skip-fusion", action="store_true", help="leave out the fusion-method cases")
    ap.add_argument("--fusion-adapters", nargs=2, metavar=("TASK", "SAFETY"),
                    help="fuse these two adapters (of one rank, on q_proj and v_proj; lorafuse-trained, say) "
                         "instead of two random PEFT ones")
    a = ap.parse_args()
    if not a.peft_only and not os.access(a.lorafuse, os.X_OK):
        sys.exit(f"peft_interop: no lorafuse binary at {a.lorafuse} (cargo build --release), or pass --peft-only")
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp/xdg")  # Mesa's device-select layer wants one
    os.makedirs(os.environ["XDG_RUNTIME_DIR"], mode=0o700, exist_ok=True)

    t0 = time.perf_counter()
    tok, base = load_base(a.model)
    a.vocab = base.config.vocab_size
    ids = prompt_ids(tok)
    print(f"peft_interop: {a.model} loaded by transformers in {time.perf_counter() - t0:.1f} s; "
          f"{len(ids)} prompt tokens; PEFT's next token: {tok.decode([int(peft_logits(base, [], ids)[-1].argmax())])!r}")

    with tempfile.TemporaryDirectory() as tmp:
        r8 = make_peft_adapter(base, f"{tmp}/peft-r8", 1, r=8, lora_alpha=32,
                               target_modules=["q_proj", "v_proj", "o_proj", "down_proj"])
        rs = make_peft_adapter(base, f"{tmp}/peft-rslora", 2, r=8, lora_alpha=32, use_rslora=True,
                               target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        cases = [("base", [])]
        if a.lorafuse_adapter:
            cases.append(("lorafuse-trained", [(a.lorafuse_adapter, 1.0)]))
        cases += [("peft-r8", [(r8, 1.0)]), ("peft-rslora", [(rs, 1.0)]), ("fusion", [(r8, 1.0), (rs, 0.5)])]

        rows, failed = [], []
        for name, adapters in cases:
            pt = peft_logits(base, adapters, ids)
            lf, secs = (pt, 0.0) if a.peft_only else lorafuse_logits(a, adapters, ids, tmp)
            if not adapters:
                pt_base, lf_base = pt, lf
            row = {"case": name, "lorafuse_s": round(secs, 2), **compare(lf, pt, lf_base, pt_base, bool(adapters))}
            row["pass"] = row["rel_fro"] <= a.max_rel_err and row["top1"] >= a.min_top1
            rows.append(row)
            if not row["pass"]:
                failed.append(name)
        fusion = None if a.peft_only or a.skip_fusion else fusion_cases(a, base, ids, tmp)

    print(f"{'case':<18}{'max |diff|':>11}{'rel err':>10}{'top-1':>8}{'effect':>9}{'delta err':>11}{'lorafuse s':>12}  result")
    for r in rows:
        verdict = "-" if a.peft_only else ("pass" if r["pass"] else "FAIL")
        print(f"{r['case']:<18}{r['max_abs']:>11.2e}{r['rel_fro']:>10.2e}{r['top1']:>8.1%}{r['effect']:>9.3f}"
              f"{r['delta_rel']:>11.2e}{r['lorafuse_s']:>12.1f}  {verdict}")
    print("(rel err: ||lorafuse - PEFT||_F / ||PEFT||_F of the logits; effect: ||PEFT - PEFT base|| / ||PEFT base||;"
          " delta err: lorafuse's relative error on that change)")
    report = {"model": a.model, "dtype": a.dtype, "tokens": ids, "max_rel_err": a.max_rel_err,
              "min_top1": a.min_top1, "cases": rows}
    if fusion:
        frows, ref, logit_rows, same_ids = fusion
        print(f"\n{'fusion method':<24}{'modules':>8}{'delta rel err':>15}{'tolerance':>11}  result")
        for r in frows:
            r["pass"] = r["rel_err"] <= r["tol"]
            print(f"{r['case']:<24}{r['modules'] or '-':>8}{r['rel_err']:>15.2e}{r['tol']:>11.0e}  "
                  f"{'pass' if r['pass'] else 'FAIL'}")
            if not r["pass"]:
                failed.append(r["case"])
        print(f"\ncat at [0.6, 0.4], logits against PEFT's fused adapter ({len(ids)} positions):")
        report["fusion"] = frows
        report["cat_logits"] = []
        for name, lg in logit_rows:
            rel = float(np.linalg.norm(lg - ref) / np.linalg.norm(ref))
            top1 = float((lg.argmax(-1) == ref.argmax(-1)).mean())
            ok = rel <= a.max_rel_err and top1 >= a.min_top1
            print(f"  {name:<24} rel err {rel:.2e}  top-1 {top1:.1%}  {'pass' if ok else 'FAIL'}")
            report["cat_logits"].append({"case": name, "rel_fro": rel, "top1": top1, "pass": ok})
            if not ok:
                failed.append(f"cat logits: {name}")
        print(f"  transformers' tokenizer of the merged directory gives the same prompt ids: {same_ids}")
        if not same_ids:
            failed.append("merged tokenizer")
    report["pass"] = not failed
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    if failed:
        sys.exit(f"peft_interop: FAILED: {', '.join(failed)} (need rel err <= {a.max_rel_err:g} and top-1 >= {a.min_top1:.0%})")
    if not a.peft_only:
        print("peft_interop: every case agrees with PEFT")


if __name__ == "__main__":
    main()
