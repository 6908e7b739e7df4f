"""The same benchmark as `examples/bench.rs`, run with transformers'
`GPT2LMHeadModel` on the CPU (PyTorch, fp32), written as JSON in the SAME
schema as the Rust bench so that `bench_compare.py` reads both.

The model is GPT-2 small (124M parameters) built from `GPT2Config()` with
random weights and saved as safetensors in a temporary directory: no hub, no
network. Timings are the best of 3 (best of 2 for T >= 512, for decoding and
for the batch), as on the Rust side.

transformers has more than one way of running the same forward pass, so each
case is measured with every variant below and the FASTEST is reported as
transformers' figure, together with the name of the variant that won (the
comparison is against transformers at its best, not at its defaults):

* attention: `attn_implementation="sdpa"` (the default, PyTorch's fused
  `scaled_dot_product_attention`) and `"eager"` (plain matmul + softmax);
* prefill head: by default the LM head runs at every position (a
  `[T, 50257]` matmul, most of which is thrown away by `logits[:, -1]`);
  `logits_to_keep=1` runs it at the last position only, as the Rust crate's
  `next_token_logits` does.

Usage:

    python3 python_ref/bench_torch.py                       # 1 and 2 threads
    python3 python_ref/bench_torch.py --threads 2 --json target/bench-torch.json
    python3 python_ref/bench_torch.py --quick               # 1 repetition each
    python3 python_ref/bench_torch.py --threads 2 --batched-decoding-only

Batched decoding is `generate(do_sample=False)` of 64 new tokens (exactly:
`min_new_tokens` too) for B = 1, 4, 8, 32 prompts of 10 to 14 tokens,
left-padded with the attention mask, as `examples/bench.rs` runs
`generate_batch` on prompts of the same lengths; prefill included, the figure
is the tokens generated over the whole call's time.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# libgomp (PyTorch's OpenMP) lets idle worker threads spin-wait between
# parallel regions. On a machine shared with other work, a spinning or
# descheduled thread stalls every barrier: measured here, a 16-token forward
# at 2 threads took 300-1800 ms spinning against ~185 ms sleeping (and ~140 ms
# at 1 thread). PASSIVE makes the workers sleep, as rayon's do on the Rust
# side, and is the faster setting under load; set OMP_WAIT_POLICY yourself to
# measure another. It must be in the environment before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

# The inter-op pool has to be sized before PyTorch runs anything in parallel,
# so this comes first. Only the intra-op pool (set per run below) does the
# work here: one inter-op thread keeps the thread count honest.
torch.set_num_interop_threads(1)

import transformers  # noqa: E402  (after the thread set-up on purpose)
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

transformers.logging.set_verbosity_error()  # no "Setting pad_token_id" chatter

# The cases, as in examples/bench.rs.
PREFILL = [1, 16, 128, 512, 1024]
DECODE_PROMPT = 16
DECODE_NEW = 128
BATCH = (8, 128)
BATCHED_DECODING = [1, 4, 8, 32]
BATCHED_NEW = 64
ATTENTION = ["sdpa", "eager"]  # sdpa is transformers' default
# The two ways of asking for the next-token logits of a prompt.
HEADS = {"all logits": {}, "logits_to_keep=1": {"logits_to_keep": 1}}


def best_of(reps: int, f) -> float:
    """Fastest of `reps` calls of `f`, in seconds."""
    times = []
    for _ in range(max(reps, 1)):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return min(times)


def prefill_flops(c: GPT2Config, t: int) -> float:
    """FLOPs of a prefill of `t` tokens to the last position's logits; the
    same formula as `prefill_flops` in examples/bench.rs (so that the
    "fraction of the matmul rate" columns mean the same thing)."""
    e, f, l = c.n_embd, (c.n_inner or 4 * c.n_embd), c.n_layer
    weights = l * (e * 3 * e + e * e + 2 * e * f)
    attention = l * 2.0 * 2.0 * e * t * (t + 1) / 2.0
    return 2.0 * weights * t + attention + 2.0 * c.vocab_size * e


def num_parameters(c: GPT2Config) -> int:
    """wte + wpe + the blocks + ln_f, the LM head being tied to wte: the same
    count as the Rust `Config::num_parameters` (124,439,808 for GPT-2 small)."""
    e, f = c.n_embd, (c.n_inner or 4 * c.n_embd)
    block = 2 * e + (e * 3 * e + 3 * e) + (e * e + e) + 2 * e + (e * f + f) + (f * e + e)
    return c.vocab_size * e + c.n_positions * e + c.n_layer * block + 2 * e


def read_bandwidth_gbs() -> float:
    """Read bandwidth as PyTorch sees it: sum 1 GiB of f32, best of 3."""
    data = torch.ones(256 << 20, dtype=torch.float32)
    secs = best_of(3, lambda: data.sum())
    return data.numel() * 4 / secs / 1e9


def matmul_gflops() -> float:
    """PyTorch's (MKL's) f32 matmul rate on the MLP's shape, best of 3."""
    a = torch.full((1024, 768), 0.5)
    b = torch.full((768, 3072), 0.25)
    secs = best_of(3, lambda: a @ b)
    return 2.0 * 1024 * 768 * 3072 / secs / 1e9


