"""Golden files for the building blocks: inputs and PyTorch outputs, one .npy per tensor.

    python3 python_ref/blocks.py        # writes golden/blocks/*.npy

Every case is `<case>.<tensor>.npy` (float32): the inputs under their argument names
(`a`, `b`, `x`, `weight`, `q`, `k`, `v`, ...) and the reference result as `out`
(attention maps as `probs` and `scores`). Scalars (dot, mean, variance, eps, scale)
are 1-element arrays of shape [1]. The references are PyTorch itself: `torch.dot`, `@`,
the real `transformers.pytorch_utils.Conv1D` and `torch.nn.LayerNorm` modules,
`ACT2FN[name]`, `torch.nn.functional.scaled_dot_product_attention`.

Deterministic: fixed seeds, one thread, `np.save`; running it twice leaves the files
byte-identical. Shapes are never square where a transpose could hide.
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN
from transformers.pytorch_utils import Conv1D

OUT = Path(__file__).resolve().parent.parent / "golden" / "blocks"

torch.manual_seed(0)  # Conv1D's init draws from the global generator (then overwritten)
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
GEN = torch.Generator().manual_seed(20240601)


def randn(*shape, scale=1.0):
    return torch.randn(*shape, generator=GEN, dtype=torch.float32) * scale


def save(case, **tensors):
    for name, t in tensors.items():
        a = t.detach().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        a = np.ascontiguousarray(a.reshape(a.shape or (1,)), dtype=np.float32)  # a scalar as [1]
        np.save(OUT / f"{case}.{name}.npy", a)


def scalar(x):
    return torch.tensor(x, dtype=torch.float32)


# ---------------------------------------------------------------- dot, matmul, Conv1D


def dot_cases():
    a, b = randn(7), randn(7)
    save("dot_1d", a=a, b=b, out=torch.dot(a, b))
    a, b = randn(1), randn(1)
    save("dot_single", a=a, b=b, out=torch.dot(a, b))
    # mixed signs and magnitudes: cancellation is where summation order shows
    a = torch.tensor([1e3, -2.5, 3e-3, -1e3, 7.0], dtype=torch.float32)
    b = torch.tensor([0.5, 4.0, -2e2, 0.5, -0.25], dtype=torch.float32)
    save("dot_cancel", a=a, b=b, out=torch.dot(a, b))


def matmul_cases():
    a, b = randn(3, 5), randn(5, 4)  # [m, k] @ [k, n], m, k, n all different
    save("matmul", a=a, b=b, out=a @ b)
    a, b = randn(1, 6), randn(6, 2)  # one row (T = 1)
    save("matmul_t1", a=a, b=b, out=a @ b)


def conv1d_case(case, t, n_in, n_out):
    layer = Conv1D(nf=n_out, nx=n_in)  # weight [nx, nf] = [in, out]
    with torch.no_grad():
        layer.weight.copy_(randn(n_in, n_out, scale=0.5))
        layer.bias.copy_(randn(n_out, scale=0.5))
    x = randn(t, n_in)
    with torch.no_grad():
        out = layer(x)
    save(case, x=x, weight=layer.weight, bias=layer.bias, out=out)


def linear_cases():
    conv1d_case("conv1d", t=4, n_in=6, n_out=10)
    conv1d_case("conv1d_t1", t=1, n_in=6, n_out=3)


# ---------------------------------------------------------------- softmax


def softmax_cases():
    x = randn(9)
    save("softmax_1d", x=x, out=torch.softmax(x, dim=-1))
    x = torch.tensor([0.7], dtype=torch.float32)
    save("softmax_single", x=x, out=torch.softmax(x, dim=-1))
    # every entry far below 0: a running max that starts at 0 would underflow to 0/0
    x = torch.tensor([-1000.0, -1001.0, -1003.5, -1000.5], dtype=torch.float32)
    save("softmax_1d_all_negative", x=x, out=torch.softmax(x, dim=-1))

    x = randn(4, 7)
    save("softmax_rows", x=x, out=torch.softmax(x, dim=-1))
    x = randn(3, 6, scale=1e4)  # exp(1e4) overflows without the max subtraction
    x[1] = torch.tensor([1e4, 1e4 - 1.0, -1e4, 1e4 - 0.5, 0.0, -1e4])
    save("softmax_rows_1e4", x=x, out=torch.softmax(x, dim=-1))
    x = torch.tensor([[2.0] * 5, [-3.25] * 5, [0.0] * 5], dtype=torch.float32)
    save("softmax_rows_equal", x=x, out=torch.softmax(x, dim=-1))
    x = randn(3, 6)
    x[0, 4:] = -float("inf")  # causal-style: the future is masked
    x[1, [0, 2, 3]] = -float("inf")
    x[2, 5] = -float("inf")
    save("softmax_rows_neg_inf", x=x, out=torch.softmax(x, dim=-1))


# ---------------------------------------------------------------- mean, variance, layer norm


def stats_cases():
    x = randn(11)
    save("mean", x=x, out=torch.mean(x))
    save("variance", x=x, out=torch.var(x, unbiased=False))
    x = torch.tensor([4.5], dtype=torch.float32)
    save("mean_single", x=x, out=torch.mean(x))
    save("variance_single", x=x, out=torch.var(x, unbiased=False))
    # |mean| >> std: the one-pass E[x²] - E[x]² formula loses every digit here
    x = 1000.0 + randn(13, scale=0.1)
    save("variance_offset", x=x, out=torch.var(x, unbiased=False))


def layer_norm_case(case, x, eps):
    n = x.shape[-1]
    ln = torch.nn.LayerNorm(n, eps=eps)
    with torch.no_grad():
        ln.weight.copy_(1.0 + randn(n, scale=0.3))
        ln.bias.copy_(randn(n, scale=0.3))
        out = ln(x)
    save(case, x=x, weight=ln.weight, bias=ln.bias, eps=scalar(eps), out=out)


def layer_norm_cases():
    layer_norm_case("layer_norm", randn(5, 12, scale=2.0) + 0.5, eps=1e-5)
    layer_norm_case("layer_norm_t1", randn(1, 7), eps=1e-6)
    # variance ~1e-9 next to eps 1e-5: eps dominates, the output is ~ (x - mean) * 316.
    # The rows sit near 0 so that the float32 mean itself is exact to ~1e-12.
    x = randn(3, 10, scale=3.2e-5)
    x[2] = 0.0  # an exactly constant row comes out as the bias
    layer_norm_case("layer_norm_near_constant", x, eps=1e-5)


# ---------------------------------------------------------------- activations

ACTIVATIONS = ["gelu_new", "gelu_pytorch_tanh", "gelu", "gelu_fast", "quick_gelu", "relu", "silu"]


def activation_cases():
    fixed = [-10.0, -5.0, -3.0, -1.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 1.0, 3.0, 5.0, 10.0]
    x = torch.cat([torch.tensor(fixed, dtype=torch.float32), randn(38, scale=2.0)]).reshape(3, 17)
    save("act", x=x)
    for name in ACTIVATIONS:
        with torch.no_grad():
            save(f"act_{name}", out=ACT2FN[name](x))


# ---------------------------------------------------------------- attention


def causal_mask(tq, tk):
    """Boolean [Tq, Tk], True = may attend. Query i sits at position Tk - Tq + i.

    (`is_causal=True` would align the mask top-left, i.e. query i at position i.)"""
    pos = torch.arange(tq).unsqueeze(1) + (tk - tq)
    return torch.arange(tk).unsqueeze(0) <= pos


def sdpa_case(case, tq, tk, d, dv):
    q, k, v = randn(tq, d), randn(tk, d), randn(tk, dv)
    scale = 1.0 / d**0.5
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(tq, tk), scale=scale)
    save(case, q=q, k=k, v=v, scale=scalar(scale), out=out)


def attention_cases():
    sdpa_case("sdpa", tq=5, tk=5, d=3, dv=4)
    sdpa_case("sdpa_t1", tq=1, tk=1, d=3, dv=4)
    sdpa_case("sdpa_tq3_tk7", tq=3, tk=7, d=4, dv=6)
    sdpa_case("sdpa_tq1_tk5", tq=1, tk=5, d=4, dv=6)


def mha_case(case, tq, tk, n_head, d, key_mask=None):
    """Split heads, F.scaled_dot_product_attention per head, merge; plus the maps."""
    c = n_head * d
    q, k, v = randn(tq, c), randn(tk, c), randn(tk, c)
    scale = 1.0 / d**0.5
    mask = causal_mask(tq, tk)
    if key_mask is not None:
        mask = mask & key_mask.unsqueeze(0)
    heads = lambda t: t.reshape(t.shape[0], n_head, d).transpose(0, 1)  # [T, C] -> [H, T, d]
    qh, kh, vh = heads(q), heads(k), heads(v)
    out_h = torch.stack(
        [
            F.scaled_dot_product_attention(qh[h], kh[h], vh[h], attn_mask=mask, scale=scale)
            for h in range(n_head)
        ]
    )  # [H, Tq, d]
    out = out_h.transpose(0, 1).reshape(tq, c)  # merge: [H, Tq, d] -> [Tq, C]
    scores = (qh @ kh.transpose(-1, -2) * scale).masked_fill(~mask, -float("inf"))  # [H, Tq, Tk]
    probs = torch.softmax(scores, dim=-1)
    tensors = dict(q=q, k=k, v=v, scale=scalar(scale), out=out, scores=scores, probs=probs)
    if key_mask is not None:
        tensors["key_mask"] = key_mask.float()  # 1.0 = real token, 0.0 = padding
    save(case, **tensors)


def multi_head_cases():
    mha_case("mha", tq=5, tk=5, n_head=2, d=4)  # C = 8
    mha_case("mha_h3", tq=4, tk=4, n_head=3, d=2)  # C = 6
    mha_case("mha_t1", tq=1, tk=1, n_head=2, d=3)
    mha_case("mha_tq3_tk7", tq=3, tk=7, n_head=2, d=5)  # C = 10
    mha_case("mha_tq1_tk5", tq=1, tk=5, n_head=3, d=4)  # C = 12
    # right padding: keys 4, 5 are padding; every query still sees key 0
    real = torch.tensor([1, 1, 1, 1, 0, 0], dtype=torch.bool)
    mha_case("mha_key_mask", tq=6, tk=6, n_head=2, d=4, key_mask=real)  # C = 8


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for stale in OUT.glob("*.npy"):  # this directory is ours alone: no leftovers from renamed cases
        stale.unlink()
    for cases in [
        dot_cases,
        matmul_cases,
        linear_cases,
        softmax_cases,
        stats_cases,
        layer_norm_cases,
        activation_cases,
        attention_cases,
        multi_head_cases,
    ]:
        cases()
    files = sorted(OUT.glob("*.npy"))
    print(f"wrote {len(files)} files, {sum(f.stat().st_size for f in files)} bytes, to {OUT}")


if __name__ == "__main__":
    main()
