"""Golden gradients: PyTorch autograd's ∂loss/∂(everything), for the backward pass in src/reference/.

    python3 python_ref/grads.py        # writes golden/grads/ (under 1 MB)

Two parts, both float32, eager attention, one thread, fixed seeds:

Every directory of .npy files below is committed packed as `<directory>.npz` (export_model.py's
pack_npz; tests/common::read_f32 reads `<directory>/<name>.npy` from it).

* golden/grads/blocks/<case>.<tensor>.npy: one box at a time on small inputs (the layout of
  golden/blocks/). The inputs under their names (`x`, `weight`, `q`, ...), the upstream gradient
  as `dy` (`dout`, `dlogits`, ...), and autograd's gradients as `d_<input>`. The boxes are the
  real PyTorch / transformers modules where one exists (`nn.LayerNorm`, `Conv1D`, `ACT2FN[name]`,
  `GPT2Attention`, `GPT2MLP`, `GPT2Block`, `F.cross_entropy`), the formula otherwise (one head,
  the embedding, the head). Integer inputs (ids, targets) are stored as float32 (exact below 2²⁴).
* golden/grads/<model>/<parameter>.npy: the whole model. For golden/model and every model of
  golden/variants, the loss `F.cross_entropy(logits.view(-1, V), targets.view(-1))` of a fixed
  batch [B, T] = [2, 12] (each row a random sequence of T + 1 ids: inputs its first T, targets
  its last T) and, after `loss.backward()`, the gradient of every parameter by its state-dict
  name (`wte.weight`, `h.0.attn.c_attn.weight`, ..., `lm_head.weight` when untied).
  The golden model's `wte.weight` gradient is [50257, 48], 9.6 MB: only a sample is kept,
  `wte.weight.rows.npy` (the rows listed in the manifest: every id of the batch and 200 seeded
  random ids, sorted), and `wte.weight.projections.npy`, R·G over all rows, R [8, vocab] the
  ±1 matrix the manifest's recipe defines (splitmix64), computed in float64.

manifest.json: versions, the cases, per model its batch, loss, parameter names and shapes, the
sampled rows and the projection recipe.

Deterministic: running it twice leaves every file byte-identical.
"""

import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.activations import ACT2FN
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention, GPT2Block, GPT2MLP
from transformers.pytorch_utils import Conv1D

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export_model as em  # noqa: E402  (sets one thread and deterministic algorithms)

OUT = em.GOLDEN / "grads"
BLOCKS = OUT / "blocks"
SEED = 20241017
B, T = 2, 12
SAMPLED_ROWS = 200
PROJECTIONS = 8
LOAD = "GPT2LMHeadModel.from_pretrained(dir, attn_implementation='eager', dtype=torch.float32).eval()"

torch.manual_seed(SEED)  # module inits draw from the global generator (then overwritten)
GEN = torch.Generator().manual_seed(SEED)
CASES = {}


def randn(*shape, scale=1.0):
    return torch.randn(*shape, generator=GEN, dtype=torch.float32) * scale


def leaf(x):
    return x.detach().clone().requires_grad_(True)


def save(case, about, **tensors):
    """Write `<case>.<name>.npy` for every tensor (a scalar as [1]); list the case in the manifest."""
    for name, t in tensors.items():
        a = t.detach().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        a = np.ascontiguousarray(a.reshape(a.shape or (1,)), dtype=np.float32)
        BLOCKS.mkdir(parents=True, exist_ok=True)
        np.save(BLOCKS / f"{case}.{name}.npy", a)
    CASES[case] = {"about": about, "tensors": list(tensors)}


def backward(y, dy, *leaves):
    """Autograd's gradients of `(y · dy).sum()` with respect to `leaves`: dy is ∂loss/∂y."""
    return torch.autograd.grad(y, leaves, grad_outputs=dy)


def tiny_config(**overrides):
    base = dict(vocab_size=16, n_positions=16, n_embd=12, n_layer=2, n_head=3, attn_implementation="eager")
    config = GPT2Config(**{**base, **overrides})
    assert config._attn_implementation == "eager"
    return config


