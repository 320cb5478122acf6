#!/usr/bin/env bash
# Installs the PyTorch + Hugging Face PEFT peer into .venv-peft, for scripts/peft_interop.py
# (lorafuse adapters against PEFT, both ways) and scripts/bench_peft_train.py (PEFT's LoRA
# training speed). CPU only, from PyPI only. Idempotent.
#
# PyPI's Linux torch wheel is the CUDA build: its dependencies are ~3 GB of nvidia-* libraries
# plus ~1 GB of triton, and it will not import without the CUDA libraries it links (5.3 GB in
# all). We only run on the CPU, so:
#  - every package is installed with --no-deps from the pinned list below (a full resolution of
#    torch, transformers, peft, gguf, safetensors and numpy, less the CUDA packages), since pip
#    would pull the CUDA packages back in through torch's metadata;
#  - the CUDA libraries torch links are replaced by one stub library, compiled here from the
#    symbols torch imports, in which every function fails with 100 (cudaErrorNoDevice): torch
#    then finds no CUDA device and works on the CPU as the CPU build would.
# That is ~1.4 GB. Needs a C compiler and readelf (which a Rust toolchain has anyway).
set -euo pipefail
cd "$(dirname "$0")/.."

V=.venv-peft
PINS=(
    torch==2.15.0 transformers==5.24.0 peft==0.21.2 accelerate==1.15.0 gguf==0.19.0
    safetensors==0.8.0 numpy==2.4.6 tokenizers==0.23.3 huggingface_hub==2.4.0 hf-xet==1.8.0
    sympy==1.14.0 mpmath==1.3.0 networkx==3.6.1 jinja2==3.1.6 markupsafe==3.0.4
    fsspec==2026.9.0 filelock==4.3.1 typing_extensions==4.16.0 setuptools==84.2.1
    packaging==26.4 psutil==7.2.2 pyyaml==6.0.4 regex==2026.11.19 tqdm==4.70.1
    requests==2.34.2 urllib3==2.8.0 certifi==2026.10.19.post1 charset-normalizer==3.5.3
    idna==3.20 truststore==0.10.5 httpx2==2.16.2 httpcore2==2.16.2 h11==0.16.0 anyio==4.16.0
    click==8.5.1 typer==0.29.2 shellingham==1.5.4 rich==15.0.0 pygments==2.21.0
    markdown-it-py==4.3.0 mdurl==0.1.2 pydantic==2.14.4 pydantic_core==2.50.5
    annotated-types==0.8.0 annotated-doc==0.0.7 typing-inspection==0.4.5
)

if [ ! -x "$V/bin/python" ]; then
    python3 -m venv "$V"
    echo '*' >"$V/.gitignore"  # keeps the venv out of git status
fi
"$V/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "${PINS[@]}"

# The stub: one library, copied under every CUDA soname that torch's libraries need. It defines
# each CUDA symbol they import, under the symbol version they ask for (glibc checks versions at
# load time even for functions that are never called).
TLIB=$("$V/bin/python" -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("torch").origin) + "/lib")')
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$V/bin/python" - "$TLIB" "$tmp" <<'PYEOF'
import collections, glob, os, re, subprocess, sys
tlib, out = sys.argv[1:]
libs = glob.glob(tlib + "/*.so") + glob.glob(os.path.dirname(tlib) + "/_C*.so")
cuda = re.compile(r"(__cuda|cu[A-Z]|cuda|cublas|cudnn|cufft|cufile|cusparse|cusolver|cupti|nccl|nvshmem|nvrtc)")
sonames, nodes, plain = set(), collections.defaultdict(set), set()
for lib in libs:
    dyn = subprocess.run(["readelf", "-dW", lib], capture_output=True, text=True, check=True).stdout
    sonames |= {n for n in re.findall(r"\(NEEDED\).*\[(.+)\]", dyn) if re.match(r"lib(cu|nv|nccl)", n)}
    syms = subprocess.run(["readelf", "--dyn-syms", "-W", lib], capture_output=True, text=True, check=True).stdout
    for f in (l.split() for l in syms.splitlines()):
        if len(f) >= 8 and f[6] == "UND" and f[7] != "0":
            name, _, ver = f[7].partition("@")
            ver = ver.split(" ")[0]
            if ver and not re.match(r"(GLIBC|CXXABI|GCC_|GOMP|OMP_)", ver):
                nodes[ver].add(name)
            elif not ver and cuda.match(name):
                plain.add(name)
with open(out + "/stub.c", "w") as f:
    for s in sorted(plain.union(*nodes.values())):
        if re.search(r"(ErrorString|StatusString|ErrorName)$", s) and not re.match(r"cu[A-Z]", s):
            f.write(f'const char *{s}(void) {{ return "no CUDA (lorafuse stub)"; }}\n')
        else:
            f.write(f"int {s}(void) {{ return 100; }}\n")
with open(out + "/stub.map", "w") as f:
    for v, syms in sorted(nodes.items()):
        f.write(f"{v} {{ global: {' '.join(s + ';' for s in sorted(syms))} }};\n")
with open(out + "/sonames", "w") as f:
    f.write("\n".join(sorted(sonames)) + "\n")
PYEOF
cc -shared -fPIC -O1 -o "$tmp/stub.so" "$tmp/stub.c" -Wl,--version-script="$tmp/stub.map"
while read -r so; do cp "$tmp/stub.so" "$TLIB/$so"; done <"$tmp/sonames"

"$V/bin/python" - <<'PYEOF'
from importlib.metadata import version
import torch, transformers, peft, gguf
assert not torch.cuda.is_available()
x = torch.randn(8, 8, requires_grad=True)
(x @ x).sum().backward()
print(f"setup-peft: .venv-peft ready (torch {torch.__version__} on CPU, transformers {transformers.__version__}, "
      f"peft {peft.__version__}, gguf {version('gguf')})")
PYEOF
