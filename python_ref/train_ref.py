"""Golden files for training (issue 17): the optimiser step and 10-step runs, in PyTorch.

    python3 python_ref/train_ref.py            # writes golden/train/
    python3 python_ref/train_ref.py replay --model DIR --data FILE --out DIR --log LOG.jsonl \
        --steps N --batch B --seq T --lr LR --warmup W --weight-decay WD --grad-clip C [--val]
                                               # replays a run of examples/train in PyTorch

Everything here follows the procedure `src/train/` implements, so that the Rust tests can
compare step by step:

* at step k (from 0) the loss is the mean cross-entropy over the B*T targets, computed with the
  parameters before the update;
* `torch.nn.utils.clip_grad_norm_(params, clip)` over all parameters (a tied wte is one parameter);
* the rate is nanoGPT's `get_lr` with `min_lr = lr/10`, `lr_decay_iters = steps`;
* one `torch.optim.AdamW` step (single-tensor implementation), with nanoGPT's two groups: weight
  decay on the parameters of 2 or more dimensions, none on biases and layer norms;
* the data: row r of step k starts at s = ((k*B + r)*T) mod (N - T - 1) in `tokens`, inputs
  tokens[s:s+T], targets tokens[s+1:s+T+1]; dropout off (model.eval(): autograd still runs).

Writes golden/train/ (about 0.5 MB):

* optim/: the optimiser alone. A tiny untied GPT-2 (config.json, model.safetensors: the start),
  6 steps of seeded synthetic gradients (grads.safetensors, keys "<k>/<name>", scaled so that
  clipping acts on some steps and not on others), non-default betas and eps, warm-up 2;
  final.safetensors: the parameters after the 6 steps; log.json: lr and grad_norm per step.
* model/: 10 steps on golden/model (tied head, 50257 x 48 wte) with B=2, T=16 on TEXT tokenized
  by golden/model's tokenizer. log.json: settings, tokens, per-step loss, lr, grad_norm, the
  sampled wte rows and wpe rows. final.safetensors: every parameter after the 10 steps except
  wte and wpe, which are too large: for them the sampled rows ("wte.rows", "wpe.rows") and
  "wte.proj" = [PROJECTIONS, C], the sums over ALL rows i of sign_j(i) * wte[i] (sign_j(i) from
  `sign`, an integer hash the Rust test recomputes), summed in float64.
* variants/<name>/: the same 10 steps on golden/variants/<name> (untied: its own lm_head;
  gelu: the erf GELU), ids drawn with a seed; final.safetensors holds every parameter in full.

Deterministic: fixed seeds, one thread; running the script twice leaves the files byte-identical.
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "golden"
OUT = GOLDEN / "train"

TEXT = (
    "In the beginning was the Word, and the Word was with God. Training a transformer means "
    "nudging every weight against the gradient of the loss: the backward pass computes it, "
    "layer by layer, by the chain rule, and the optimiser takes the step. 1234567 + 89 = ?"
)
PROJECTIONS = 4
SAMPLED_WTE_ROWS = 200
SEED = 17


def sign(j, i):
    """+1 or -1 for projection j and row i: bit 16 of a 32-bit multiplicative hash."""
    h = ((i + 1) * 2654435761 + (j + 1) * 40503) & 0xFFFFFFFF
    return 1.0 if (h >> 16) & 1 else -1.0


def signs(j, n):
    i = np.arange(n, dtype=np.uint64)
    h = ((i + 1) * np.uint64(2654435761) + np.uint64((j + 1) * 40503)) & np.uint64(0xFFFFFFFF)
    return np.where((h >> np.uint64(16)) & np.uint64(1), 1.0, -1.0)


def lr_at(k, lr, warmup, steps):
    """nanoGPT's get_lr with min_lr = lr/10 and lr_decay_iters = steps."""
    min_lr = lr / 10
    if k < warmup:
        return lr * (k + 1) / (warmup + 1)
    if k > steps:
        return min_lr
    decay = (k - warmup) / (steps - warmup)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay))
    return min_lr + coeff * (lr - min_lr)


def batch_at(tokens, k, B, T):
    period = len(tokens) - T - 1
    rows = [((k * B + r) * T) % period for r in range(B)]
    x = torch.tensor([tokens[s:s + T] for s in rows], dtype=torch.long)
    y = torch.tensor([tokens[s + 1:s + T + 1] for s in rows], dtype=torch.long)
    return x, y