def randomize_module(module, scale=0.5):
    """Every parameter random (LayerNorm gains around 1): no zero bias hides a missing term."""
    with torch.no_grad():
        for sub in module.modules():
            for name, p in sub.named_parameters(recurse=False):
                if isinstance(sub, nn.LayerNorm) and name == "weight":
                    p.copy_(1.0 + randn(*p.shape, scale=0.2))
                else:
                    p.copy_(randn(*p.shape, scale=scale))


# ---------------------------------------------------------------- one box at a time


def layer_norm_cases():
    for case, x, eps in [
        ("layer_norm", randn(5, 12, scale=2.0) + 0.5, 1e-5),
        # variance ~1e-9 next to eps 1e-5: eps dominates σ (rows near 0, so that the float32 mean
        # is exact to ~1e-12, as golden/blocks' near-constant case); the last row exactly constant
        ("layer_norm_eps", torch.cat([randn(3, 12, scale=3.2e-5), torch.zeros(1, 12)]), 1e-5),
        ("layer_norm_t1", randn(1, 7), 1e-5),
    ]:
        c = x.shape[1]
        ln = nn.LayerNorm(c, eps=eps)
        with torch.no_grad():
            ln.weight.copy_(1.0 + randn(c, scale=0.3))
            ln.bias.copy_(randn(c, scale=0.3))
        xl, dy = leaf(x), randn(*x.shape)
        d_x, d_w, d_b = backward(ln(xl), dy, xl, ln.weight, ln.bias)
        save(case, f"nn.LayerNorm({c}, eps={eps})", x=x, weight=ln.weight, bias=ln.bias, eps=eps,
             dy=dy, d_x=d_x, d_weight=d_w, d_bias=d_b)


def linear_cases():
    a, b = leaf(randn(5, 7)), leaf(randn(7, 3))
    dy = randn(5, 3)
    d_a, d_b = backward(a @ b, dy, a, b)
    save("matmul", "a @ b", a=a, b=b, dy=dy, d_a=d_a, d_b=d_b)

    layer = Conv1D(9, 6)  # nf = out = 9, nx = in = 6: not square, a transposed gradient shows
    with torch.no_grad():
        layer.weight.copy_(randn(6, 9, scale=0.5))
        layer.bias.copy_(randn(9, scale=0.5))
    x, dy = leaf(randn(5, 6)), randn(5, 9)
    d_x, d_w, d_b = backward(layer(x), dy, x, layer.weight, layer.bias)
    save("conv1d", "transformers Conv1D(nf=9, nx=6)", x=x, weight=layer.weight, bias=layer.bias,
         dy=dy, d_x=d_x, d_weight=d_w, d_bias=d_b)


ACTIVATIONS = ["gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu", "quick_gelu", "relu", "silu", "swish"]


def activation_cases():
    # 0 exactly (relu's kink), the tails, and a spread in between
    x = torch.cat([torch.tensor([0.0, -8.0, 8.0, -3.0, 3.0, 1e-4, -1e-4, 0.5]), randn(40, scale=2.0)]).reshape(6, 8)
    dy = randn(6, 8)
    save("act", "the input and upstream gradient of every act_<name> case", x=x, dy=dy)
    for name in ACTIVATIONS:
        xl = leaf(x)
        (d_x,) = backward(ACT2FN[name](xl), dy, xl)
        save(f"act_{name}", f"ACT2FN[{name!r}]", d_x=d_x)


def softmax_cases():
    x = randn(4, 6, scale=3.0)
    x[0, 3:] = float("-inf")  # masked entries: probability 0, gradient 0
    x[1] = x[1] * 1e3  # peaked: one probability ~1
    x[2] = 7.0  # all equal
    xl, dy = leaf(x), randn(4, 6)
    p = torch.softmax(xl, dim=-1)
    (d_x,) = backward(p, dy, xl)
    save("softmax_rows", "torch.softmax(x, -1); row 0 masked from 3 on, row 1 peaked, row 2 constant",
         x=x, p=p, dy=dy, d_x=d_x)


