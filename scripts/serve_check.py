#!/usr/bin/env python3
"""lorafuse serve against the official `openai` Python client (scripts/setup-openai.sh).

Writes two random LoRA adapters for SmolLM2 (PEFT safetensors, pure Python), starts
`lorafuse serve` with them on a free loopback port behind an API key, and checks through the
client: the model list; chat and completions, streamed and not, the streamed text equal to the
whole; two concurrent requests with different mixes (one by "adapters" in the body, one by the
model field) each equal to what `lorafuse generate` gives that mix (greedy); the error cases
(bad parameter, unknown adapter, unknown model, prompt over the context, wrong key) raised as
the client's own exception classes with OpenAI's error codes; SIGTERM ending the server with 0.
Exits 1 on the first failure.
"""

import argparse
import json
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

import openai

LAYERS, HIDDEN, R = 30, 576, 8
TARGETS = {"q_proj": 576, "v_proj": 192}


def write_adapter(path, seed, b_scale=0.05):
    """A PEFT adapter on q_proj and v_proj of every layer: A and B uniform in [-1, 1), B scaled."""
    rng = random.Random(seed)
    tensors = {}
    for layer in range(LAYERS):
        for target, out in TARGETS.items():
            stem = f"base_model.model.model.layers.{layer}.self_attn.{target}"
            tensors[f"{stem}.lora_A.weight"] = ([R, HIDDEN], [rng.uniform(-1, 1) for _ in range(R * HIDDEN)])
            tensors[f"{stem}.lora_B.weight"] = ([out, R], [b_scale * rng.uniform(-1, 1) for _ in range(out * R)])
    header, blobs, offset = {}, [], 0
    for name, (shape, values) in tensors.items():
        blob = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "adapter_model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))
    config = {"peft_type": "LORA", "r": R, "lora_alpha": 32, "lora_dropout": 0.05,
              "target_modules": list(TARGETS), "bias": "none", "task_type": "CAUSAL_LM"}
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump(config, f)