def state_name(name):
    """named_parameters() name -> the checkpoint name without the `transformer.` prefix."""
    return name[len("transformer."):] if name.startswith("transformer.") else name


def make_optimizer(named, lr, betas, eps, wd):
    decay = [p for _, p in named if p.dim() >= 2]
    no_decay = [p for _, p in named if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=False)


def train(model, tokens, steps, B, T, lr, warmup, wd, clip, betas=(0.9, 0.999), eps=1e-8):
    """The issue's procedure; returns the per-step log."""
    model.eval()  # dropout off; autograd still records
    named = [(state_name(n), p) for n, p in model.named_parameters()]
    params = [p for _, p in named]
    opt = make_optimizer(named, lr, betas, eps, wd)
    log = []
    for k in range(steps):
        x, y = batch_at(tokens, k, B, T)
        logits = model(x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, clip) if clip > 0 else \
            torch.nn.utils.clip_grad_norm_(params, float("inf"))
        rate = lr_at(k, lr, warmup, steps)
        for g in opt.param_groups:
            g["lr"] = rate
        opt.step()
        log.append({"step": k, "loss": loss.item(), "lr": rate, "grad_norm": norm.item()})
    return log


def load(path):
    model = GPT2LMHeadModel.from_pretrained(path, attn_implementation="eager", dtype=torch.float32)
    return model


def params_dict(model):
    return {state_name(n): p.detach().clone().contiguous() for n, p in model.named_parameters()}


def write_json(path, obj):
    path.write_text(json.dumps(obj, indent=1) + "\n")


def optimizer_golden():
    out = OUT / "optim"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    config = GPT2Config(vocab_size=11, n_positions=7, n_embd=6, n_layer=2, n_head=2, n_inner=10,
                        tie_word_embeddings=False)
    model = GPT2LMHeadModel(config)
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").unlink()
    named = [(state_name(n), p) for n, p in model.named_parameters()]
    params = [p for _, p in named]
    steps, warmup, lr, wd, clip, betas, eps = 6, 2, 0.05, 0.1, 1.0, (0.8, 0.95), 1e-6
    scales = [0.1, 0.01, 0.05, 0.002, 0.2, 0.02]
    opt = make_optimizer(named, lr, betas, eps, wd)
    grads, log = {}, []
    for k in range(steps):
        for name, p in named:
            p.grad = torch.randn(p.shape, generator=g) * scales[k]
            grads[f"{k}/{name}"] = p.grad.clone()
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
        rate = lr_at(k, lr, warmup, steps)
        for group in opt.param_groups:
            group["lr"] = rate
        opt.step()
        log.append({"step": k, "lr": rate, "grad_norm": norm.item()})
    save_file(grads, out / "grads.safetensors")
    save_file(params_dict(model), out / "final.safetensors")
    write_json(out / "log.json", {
        "script": "python_ref/train_ref.py",
        "settings": {"steps": steps, "warmup": warmup, "lr": lr, "weight_decay": wd,
                     "grad_clip": clip, "beta1": betas[0], "beta2": betas[1], "eps": eps},
        "log": log,
    })


RUN = dict(steps=10, B=2, T=16, lr=3e-3, warmup=3, wd=0.1, clip=1.0)