def write_random_gpt2(directory: Path) -> GPT2Config:
    """GPT-2 small with transformers' own random initialisation, saved as
    `config.json` + `model.safetensors` (the LM head is tied to `wte`)."""
    torch.manual_seed(2024)
    config = GPT2Config()  # the defaults are GPT-2 small
    model = GPT2LMHeadModel(config)
    model.save_pretrained(directory, safe_serialization=True)
    return config


def load(directory: Path, attention: str, dtype: torch.dtype = torch.float32) -> GPT2LMHeadModel:
    model = GPT2LMHeadModel.from_pretrained(directory, attn_implementation=attention, dtype=dtype)
    return model.eval()


HALF_DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16}


def measure_half(directory: Path, reps: int) -> dict:
    """transformers with half-precision weights (the f32 checkpoint loaded
    with `dtype=torch.float16` / `torch.bfloat16`: torch computes in that
    dtype on the CPU), in its best configuration: the fastest of both
    attention implementations and both heads, for the cases the half-precision
    targets compare (decode, prefill T=128 and T=1024, first logits)."""
    out = {}
    generator = torch.Generator().manual_seed(1)
    prompts = {t: random_ids(generator, 1, t) for t in (128, 1024)}
    prompt = random_ids(generator, 1, DECODE_PROMPT)
    mask = torch.ones_like(prompt)
    one = torch.tensor([[464]])
    for name, dtype in HALF_DTYPES.items():
        print(f"  {name} weights...", file=sys.stderr, flush=True)
        cases: dict[str, dict[str, float]] = {}
        with torch.inference_mode():
            for attention in ATTENTION:
                def first_logits():
                    m = load(directory, attention, dtype)
                    m(one, use_cache=False, logits_to_keep=1).logits[:, -1]

                cases.setdefault("ttfl", {})[attention] = best_of(reps, first_logits)
                model = load(directory, attention, dtype)
                for t, ids in prompts.items():
                    for head, kwargs in HEADS.items():
                        secs = best_of(
                            min(reps, 2) if t >= 512 else reps,
                            lambda: model(ids, use_cache=False, **kwargs).logits[:, -1].float(),
                        )
                        cases.setdefault(f"prefill {t}", {})[f"{attention}, {head}"] = secs

                def decode():
                    model.generate(prompt, attention_mask=mask, max_new_tokens=DECODE_NEW,
                                   min_new_tokens=DECODE_NEW, do_sample=False,
                                   pad_token_id=model.config.eos_token_id)

                generate_secs = best_of(min(reps, 2), decode)
                prompt_secs = best_of(
                    reps, lambda: model(prompt, attention_mask=mask, use_cache=True, logits_to_keep=1))
                cases.setdefault("decode", {})[f"{attention}, generate()"] = (
                    (generate_secs - prompt_secs) / DECODE_NEW)
                del model
                gc.collect()
        variant, per_token = fastest(cases["decode"])
        out[name] = {
            "decode_tokens_per_second": 1.0 / per_token,
            "variant": variant,
            "prefill_128_ms": fastest(cases["prefill 128"])[1] * 1e3,
            "prefill_1024_ms": fastest(cases["prefill 1024"])[1] * 1e3,
            "time_to_first_logits_ms": fastest(cases["ttfl"])[1] * 1e3,
            "variants": cases,
        }
    return out