def fail(msg):
    print(f"serve_check: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def start(lorafuse, args):
    proc = subprocess.Popen([lorafuse, "serve", "--port", "0", *args], stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line.rstrip())
        if "listening on http://" in line:
            addr = line.split("listening on http://")[1].split()[0]
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, addr
    fail("the server did not start:\n" + "\n".join(lines))


def generate(lorafuse, dirs, question, mixes, max_tokens):
    """What `lorafuse generate` gives `question` at each mix of the adapters in `dirs`."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for m in mixes:
            f.write(json.dumps({"prompt": question, "adapter_weights": m}) + "\n")
    cmd = [lorafuse, "generate", "--json", "--max-new-tokens", str(max_tokens), "--prompts", f.name]
    for d in dirs:
        cmd += ["--adapter", d]
    out = subprocess.run(cmd, capture_output=True, text=True)
    os.unlink(f.name)
    check(out.returncode == 0, f"generate failed: {out.stderr}")
    return [json.loads(line)["text"] for line in out.stdout.splitlines()]


def expect_error(cls, code, fn):
    try:
        fn()
    except cls as e:
        got = getattr(e, "code", None)
        check(code is None or got == code, f"{cls.__name__}: code {got!r}, wanted {code!r}: {e}")
        return e
    except openai.APIError as e:
        fail(f"wanted {cls.__name__}, got {type(e).__name__}: {e}")
    fail(f"wanted {cls.__name__}, the call succeeded")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lorafuse", default="target/release/lorafuse")
    ap.add_argument("--max-tokens", type=int, default=16)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="lorafuse-serve-check-")
    task, safety = os.path.join(work, "task"), os.path.join(work, "safety")
    write_adapter(task, 1)
    write_adapter(safety, 2)
    key = "sk-serve-check"
    proc, addr = start(args.lorafuse, ["--adapter", f"task={task}", "--adapter", f"safety={safety}:0.5",
                                       "--api-key", key, "--max-seqs", "4", "--max-tokens", "32",
                                       "--context", "512"])
    client = openai.OpenAI(base_url=f"http://{addr}/v1", api_key=key, max_retries=0, timeout=300)
    n = args.max_tokens
    try:
        ids = [m.id for m in client.models.list().data]
        check(ids[1:] == ["task", "safety"] and len(ids) == 3, f"models: {ids}")
        base = ids[0]
        q = "Name a colour."
        msgs = [{"role": "user", "content": q}]

        # two mixes at once: the body's "adapters" and the model field
        results = {}

        def ask(key_, **kw):
            r = client.chat.completions.create(messages=msgs, temperature=0, max_tokens=n, **kw)
            results[key_] = r

        threads = [threading.Thread(target=ask, args=("body",), kwargs={"model": base, "extra_body": {"adapters": {"task": 0.6, "safety": 0.4}}}),
                   threading.Thread(target=ask, args=("model",), kwargs={"model": "task:1.5"})]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        check(set(results) == {"body", "model"}, f"a concurrent request failed: {results}")
        want = generate(args.lorafuse, [task, safety], q, [[0.6, 0.4], [1.5, 0.0], [1.0, 0.5]], n)
        got = [results["body"].choices[0].message.content, results["model"].choices[0].message.content]
        check(got == want[:2], f"served mixes {got} against generate's {want[:2]}")
        check(want[0] != want[1], "the two mixes give the same text: the check cannot tell them apart")
        r = results["body"]
        check(r.usage.completion_tokens >= 1 and r.usage.prompt_tokens > 5, f"usage {r.usage}")

        # the default mix, streamed: the deltas join to the whole reply
        whole = client.chat.completions.create(model=base, messages=msgs, temperature=0, max_tokens=n)
        check(whole.choices[0].message.content == want[2], f"default mix: {whole.choices[0].message.content!r} against {want[2]!r}")
        stream = client.chat.completions.create(model=base, messages=msgs, temperature=0, max_tokens=n, stream=True,
                                                stream_options={"include_usage": True})
        parts, finish, usage = [], None, None
        for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            for c in chunk.choices:
                parts.append(c.delta.content or "")
                finish = c.finish_reason or finish
        check("".join(parts) == whole.choices[0].message.content, f"stream {''.join(parts)!r} against {whole.choices[0].message.content!r}")
        check(finish == whole.choices[0].finish_reason and usage and usage.total_tokens == whole.usage.total_tokens,
              f"stream finish {finish}, usage {usage}")

        # completions, whole and streamed, a stop string cutting before it
        c = client.completions.create(model="task:0", prompt="The capital of France is", temperature=0, max_tokens=8, stop=["."])
        check(c.choices[0].finish_reason == "stop" and "." not in c.choices[0].text, f"completion {c.choices[0]}")
        s = client.completions.create(model="task:0", prompt="The capital of France is", temperature=0, max_tokens=8, stop=["."], stream=True)
        check("".join(x.choices[0].text for x in s if x.choices) == c.choices[0].text, "streamed completion differs")

        # sampling with a seed repeats
        a = client.chat.completions.create(model=base, messages=msgs, temperature=0.9, top_p=0.9, seed=7, max_tokens=n)
        b = client.chat.completions.create(model=base, messages=msgs, temperature=0.9, top_p=0.9, seed=7, max_tokens=n)
        check(a.choices[0].message.content == b.choices[0].message.content, "the same seed sampled differently")

        # errors, as the client's exception classes
        expect_error(openai.BadRequestError, None, lambda: client.chat.completions.create(model=base, messages=msgs, temperature=5))
        expect_error(openai.BadRequestError, None, lambda: client.chat.completions.create(model=base, messages=msgs, extra_body={"adapters": {"nope": 1}}))
        expect_error(openai.BadRequestError, "model_not_found", lambda: client.chat.completions.create(model="task:0.5+nope:0.5", messages=msgs))
        expect_error(openai.NotFoundError, "model_not_found", lambda: client.chat.completions.create(model="gpt-4o", messages=msgs))
        long = [{"role": "user", "content": "word " * 600}]
        expect_error(openai.BadRequestError, "context_length_exceeded", lambda: client.chat.completions.create(model=base, messages=long))
        expect_error(openai.BadRequestError, None, lambda: client.chat.completions.create(model=base, messages=msgs, max_tokens=33))
        wrong = openai.OpenAI(base_url=f"http://{addr}/v1", api_key="sk-wrong", max_retries=0)
        expect_error(openai.AuthenticationError, "invalid_api_key", lambda: wrong.models.list())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            fail("the server did not stop within 60 s of SIGTERM")
    check(code == 0, f"the server exited {code} after SIGTERM")
    print(f"serve_check: ok (openai {openai.__version__}): models, chat and completions whole and streamed, "
          f"2 concurrent mixes equal to generate's, seeded sampling, 7 error cases, SIGTERM exit 0")


if __name__ == "__main__":
    main()