def model_golden():
    out = OUT / "model"
    out.mkdir(parents=True, exist_ok=True)
    src = GOLDEN / "model"
    tokens = GPT2TokenizerFast.from_pretrained(src)(TEXT)["input_ids"]
    model = load(src)
    log = train(model, tokens, RUN["steps"], RUN["B"], RUN["T"], RUN["lr"], RUN["warmup"],
                RUN["wd"], RUN["clip"])
    final = params_dict(model)
    wte, wpe = final.pop("wte.weight"), final.pop("wpe.weight")
    g = torch.Generator().manual_seed(SEED)
    extra = torch.randperm(wte.shape[0], generator=g)[:SAMPLED_WTE_ROWS].tolist()
    rows = sorted(set(tokens) | set(extra))
    wpe_rows = list(range(RUN["T"])) + [RUN["T"] + 1, wpe.shape[0] // 2, wpe.shape[0] - 1]
    w = wte.double().numpy()
    proj = np.stack([signs(j, w.shape[0]) @ w for j in range(PROJECTIONS)])
    final["wte.rows"] = wte[rows].clone()
    final["wpe.rows"] = wpe[wpe_rows].clone()
    final["wte.proj"] = torch.from_numpy(proj.astype(np.float64))
    save_file(final, out / "final.safetensors")
    write_json(out / "log.json", {
        "script": "python_ref/train_ref.py",
        "model": "golden/model",
        "text": TEXT,
        "tokens": tokens,
        "settings": RUN,
        "wte_rows": rows,
        "wpe_rows": wpe_rows,
        "projections": PROJECTIONS,
        "log": log,
    })


def variant_golden(name):
    out = OUT / "variants" / name
    out.mkdir(parents=True, exist_ok=True)
    model = load(GOLDEN / "variants" / name)
    g = torch.Generator().manual_seed(SEED)
    tokens = torch.randint(0, model.config.vocab_size, (90,), generator=g).tolist()
    log = train(model, tokens, RUN["steps"], RUN["B"], RUN["T"], RUN["lr"], RUN["warmup"],
                RUN["wd"], RUN["clip"])
    save_file(params_dict(model), out / "final.safetensors")
    write_json(out / "log.json", {
        "script": "python_ref/train_ref.py",
        "model": f"golden/variants/{name}",
        "tokens": tokens,
        "settings": RUN,
        "log": log,
    })


def replay(argv):
    """Replay a run of examples/train in PyTorch: the same model, text, settings and data order.
    Compares every step's loss, lr and grad_norm with the Rust run's --log-json file, then loads
    the Rust run's --out directory with transformers and compares its weights with PyTorch's
    after the same steps. Prints the largest differences."""
    import argparse
    p = argparse.ArgumentParser(prog="train_ref.py replay")
    for flag in ("--model", "--data", "--out", "--log"):
        p.add_argument(flag, required=True)
    for flag in ("--steps", "--batch", "--seq", "--warmup"):
        p.add_argument(flag, type=int, required=True)
    for flag in ("--lr", "--weight-decay", "--grad-clip"):
        p.add_argument(flag, type=float, required=True)
    p.add_argument("--val", action="store_true", help="the run had --val-every (trains on 90%%)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    tokens = GPT2TokenizerFast.from_pretrained(a.model)(Path(a.data).read_text())["input_ids"]
    if a.val:
        tokens = tokens[:len(tokens) - len(tokens) // 10]
    model = load(a.model)
    log = train(model, tokens, a.steps, a.batch, a.seq, a.lr, a.warmup, a.weight_decay,
                a.grad_clip)
    rust = [json.loads(line) for line in Path(a.log).read_text().splitlines()]
    assert len(rust) == len(log), f"{len(rust)} steps logged, {len(log)} replayed"
    worst = {}
    for r, t in zip(rust, log):
        assert r["step"] == t["step"]
        for key in ("loss", "lr", "grad_norm"):
            rel = abs(r[key] - t[key]) / abs(t[key])
            worst[key] = max(worst.get(key, 0.0), rel)
        print(f"step {t['step']:4d}  loss rust {r['loss']:.6f} torch {t['loss']:.6f}  "
              f"grad_norm rust {r['grad_norm']:.5f} torch {t['grad_norm']:.5f}")
    for key, rel in worst.items():
        print(f"largest relative difference of {key}: {rel:.2e}")
    saved = GPT2LMHeadModel.from_pretrained(a.out, attn_implementation="eager")
    print(f"transformers loaded {a.out} ({saved.dtype}, {saved.num_parameters()} parameters)")
    mine = params_dict(saved)
    diffs = [(float((mine[n].float() - p.float()).abs().max()), n) for n, p in params_dict(model).items()]
    d, n = max(diffs)
    print(f"largest |weight difference| between the Rust run's saved model and PyTorch's: {d:.2e} ({n})")
    x = torch.tensor([tokens[:a.seq]])
    with torch.no_grad():
        l_rust = saved.float()(x).logits
        l_torch = model(x).logits
    print(f"largest |logit difference| on the first {a.seq} tokens: {float((l_rust - l_torch).abs().max()):.2e} "
          f"(logits up to {float(l_torch.abs().max()):.1f})")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "replay":
        return replay(sys.argv[2:])
    optimizer_golden()
    model_golden()
    for name in ("untied", "gelu"):
        variant_golden(name)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT.relative_to(ROOT)}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
