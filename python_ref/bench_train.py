"""Tokens per second of one training step: examples/train against PyTorch, back to back.

    python3 python_ref/bench_train.py [--model models/kjv-gpt2] [--batch 8] [--seq 256]
                                      [--threads 2] [--steps 6] [--no-build]

One step is what examples/train does per step: the forward pass and the loss (mean
cross-entropy over B*T targets), the backward pass, clip_grad_norm_, the schedule and one
AdamW step, on B sequences of T tokens. Both sides run the model in float32 with the same
threads; dropout off. PyTorch runs `GPT2LMHeadModel` with eager and with sdpa attention and
its fastest is the comparison. The first step of each side is a warm-up and is not counted; the
figures are the median and the fastest of the others. Both sides train on the same text (this repository's
README repeated) with the same data order. Prints a Markdown section for docs/bench.md.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="models/kjv-gpt2")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--no-build", action="store_true")
    return p.parse_args()


def rust(args, data, tmp):
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--example", "train"],
                       cwd=ROOT, check=True)
    exe = ROOT / "target" / "release" / "examples" / "train"
    bench = Path(tmp) / "rust.json"
    cmd = [str(exe), "--model", args.model, "--data", str(data), "--out", str(Path(tmp) / "out"),
           "--steps", str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq),
           "--lr", "1e-4", "--warmup", "1", "--weight-decay", "0.1", "--grad-clip", "1.0",
           "--threads", str(args.threads), "--bench-json", str(bench)]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(bench.read_text())["step_seconds"][1:]


def torch_side(args, data, attn):
    import torch
    import torch.nn.functional as F
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast
    sys.path.insert(0, str(ROOT / "python_ref"))
    from train_ref import batch_at, lr_at, make_optimizer, state_name

    torch.set_num_threads(args.threads)
    tokens = GPT2TokenizerFast.from_pretrained(ROOT / args.model)(data.read_text())["input_ids"]
    model = GPT2LMHeadModel.from_pretrained(ROOT / args.model, attn_implementation=attn,
                                            dtype=torch.float32).eval()
    named = [(state_name(n), p) for n, p in model.named_parameters()]
    params = [p for _, p in named]
    opt = make_optimizer(named, 1e-4, (0.9, 0.999), 1e-8, 0.1)
    times = []
    for k in range(args.steps):
        x, y = batch_at(tokens, k, args.batch, args.seq)
        start = time.perf_counter()
        logits = model(x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for g in opt.param_groups:
            g["lr"] = lr_at(k, 1e-4, 1, args.steps)
        opt.step()
        times.append(time.perf_counter() - start)
    return times[1:]


def main():
    args = parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "text.txt"
        data.write_text((ROOT / "README.md").read_text() * 6)
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        r = rust(args, data, tmp)
        t = {attn: torch_side(args, data, attn) for attn in ("eager", "sdpa")}
    tokens = args.batch * args.seq
    r_med = statistics.median(r)
    best = min(t, key=lambda a: statistics.median(t[a]))
    t_med = statistics.median(t[best])
    import torch
    import transformers
    print("## Training step (issue 17)\n")
    print(f"Measured {when} by `python3 python_ref/bench_train.py` on {platform.processor() or 'x86_64'} "
          f"(AMD EPYC Zen 4 with AVX-512, 2 logical CPUs shared with other work), "
          f"{args.threads} threads, back to back (Rust, then PyTorch). `{args.model}`'s shape "
          f"(GPT-2 with n_embd 192, 6 layers, 4 heads, vocab 50257), float32, B={args.batch}, "
          f"T={args.seq}: one step is the forward pass and mean cross-entropy, the backward pass, "
          f"clip_grad_norm_, one AdamW step. Median of {len(r)} steps after a warm-up step. "
          f"torch {torch.__version__}, transformers {transformers.__version__}; PyTorch runs "
          f"`GPT2LMHeadModel` with eager and sdpa attention, and its faster is compared.\n")
    print("| side | median step | tokens/s (median) | fastest step | tokens/s (fastest) |")
    print("|---|---:|---:|---:|---:|")
    rows = [("gpt2-ndarray (`examples/train`, `train::loss_and_gradients`)", r)]
    rows += [(f"PyTorch, {attn} attention", t[attn]) for attn in ("eager", "sdpa")]
    for name, times in rows:
        m, f = statistics.median(times), min(times)
        print(f"| {name} | {m * 1e3:,.0f} ms | {tokens / m:,.0f} | {f * 1e3:,.0f} ms | {tokens / f:,.0f} |")
    ratio = t_med / r_med
    fastest = min(min(t[a]) for a in t) / min(r)
    verdict = "faster" if ratio > 1 else "slower"
    print(f"\nRust tokens/s ÷ PyTorch's ({best}), medians: **{ratio:.2f}** (Rust is "
          f"{max(ratio, 1 / ratio):.2f}× {verdict}); fastest step against fastest step: **{fastest:.2f}**.")
    print(f"\nEvery step's seconds: Rust {[round(s, 3) for s in r]}; "
          + "; ".join(f"PyTorch {a} {[round(s, 3) for s in t[a]]}" for a in t))


if __name__ == "__main__":
    main()