def random_ids(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randint(0, 50000, shape, generator=generator)


def measure_variant(directory: Path, attention: str, reps: int) -> dict:
    """Every case with one attention implementation; each prefill-like case
    with both heads. Returns {case: {variant: seconds}}."""
    out: dict[str, dict[str, float]] = {}

    def record(case: str, variant: str, seconds: float) -> None:
        out.setdefault(case, {})[variant] = seconds

    # Time to first logits: open the safetensors directory, run one token.
    one = torch.tensor([[464]])

    def first_logits():
        model = load(directory, attention)
        model(one, use_cache=False, logits_to_keep=1).logits[:, -1]

    record("ttfl", attention, best_of(reps, first_logits))

    model = load(directory, attention)
    config = model.config
    generator = torch.Generator().manual_seed(1)

    # Prefill: a prompt to the last position's next-token distribution.
    for t in PREFILL:
        ids = random_ids(generator, 1, t)
        for head, kwargs in HEADS.items():
            secs = best_of(
                min(reps, 2) if t >= 512 else reps,
                lambda: torch.softmax(
                    model(ids, use_cache=False, **kwargs).logits[:, -1], dim=-1
                ),
            )
            record(f"prefill {t}", f"{attention}, {head}", secs)

    # Decoding: greedy, KV cache, exactly DECODE_NEW tokens after a 16-token
    # prompt. `generate` prefills the prompt first (with the KV cache and,
    # since transformers 4.45, `logits_to_keep=1`): that time is taken out.
    prompt = random_ids(generator, 1, DECODE_PROMPT)
    mask = torch.ones_like(prompt)

    def decode():
        out_ids = model.generate(
            prompt,
            attention_mask=mask,
            max_new_tokens=DECODE_NEW,
            min_new_tokens=DECODE_NEW,
            do_sample=False,
            pad_token_id=config.eos_token_id,
        )
        assert out_ids.shape[1] == DECODE_PROMPT + DECODE_NEW

    generate_secs = best_of(min(reps, 2), decode)
    prompt_secs = best_of(
        reps, lambda: model(prompt, attention_mask=mask, use_cache=True, logits_to_keep=1)
    )
    record("decode", f"{attention}, generate()", (generate_secs - prompt_secs) / DECODE_NEW)

    # Batched prefill: 8 prompts of 128 tokens (all real tokens, with the
    # attention mask a padded batch would need) to the last position.
    b, t = BATCH
    batch_ids = random_ids(generator, b, t)
    batch_mask = torch.ones_like(batch_ids)
    for head, kwargs in HEADS.items():
        secs = best_of(
            min(reps, 2),
            lambda: model(
                batch_ids, attention_mask=batch_mask, use_cache=False, **kwargs
            ).logits[:, -1],
        )
        record("batch", f"{attention}, {head}", secs)

    del model
    gc.collect()
    return out


def batched_prompt_len(b: int) -> int:
    """Length of prompt `b` of a batched-decoding case (as in examples/bench.rs)."""
    return 10 + b % 5


def batched_decoding(directory: Path, reps: int) -> dict:
    """Greedy `generate` on left-padded batches of B ragged prompts, with
    each attention implementation; the fastest per batch size is reported."""
    generator = torch.Generator().manual_seed(7)
    cases: dict[str, dict] = {}
    prompts = {
        b: [random_ids(generator, batched_prompt_len(i))[None] for i in range(b)]
        for b in BATCHED_DECODING
    }
    for attention in ATTENTION:
        model = load(directory, attention)
        eos = model.config.eos_token_id
        for b in BATCHED_DECODING:
            width = max(p.shape[1] for p in prompts[b])
            ids = torch.full((b, width), eos)
            mask = torch.zeros((b, width), dtype=torch.long)
            for i, p in enumerate(prompts[b]):
                ids[i, width - p.shape[1] :] = p[0]
                mask[i, width - p.shape[1] :] = 1

            def run():
                out = model.generate(
                    ids,
                    attention_mask=mask,
                    max_new_tokens=BATCHED_NEW,
                    min_new_tokens=BATCHED_NEW,
                    do_sample=False,
                    pad_token_id=eos,
                )
                assert out.shape == (b, width + BATCHED_NEW)

            secs = best_of(min(reps, 2), run)
            print(f"  B={b} {attention}: {b * BATCHED_NEW / secs:.1f} tok/s", file=sys.stderr)
            case = cases.setdefault(str(b), {"batch": b, "new_tokens": BATCHED_NEW, "variants": {}})
            case["variants"][f"{attention}, generate()"] = b * BATCHED_NEW / secs
        del model
        gc.collect()
    for case in cases.values():
        variant = max(case["variants"], key=case["variants"].get)
        case["variant"] = variant
        case["tokens_per_second"] = case["variants"][variant]
        case["seconds"] = case["batch"] * BATCHED_NEW / case["tokens_per_second"]
    return cases


def print_batched(report: dict) -> None:
    print(f"\ntransformers batched greedy decoding ({BATCHED_NEW} new tokens, left-padded)")
    for run in report["runs"]:
        cases = run["batched_decoding"]
        single = cases["1"]["tokens_per_second"]
        print(f"\n{run['threads']} thread(s)")
        print(f"  {'batch':<10} {'tok/s':>12} {'vs B=1':>14}  fastest variant")
        for b in BATCHED_DECODING:
            c = cases[str(b)]
            print(
                f"  {f'B={b}':<10} {c['tokens_per_second']:>12.1f}"
                f" {c['tokens_per_second'] / single:>13.2f}x  {c['variant']}"
            )


def fastest(variants: dict[str, float]) -> tuple[str, float]:
    name = min(variants, key=variants.get)
    return name, variants[name]


def measure(directory: Path, config: GPT2Config, threads: int, reps: int) -> dict:
    """Everything at one thread count, in the Rust bench's schema (plus a
    `variant` naming the winner and `variants` with every figure)."""
    torch.set_num_threads(threads)
    bandwidth = read_bandwidth_gbs()
    gflops = matmul_gflops()

    cases: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for attention in ATTENTION:
            print(f"  attention {attention}...", file=sys.stderr, flush=True)
            for case, variants in measure_variant(directory, attention, reps).items():
                cases.setdefault(case, {}).update(variants)

    ttfl_variant, ttfl = fastest(cases["ttfl"])
    prefill = {}
    for t in PREFILL:
        variant, secs = fastest(cases[f"prefill {t}"])
        flops = prefill_flops(config, t)
        prefill[str(t)] = {
            "seconds": secs,
            "gflop": flops / 1e9,
            "fraction_of_matmul_rate": flops / secs / (gflops * 1e9),
            "variant": variant,
            "variants": cases[f"prefill {t}"],
        }
    decode_variant, per_token = fastest(cases["decode"])
    # Decoding reads every weight once per token: the bandwidth limit is the
    # read bandwidth over the size of the weights (the same as the Rust side).
    n_params = num_parameters(config)
    limit_tok_s = bandwidth * 1e9 / (n_params * 4)
    batch_variant, batch_secs = fastest(cases["batch"])
    b, t = BATCH
    batch_flops = b * prefill_flops(config, t)
    with torch.inference_mode():
        batched = batched_decoding(directory, reps)
    return {
        "threads": threads,
        "machine": {"read_bandwidth_gbs": bandwidth, "matmul_gflops": gflops},
        "time_to_first_logits_ms": ttfl * 1e3,
        "time_to_first_logits_variant": ttfl_variant,
        "time_to_first_logits_variants_ms": {k: v * 1e3 for k, v in cases["ttfl"].items()},
        "prefill": prefill,
        "decode": {
            "prompt": DECODE_PROMPT,
            "new_tokens": DECODE_NEW,
            "tokens_per_second": 1.0 / per_token,
            "ms_per_token": per_token * 1e3,
            "bandwidth_limit_tokens_per_second": limit_tok_s,
            "fraction_of_bandwidth_limit": (1.0 / per_token) / limit_tok_s,
            "variant": decode_variant,
            "variants_tokens_per_second": {k: 1.0 / v for k, v in cases["decode"].items()},
        },
        "batched_prefill": {
            "batch": b,
            "t": t,
            "seconds": batch_secs,
            "gflop": batch_flops / 1e9,
            "fraction_of_matmul_rate": batch_flops / batch_secs / (gflops * 1e9),
            "variant": batch_variant,
            "variants": cases["batch"],
        },
        "batched_decoding": batched,
    }


# --- peak memory -------------------------------------------------------------


def rss_probe(directory: Path, head: str) -> None:
    """Run in a child process: load, prefill T=1024, generate 128 tokens after
    an 896-token prompt (as the Rust probe does), print VmHWM in MB."""
    torch.set_num_threads(os.cpu_count() or 1)  # the Rust probe's rayon default
    with torch.inference_mode():
        model = load(directory, "sdpa")
        model(torch.arange(1024)[None], use_cache=False, **HEADS[head]).logits[:, -1]
        prompt = (torch.arange(1024 - DECODE_NEW) % 50000)[None]
        model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=DECODE_NEW,
            min_new_tokens=DECODE_NEW,
            do_sample=False,
            pad_token_id=model.config.eos_token_id,
        )
    status = Path("/proc/self/status").read_text()
    kb = next(int(l.split()[1]) for l in status.splitlines() if l.startswith("VmHWM:"))
    print(kb / 1024)