def one_head(q, k, v, scale):
    tq, tk = q.shape[-2], k.shape[-2]
    scores = (q @ k.transpose(-1, -2)) * scale
    future = torch.ones(tq, tk, dtype=torch.bool).triu(tk - tq + 1)
    scores = scores.masked_fill(future, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def attention_cases():
    d = 4
    for case, tq, tk, scale, about in [
        ("head", 6, 6, d ** -0.5, "scale 1/sqrt(d)"),
        ("head_no_scale", 6, 6, 1.0, "scale 1 (scale_attn_weights = false)"),
        ("head_inv_layer", 6, 6, d ** -0.5 / 3, "scale 1/(sqrt(d)·3) (scale_attn_by_inverse_layer_idx, layer 2)"),
        ("head_cached", 3, 7, d ** -0.5, "3 queries, the last of 7 keys"),
    ]:
        q, k, v = leaf(randn(tq, d)), leaf(randn(tk, d)), leaf(randn(tk, d))
        dout = randn(tq, d)
        d_q, d_k, d_v = backward(one_head(q, k, v, scale), dout, q, k, v)
        save(case, f"softmax(q·kᵀ·scale + causal mask)·v, {about}", q=q, k=k, v=v, scale=scale,
             dout=dout, d_q=d_q, d_k=d_k, d_v=d_v)

    q, k, v = (leaf(randn(3, 5, d)) for _ in range(3))
    dout = randn(3, 5, d)
    d_q, d_k, d_v = backward(one_head(q, k, v, d ** -0.5), dout, q, k, v)
    save("mha", "3 heads, each softmax(q·kᵀ/sqrt(d) + causal mask)·v", q=q, k=k, v=v, scale=d ** -0.5,
         dout=dout, d_q=d_q, d_k=d_k, d_v=d_v)

    # GPT-2's attention layer itself (c_attn, split, attend, merge, c_proj), in layer 1 of 2
    for case, flags in [
        ("attn", {}),
        ("attn_no_scale", {"scale_attn_weights": False}),
        ("attn_inv_layer", {"scale_attn_by_inverse_layer_idx": True}),
        ("attn_reorder", {"reorder_and_upcast_attn": True, "scale_attn_by_inverse_layer_idx": True}),
    ]:
        config = tiny_config(**flags)
        attn = GPT2Attention(config, layer_idx=1).eval()
        randomize_module(attn)
        x, dy = leaf(randn(1, 6, 12)), randn(1, 6, 12)
        y = attn(x)[0]
        grads = backward(y, dy, x, attn.c_attn.weight, attn.c_attn.bias, attn.c_proj.weight, attn.c_proj.bias)
        save(case, f"GPT2Attention(layer_idx=1), n_embd 12, 3 heads, {flags or 'defaults'}",
             x=x[0], **{"c_attn.weight": attn.c_attn.weight, "c_attn.bias": attn.c_attn.bias,
                        "c_proj.weight": attn.c_proj.weight, "c_proj.bias": attn.c_proj.bias},
             dy=dy[0], d_x=grads[0][0],
             **{"d_c_attn.weight": grads[1], "d_c_attn.bias": grads[2],
                "d_c_proj.weight": grads[3], "d_c_proj.bias": grads[4]})
        CASES[case]["config"] = {k: getattr(config, k) for k in
                                 ["n_embd", "n_head", "scale_attn_weights", "scale_attn_by_inverse_layer_idx",
                                  "reorder_and_upcast_attn"]}
        CASES[case]["layer"] = 1


def model_part_cases():
    # GPT2MLP with n_inner 20 (not 4·12)
    config = tiny_config(n_inner=20, activation_function="gelu_new")
    mlp = GPT2MLP(20, config).eval()
    randomize_module(mlp)
    x, dy = leaf(randn(5, 12)), randn(5, 12)
    g = backward(mlp(x), dy, x, mlp.c_fc.weight, mlp.c_fc.bias, mlp.c_proj.weight, mlp.c_proj.bias)
    save("mlp", "GPT2MLP(n_inner=20), gelu_new", x=x,
         **{"c_fc.weight": mlp.c_fc.weight, "c_fc.bias": mlp.c_fc.bias,
            "c_proj.weight": mlp.c_proj.weight, "c_proj.bias": mlp.c_proj.bias},
         dy=dy, d_x=g[0], **{"d_c_fc.weight": g[1], "d_c_fc.bias": g[2],
                             "d_c_proj.weight": g[3], "d_c_proj.bias": g[4]})

    # GPT2Block in layer 1, with a non-default activation and ε
    config = tiny_config(n_inner=20, activation_function="silu", layer_norm_epsilon=1e-3)
    block = GPT2Block(config, layer_idx=1).eval()
    randomize_module(block)
    x, dy = leaf(randn(1, 6, 12)), randn(1, 6, 12)
    out = block(x)
    y = out[0] if isinstance(out, tuple) else out
    names = [n for n, _ in block.named_parameters()]
    g = backward(y, dy, x, *[p for _, p in block.named_parameters()])
    save("block", "GPT2Block(layer_idx=1), n_embd 12, 3 heads, n_inner 20, silu, eps 1e-3", x=x[0],
         **{n: p for n, p in block.named_parameters()}, dy=dy[0], d_x=g[0][0],
         **{f"d_{n}": gi for n, gi in zip(names, g[1:])})
    CASES["block"]["config"] = {"n_embd": 12, "n_head": 3, "n_inner": 20, "activation_function": "silu",
                                "layer_norm_epsilon": 1e-3}
    CASES["block"]["layer"] = 1
    CASES["block"]["parameters"] = names

    # embedding: a repeated id collects both rows; wpe rows past T get nothing
    wte, wpe = leaf(randn(10, 4)), leaf(randn(8, 4))
    ids = torch.tensor([3, 7, 3, 0, 9, 3])
    dy = randn(6, 4)
    d_wte, d_wpe = backward(F.embedding(ids, wte) + wpe[: len(ids)], dy, wte, wpe)
    save("embedding", "wte[ids] + wpe[0..T], id 3 three times", ids=ids, wte=wte, wpe=wpe, dy=dy,
         d_wte=d_wte, d_wpe=d_wpe)

    # the head: logits = x · Wᵀ
    x, w = leaf(randn(5, 4)), leaf(randn(10, 4))
    dlogits = randn(5, 10)
    d_x, d_w = backward(x @ w.T, dlogits, x, w)
    save("head", "x · Wᵀ", x=x, weight=w, dlogits=dlogits, d_x=d_x, d_weight=d_w)


def cross_entropy_cases():
    for case, scale, about in [("cross_entropy", 2.0, "logits ~N(0, 2²)"),
                               ("cross_entropy_large", 1e3, "logits ~N(0, 1000²): exp would overflow")]:
        logits = leaf(randn(6, 10, scale=scale))
        targets = torch.randint(0, 10, (6,), generator=GEN)
        loss = F.cross_entropy(logits, targets)
        (d_logits,) = torch.autograd.grad(loss, logits)
        save(case, f"F.cross_entropy(logits, targets), {about}", logits=logits, targets=targets, loss=loss,
             d_logits=d_logits)


# ---------------------------------------------------------------- the whole model


def splitmix64(x):
    """SplitMix64 of each uint64 in x (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def projection_matrix(vocab):
    """R [PROJECTIONS, vocab]: R[i, v] = +1 if the top bit of splitmix64(i·vocab + v) is 0, else -1."""
    keys = np.arange(PROJECTIONS * vocab, dtype=np.uint64)
    bits = splitmix64(keys) >> np.uint64(63)
    return np.where(bits == 0, 1.0, -1.0).reshape(PROJECTIONS, vocab)


def batch(vocab, seed):
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, vocab, (B, T + 1), generator=g)
    return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()


def model_gradients(model_dir, out, seed, sample_wte):
    model = GPT2LMHeadModel.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32).eval()
    assert model.config._attn_implementation == "eager"
    vocab = model.config.vocab_size
    inputs, targets = batch(vocab, seed)
    logits = model(inputs, use_cache=False).logits  # [B, T, vocab]
    loss = F.cross_entropy(logits.view(-1, vocab), targets.view(-1))
    loss.backward()
    names, shapes = [], []
    entry = {"dir": str(Path(model_dir).relative_to(em.REPO)), "seed": seed,
             "inputs": inputs.tolist(), "targets": targets.tolist(), "loss": float(loss.detach())}
    for name, p in model.named_parameters():  # the tied lm_head is wte, listed once
        name = name.removeprefix("transformer.")
        names.append(name)
        shapes.append(list(p.shape))
        if name == "wte.weight" and sample_wte:
            rng = np.random.default_rng(seed)
            used = set(inputs.flatten().tolist()) | set(targets.flatten().tolist())
            extra = rng.choice(vocab, size=SAMPLED_ROWS, replace=False).tolist()
            rows = sorted(used | set(extra))
            # the tests take the absolute tolerance from the sampled rows' largest entry
            assert p.grad[rows].abs().max() == p.grad.abs().max(), "the largest wte gradient is sampled"
            em.save_npy(out / "wte.weight.rows.npy", p.grad[rows])
            r = projection_matrix(vocab)
            em.save_npy(out / "wte.weight.projections.npy", r @ p.grad.double().numpy())
            entry["wte_sample"] = {
                "rows": rows,
                "projections": f"R · G in float64, R [{PROJECTIONS}, vocab]: R[i, v] = +1 if the top bit "
                               "of splitmix64(i·vocab + v) is 0, else -1 (splitmix64: z = x + 0x9E3779B97F4A7C15; "
                               "z = (z ^ z>>30) · 0xBF58476D1CE4E5B9; z = (z ^ z>>27) · 0x94D049BB133111EB; "
                               "z ^ z>>31, wrapping u64)",
                "column_norms": [float(v) for v in p.grad.double().norm(dim=0)],
            }
        else:
            em.save_npy(out / f"{name}.npy", p.grad)
    entry["parameters"] = names
    entry["shapes"] = shapes
    return entry


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    layer_norm_cases()
    linear_cases()
    activation_cases()
    softmax_cases()
    attention_cases()
    model_part_cases()
    cross_entropy_cases()

    models = {"model": model_gradients(em.GOLDEN / "model", OUT / "model", SEED, sample_wte=True)}
    manifest = em.json.loads((em.GOLDEN / "variants" / "manifest.json").read_text())
    for k, v in enumerate(manifest["variants"]):
        name = v["name"]
        models[f"variants/{name}"] = model_gradients(em.GOLDEN / "variants" / name, OUT / "variants" / name,
                                                     SEED + 1 + k, sample_wte=False)
    for directory in [BLOCKS, *(OUT / name for name in models)]:
        em.pack_npz(directory)  # golden/grads/blocks.npz, model.npz, variants/<name>.npz
    em.write_json(OUT / "manifest.json", {
        "versions": {"torch": torch.__version__, "transformers": em.transformers.__version__,
                     "numpy": np.__version__},
        "script": "python_ref/grads.py",
        "load": LOAD,
        "loss": "F.cross_entropy(logits.view(-1, vocab), targets.view(-1)), then loss.backward()",
        "batch": {"B": B, "T": T},
        "layout": "each <dir>/ below is packed as <dir>.npz; blocks/<case>.<tensor>.npy: one box's inputs, upstream gradient and autograd's gradients (d_*); "
                  "<model>/<parameter>.npy: the whole model's gradients by state-dict name",
        "cases": CASES,
        "models": models,
    })
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"golden/grads: {total / 1e6:.3f} MB, {len(CASES)} box cases, {len(models)} models")
    for name, m in models.items():
        print(f"  {name}: loss {m['loss']:.6f}")
    assert total < 1.0e6, "golden/grads must stay under 1 MB"


if __name__ == "__main__":
    main()