def peak_rss_mb(directory: Path) -> tuple[str, float, dict[str, float]]:
    """Peak RSS of a fresh process per head variant (VmHWM only ever grows,
    so each needs its own process); the smaller is reported."""
    figures = {}
    for head in HEADS:
        out = subprocess.run(
            [sys.executable, __file__, "--rss-probe", str(directory), "--rss-head", head],
            check=True,
            capture_output=True,
            text=True,
        )
        figures[f"sdpa, {head}"] = float(out.stdout.strip().splitlines()[-1])
    variant, mb = fastest(figures)
    return variant, mb, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    parser.add_argument("--json", default="target/bench-torch.json", type=Path)
    parser.add_argument("--quick", action="store_true", help="one repetition of each case")
    parser.add_argument(
        "--batched-decoding-only",
        action="store_true",
        help="only batched decoding (B = 1, 4, 8, 32); JSON to target/bench-torch-batched.json",
    )
    parser.add_argument(
        "--half",
        action="store_true",
        help="also measure f16 and bf16 weights (decode, prefill T=128/1024, first logits)",
    )
    parser.add_argument("--rss-probe", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rss-head", default="logits_to_keep=1", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_probe:
        return rss_probe(args.rss_probe, args.rss_head)

    reps = 1 if args.quick else 3
    threads = [int(n) for n in args.threads.split(",")]
    if args.batched_decoding_only:
        path = args.json
        if path == Path("target/bench-torch.json"):
            path = Path("target/bench-torch-batched.json")
        with tempfile.TemporaryDirectory(prefix="gpt2-torch-bench-") as tmp:
            directory = Path(tmp)
            write_random_gpt2(directory)
            runs = []
            for n in threads:
                torch.set_num_threads(n)
                print(f"batched decoding with {n} thread(s)...", file=sys.stderr, flush=True)
                with torch.inference_mode():
                    runs.append({"threads": n, "batched_decoding": batched_decoding(directory, reps)})
        report = {
            "model": "gpt2 (124M, random weights, f32, safetensors) — transformers generate()",
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
            "runs": runs,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        print_batched(report)
        print(f"JSON written to {path}", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory(prefix="gpt2-torch-bench-") as tmp:
        directory = Path(tmp)
        print(f"writing a random GPT-2 small (f32) to {directory}", file=sys.stderr)
        config = write_random_gpt2(directory)
        runs = []
        half = {}
        for n in threads:
            print(f"measuring with {n} thread(s)...", file=sys.stderr, flush=True)
            runs.append(measure(directory, config, n, reps))
            if args.half:
                half[str(n)] = measure_half(directory, reps)
        rss_variant, rss, rss_variants = peak_rss_mb(directory)

    report = {
        "model": "gpt2 (124M, random weights, f32, safetensors) — transformers GPT2LMHeadModel",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
        "runs": runs,
        "peak_rss_mb": rss,
        "peak_rss_variant": rss_variant,
        "peak_rss_variants_mb": rss_variants,
    }
    if half:
        report["half"] = half
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print_table(report)
    print_batched(report)
    print(f"JSON written to {args.json}", file=sys.stderr)


def print_table(report: dict) -> None:
    print("\ntransformers GPT-2 small (124M, f32), random weights")
    for run in report["runs"]:
        m = run["machine"]
        print(
            f"\n{run['threads']} thread(s) — machine: read {m['read_bandwidth_gbs']:.1f} GB/s,"
            f" matmul {m['matmul_gflops']:.1f} GFLOP/s"
        )
        print(f"  {'case':<34} {'result':>12} {'of the limit':>13}  fastest variant")
        print(
            f"  {'time to first logits':<34} {run['time_to_first_logits_ms']:>9.1f} ms"
            f" {'':>13}  {run['time_to_first_logits_variant']}"
        )
        for t in PREFILL:
            p = run["prefill"][str(t)]
            print(
                f"  {f'prefill T={t}':<34} {p['seconds'] * 1e3:>9.1f} ms"
                f" {p['fraction_of_matmul_rate'] * 100:>12.0f}%  {p['variant']}"
            )
        d = run["decode"]
        print(
            f"  {'decode (16 + 128 tokens, greedy)':<34} {d['tokens_per_second']:>6.1f} tok/s"
            f" {d['fraction_of_bandwidth_limit'] * 100:>12.0f}%  {d['variant']}"
        )
        b = run["batched_prefill"]
        print(
            f"  {'batched prefill 8 x 128':<34} {b['seconds'] * 1e3:>9.1f} ms"
            f" {b['fraction_of_matmul_rate'] * 100:>12.0f}%  {b['variant']}"
        )
    print(
        f"\npeak resident memory (load + T=1024 prefill + 128 tokens):"
        f" {report['peak_rss_mb']:.0f} MB ({report['peak_rss_variant']})"
    )


if __name__ == "__main__":
    main()
