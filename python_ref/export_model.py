"""Golden model and reference activations from transformers' own GPT-2.

    python3 python_ref/export_model.py                     # mode 1: the committed random model
    python3 python_ref/export_model.py --model DIR [--out OUT]   # mode 2: references for DIR

Mode 1 writes, under golden/ (about 30 MB in all):

* golden/model/: a random GPT2LMHeadModel (vocab 50257, n_positions 128, n_embd 48,
  3 layers, 4 heads, gelu_new) as a Hugging Face directory: config.json,
  generation_config.json and model.safetensors from `save_pretrained`; pytorch_model.bin
  in the layout of the real 2019 GPT-2 file (legacy non-zip torch.save, keys without
  `transformer.`, no lm_head.weight, float32 causal-mask buffers h.{i}.attn.bias and the
  scalar h.{i}.attn.masked_bias, the state dict's `_metadata`); the real GPT-2 vocab.json
  and merges.txt; tokenizer_config.json as the real gpt2 repository has it (model_max_length
  only). No tokenizer.json: readers must build the tokenizer from vocab + merges.
* golden/reference/: the references for that model (below), plus tokenization.json.
* golden/checkpoints/dtypes.safetensors and dtypes.<name>.npy: tiny F32/F16/BF16 tensors
  and their values upcast to float32.

Mode 2 loads DIR with `from_pretrained` (eager attention, float32) and its tokenizer, and
writes the references into OUT (default DIR/reference).

References (OUT/):

* manifest.json: versions, the model directory as given, a config summary, the prompts
  (text, ids, top-5 of the last position), the recorded tensor names.
* <prompt>/<name>.npy for every name of src/trace.rs (float32, batch axis dropped) and
  <prompt>/ids.npy (int64). Recorded with forward hooks on transformers' modules; the
  attention scores and probabilities are the input and output of transformers' own softmax
  call, caught by swapping `torch.nn.functional.softmax` for a spy while the attention
  module runs. Masked scores (transformers: finfo(float32).min) are written as -inf.
* generate.json: greedy continuations by `model.generate`.
* filters/: one step of transformers' logits processors (temperature, top-k, top-p,
  repetition penalty, and their combination in `generate`'s order).
* batch/: a left-padded batch and its logits, position ids = cumsum(mask) - 1.
* architecture.txt: `print(model)`.

Deterministic: fixed seeds, one thread, deterministic algorithms, np.save, json with sorted
insertion order, and a legacy .bin writer of our own (see `save_legacy_bin`). Running the
script twice leaves every file byte-identical.
"""

import argparse
import io
import json
import os
import pickle
import pickletools
import shutil
import struct
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import safetensors
import safetensors.torch
import torch
import transformers
from torch import nn
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2TokenizerFast,
)
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.pytorch_utils import Conv1D

import kv_cache  # python_ref/kv_cache.py, beside this script
import perplexity  # python_ref/perplexity.py, beside this script

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "golden"
DEFAULT_TOKENIZER_DIR = REPO.parent / "shared" / "gpt2-tokenizer"
EOT = 50256  # <|endoftext|>, also GPT-2's pad id here

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

# ---------------------------------------------------------------- the random golden model

SEED = 20190214  # GPT-2's release day
CONFIG = dict(
    vocab_size=50257,
    n_positions=128,
    n_embd=48,
    n_layer=3,
    n_head=4,
    activation_function="gelu_new",
)
# Init scales, chosen so that every step matters and a wrong one shows: LayerNorm weights
# around 1 and biases far from 0; projections large enough that attention is neither
# one-hot nor uniform and gelu sees both signs; wte large enough that the logits of a
# prompt spread over several units (std ~3) without one token taking all the mass.
STD = {
    "ln.weight": 0.3,  # 1 + 0.3 N(0, 1)
    "ln.bias": 0.2,
    "wte": 0.45,
    "wpe": 0.3,
    "c_attn": 0.2,
    "attn.c_proj": 0.15,
    "c_fc": 0.2,
    "mlp.c_proj": 0.1,
    "conv.bias": 0.1,
}

PROMPTS = [
    ("p0", "Hello, my dog is cute"),
    ("p1", "The capital of France is"),
    ("p2", "A"),  # a single token
    ("p3", "Once upon a time<|endoftext|> The"),  # <|endoftext|> mid-text
]

# The filters' prompt: repeated ids (the repetition penalty applies once per distinct id,
# not once per occurrence), penalized logits of both signs, and, for the random model,
# top-k and top-p cuts far from flipping (see the margins in filters/cases.json), and a
# combined filter that keeps a dozen tokens. Picked by scanning short phrases.
FILTER_PROMPT = ("f0", "cat a cat, it it")

LONG_TEXT = (
    "In the beginning of 2019, a research lab released a language model called GPT-2. It was "
    "trained on 40 GB of web text (8 million pages!) and could write surprisingly coherent "
    "paragraphs: news articles, poems, recipes -- even code. \"Too dangerous to release,\" "
    "some said; others weren't so sure. The smallest version has 124M parameters, 12 layers, "
    "12 heads and a 1024-token context; the largest, 1.5B. Today you can run it on a laptop "
    "in a few lines of Rust, check every number against PyTorch, and still be surprised by "
    "what it says next. Here's the thing, though: it doesn't know what it doesn't know."
)


def randomize(model, std, g):
    """Draw every weight of `model.transformer` from `g` with the scales `std` (see STD):
    LayerNorm gains around 1, biases and embeddings and each kind of Conv1D at its own scale."""

    def randn(p, scale):
        return torch.randn(p.shape, generator=g, dtype=torch.float32) * scale

    with torch.no_grad():
        for name, module in model.transformer.named_modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.copy_(1.0 + randn(module.weight, std["ln.weight"]))
                module.bias.copy_(randn(module.bias, std["ln.bias"]))
            elif isinstance(module, nn.Embedding):
                module.weight.copy_(randn(module.weight, std[name]))
            elif isinstance(module, Conv1D):
                key = "attn.c_proj" if name.endswith("attn.c_proj") else (
                    "mlp.c_proj" if name.endswith("mlp.c_proj") else name.rsplit(".", 1)[-1]
                )
                module.weight.copy_(randn(module.weight, std[key]))
                module.bias.copy_(randn(module.bias, std["conv.bias"]))


def build_random_model():
    """The committed golden model: transformers' GPT2LMHeadModel with our random weights."""
    torch.manual_seed(SEED)  # transformers' own init draws from the global generator
    config = GPT2Config(**CONFIG, attn_implementation="eager")
    model = GPT2LMHeadModel(config).eval()
    assert model.config._attn_implementation == "eager"
    g = torch.Generator().manual_seed(SEED)
    randomize(model, STD, g)
    assert model.lm_head.weight is model.transformer.wte.weight, "the head must be tied to wte"
    return model


# ---------------------------------------------------------------- the legacy pytorch_model.bin


def legacy_state_dict(model):
    """GPT2Model's state dict as the 2019 conversion script saved it: no `transformer.`
    prefix, no lm_head, the causal mask `h.{i}.attn.bias` as float32 [1, 1, P, P] and
    `h.{i}.attn.masked_bias` = -1e4, in module order, with the state dict's `_metadata`."""
    transformer = model.transformer
    attns = [block.attn for block in transformer.h]
    for attn in attns:  # transformers 4.57 registers them non-persistent: save them this once
        attn._non_persistent_buffers_set.difference_update({"bias", "masked_bias"})
    try:
        sd = transformer.state_dict()
    finally:
        for attn in attns:
            attn._non_persistent_buffers_set.update({"bias", "masked_bias"})
    assert "_metadata" in vars(sd)  # pickled too (a BUILD of the OrderedDict), as in real files
    p = model.config.n_positions
    for key in list(sd):
        if key.endswith(".attn.bias"):
            sd[key] = torch.tril(torch.ones(p, p, dtype=torch.float32)).view(1, 1, p, p)
        elif key.endswith(".attn.masked_bias"):
            sd[key] = torch.tensor(-1e4, dtype=torch.float32)
        else:
            sd[key] = sd[key].detach().clone().contiguous()
    return sd


class _LegacyPickler(pickle.Pickler):
    """torch's legacy pickler, with storage keys given by `keys` (data_ptr -> key)."""

    def __init__(self, f, keys):
        super().__init__(f, protocol=2)
        self.keys = keys

    def persistent_id(self, obj):
        if isinstance(obj, torch.storage.TypedStorage):
            return (
                "storage",
                getattr(torch, obj._pickle_storage_type()),  # torch.FloatStorage
                self.keys[obj._untyped_storage.data_ptr()],
                "cpu",
                obj._size(),
                None,  # not a view
            )
        return None


def legacy_bin_bytes(state_dict):
    """The legacy (pre-1.6, non-zip) torch.save format, written by hand so the bytes are
    deterministic.

    torch 2.9's `_legacy_save` names each storage `str(storage._cdata)` (its memory
    address) and writes the storages sorted by that name: both differ from run to run.
    This writer does exactly what `_legacy_save` does (same pickler subclass, same
    persistent ids, same sys-info dict, same storage records: an 8-byte little-endian
    element count then the raw bytes) with fixed address-like keys instead. Like real
    files, where addresses have nothing to do with the order of the state dict, the keys
    are a fixed shuffle, so the storages are NOT stored in the order the pickle first uses
    them: a reader must follow the key list. `check_legacy_bin` compares the result with
    torch's own writer.
    """
    tensors = list(state_dict.values())
    ptrs = [t.untyped_storage().data_ptr() for t in tensors]
    assert len(set(ptrs)) == len(ptrs), "every tensor must own its storage"
    for t in tensors:
        assert t.is_contiguous() and t.storage_offset() == 0
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
    order = np.random.RandomState(SEED).permutation(len(tensors))
    key_of = {ptr: str(94_000_000_000_000 + 4096 * int(k)) for ptr, k in zip(ptrs, order)}
    sys_info = {
        "protocol_version": torch.serialization.PROTOCOL_VERSION,
        "little_endian": sys.byteorder == "little",
        "type_sizes": {
            "short": torch.serialization.SHORT_SIZE,
            "int": torch.serialization.INT_SIZE,
            "long": torch.serialization.LONG_SIZE,
        },
    }
    f = io.BytesIO()
    pickle.dump(torch.serialization.MAGIC_NUMBER, f, protocol=2)
    pickle.dump(torch.serialization.PROTOCOL_VERSION, f, protocol=2)
    pickle.dump(sys_info, f, protocol=2)
    _LegacyPickler(f, key_of).dump(state_dict)
    keys = sorted(key_of.values())
    pickle.dump(keys, f, protocol=2)
    by_key = {key_of[p]: t for p, t in zip(ptrs, tensors)}
    for key in keys:
        t = by_key[key]
        f.write(struct.pack("<q", t.numel()))
        f.write(t.numpy().tobytes())
    return f.getvalue(), key_of


def _split_pickles(data, n):
    """The byte offset after the first `n` pickles of `data`."""
    f = io.BytesIO(data)
    for _ in range(n):
        for _op in pickletools.genops(f):
            pass
    return f.tell()


def check_legacy_bin(data, key_of, state_dict):
    """Our bytes are torch's legacy writer's bytes with the storage keys renamed (and the
    storages reordered by the new keys), and torch.load(weights_only=True), as
    transformers loads a .bin, gives back every tensor."""
    buf = io.BytesIO()
    torch.save(state_dict, buf, _use_new_zipfile_serialization=False)
    theirs = buf.getvalue()
    binunicode = lambda k: b"X" + struct.pack("<I", len(k)) + k.encode()  # noqa: E731
    head_end = _split_pickles(theirs, 4)  # magic, version, sys info, state dict
    head = theirs[:head_end]
    f = io.BytesIO(theirs[head_end:])
    their_keys = pickle.load(f)
    old_to_new = {str(t.untyped_storage()._cdata): key_of[t.untyped_storage().data_ptr()]
                  for t in state_dict.values()}
    nbytes = {str(t.untyped_storage()._cdata): 8 + t.untyped_storage().nbytes() for t in state_dict.values()}
    assert sorted(their_keys) == their_keys and set(their_keys) == set(old_to_new)
    blocks = {old_to_new[k]: f.read(nbytes[k]) for k in their_keys}
    assert f.read() == b""
    for old, new in old_to_new.items():
        assert head.count(binunicode(old)) == 1
        head = head.replace(binunicode(old), binunicode(new))
    new_keys = sorted(blocks)
    assert data == head + pickle.dumps(new_keys, protocol=2) + b"".join(blocks[k] for k in new_keys)
    first_use = [key_of[t.untyped_storage().data_ptr()] for t in state_dict.values()]
    assert first_use != new_keys, "storages must not be stored in the order of first use"
    loaded = torch.load(io.BytesIO(data), weights_only=True)
    assert list(loaded) == list(state_dict)
    for k, v in state_dict.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k


# ---------------------------------------------------------------- saving the model directory


def save_model_dir(model, out, tokenizer_dir):
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out, safe_serialization=True)
    sd = legacy_state_dict(model)
    data, key_of = legacy_bin_bytes(sd)
    check_legacy_bin(data, key_of, sd)
    (out / "pytorch_model.bin").write_bytes(data)
    for name in ["vocab.json", "merges.txt"]:
        shutil.copyfile(tokenizer_dir / name, out / name)
    # The real gpt2 repository's tokenizer_config.json is just this one entry.
    write_json(out / "tokenizer_config.json", {"model_max_length": model.config.n_positions})
    assert not (out / "tokenizer.json").exists()


def verify_model_dir(model, out, ids):
    """Reloading golden/model gives the model we exported, from either weights file."""
    ids = torch.tensor([ids])
    with torch.no_grad():
        want = model(ids).logits
        for fmt in ["model.safetensors", "pytorch_model.bin"]:
            with tempfile.TemporaryDirectory() as tmp:
                for name in ["config.json", fmt]:
                    shutil.copyfile(out / name, Path(tmp) / name)
                reloaded = GPT2LMHeadModel.from_pretrained(tmp, attn_implementation="eager", dtype=torch.float32)
                reloaded.eval()
                assert torch.equal(reloaded(ids).logits, want), f"reloading {fmt} changed the logits"
                for k, v in model.state_dict().items():
                    assert torch.equal(reloaded.state_dict()[k], v), f"{fmt}: {k} differs"
    # The .bin by itself, as a plain state dict.
    sd = torch.load(out / "pytorch_model.bin", weights_only=True)
    expected = model.transformer.state_dict()
    assert set(sd) - set(expected) == {f"h.{i}.attn.{b}" for i in range(model.config.n_layer) for b in ["bias", "masked_bias"]}
    assert "lm_head.weight" not in sd and not any(k.startswith("transformer.") for k in sd)
    for k, v in expected.items():
        assert torch.equal(sd[k], v), k
    tok = AutoTokenizer.from_pretrained(out)
    assert tok("Hello, my dog is cute").input_ids == [15496, 11, 616, 3290, 318, 13779]


# ---------------------------------------------------------------- recording activations


class Recorder:
    """Forward hooks on transformers' modules that copy each step under its trace name."""

    def __init__(self, model):
        self.model = model
        self.tensors = OrderedDict()
        self.handles = []
        self.spied = None  # the layer whose attention is running
        self.softmax_calls = 0
        tr = model.transformer
        cfg = model.config
        self.pre(tr.drop, "embed")
        for i, block in enumerate(tr.h):
            self.post(block.ln_1, f"h.{i}.ln_1")
            self.post(block.attn.c_attn, f"h.{i}.attn.c_attn", self.split_qkv(i))
            self.handles.append(block.attn.register_forward_pre_hook(self.spy_on(i)))
            self.handles.append(block.attn.register_forward_hook(self.unspy))
            self.pre(block.attn.c_proj, f"h.{i}.attn.merged")
            self.post(block.attn.c_proj, f"h.{i}.attn.c_proj")
            self.pre(block.ln_2, f"h.{i}.resid_1")
            self.post(block.ln_2, f"h.{i}.ln_2")
            self.post(block.mlp.c_fc, f"h.{i}.mlp.c_fc")
            self.post(block.mlp.act, f"h.{i}.mlp.act")
            self.post(block.mlp.c_proj, f"h.{i}.mlp.c_proj")
            self.post(block, f"h.{i}")
        self.post(tr.ln_f, "ln_f")
        self.post(model.lm_head, "logits")
        self.n_head, self.head_dim = cfg.n_head, cfg.n_embd // cfg.n_head
        self.real_softmax = nn.functional.softmax

    def put(self, name, x):
        assert name not in self.tensors, f"{name} recorded twice"
        assert x.shape[0] == 1, "one sequence at a time"
        self.tensors[name] = x[0].detach().clone()

    def pre(self, module, name):
        self.handles.append(module.register_forward_pre_hook(lambda m, args: self.put(name, args[0])))

    def post(self, module, name, then=None):
        def hook(m, args, out):
            out = out[0] if isinstance(out, tuple) else out  # GPT2Block returns a tuple
            self.put(name, out)
            if then:
                then(out)

        self.handles.append(module.register_forward_hook(hook))

    def split_qkv(self, i):
        """q, k, v [n_head, T, d] exactly as GPT2Attention.forward splits c_attn's output."""

        def split(out):  # [1, T, 3C]
            c = self.model.config.n_embd
            q, k, v = out.split(c, dim=2)
            for name, x in [("q", q), ("k", k), ("v", v)]:
                x = x.view(*x.shape[:-1], -1, self.head_dim).transpose(1, 2)  # [1, H, T, d]
                self.put(f"h.{i}.attn.{name}", x)

        return split

    def spy_on(self, i):
        def pre(module, args):
            def softmax(x, dim=None, **kwargs):
                y = self.real_softmax(x, dim=dim, **kwargs)
                self.softmax_calls += 1
                scores = x.detach().clone()
                # transformers masks with finfo.min (plus the additive mask's finfo.min,
                # which overflows to -inf): written as -inf.
                scores[scores <= torch.finfo(scores.dtype).min / 2] = float("-inf")
                self.put(f"h.{i}.attn.scores", scores)
                self.put(f"h.{i}.attn.probs", y)
                return y

            nn.functional.softmax = softmax

        return pre

    def unspy(self, module, args, out):
        nn.functional.softmax = self.real_softmax

    def run(self, ids):
        self.tensors = OrderedDict()
        self.softmax_calls = 0
        try:
            with torch.no_grad():
                logits = self.model(torch.tensor([ids]), use_cache=False).logits
        finally:
            nn.functional.softmax = self.real_softmax
        assert self.softmax_calls == self.model.config.n_layer, "one softmax per attention"
        assert torch.equal(self.tensors["logits"], logits[0])
        return self.tensors

    def remove(self):
        for h in self.handles:
            h.remove()


def trace_names(n_layer):
    """The names of src/trace.rs, in forward order."""
    names = ["embed"]
    for i in range(n_layer):
        names += [f"h.{i}.{s}" for s in [
            "ln_1", "attn.c_attn", "attn.q", "attn.k", "attn.v", "attn.scores", "attn.probs",
            "attn.merged", "attn.c_proj", "resid_1", "ln_2", "mlp.c_fc", "mlp.act", "mlp.c_proj",
        ]] + [f"h.{i}"]
    return names + ["ln_f", "logits"]


def check_trace(model, ids, t):
    """Consistency of the recorded steps with each other (not a recomputation for the file)."""
    cfg = model.config
    T, C, H = len(ids), cfg.n_embd, cfg.n_head
    tr = model.transformer
    pos = torch.arange(T)
    assert torch.allclose(t["embed"], tr.wte.weight[ids] + tr.wpe.weight[pos], atol=1e-6)
    upper = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        assert t[p + "attn.q"].shape == (H, T, C // H)
        s = t[p + "attn.scores"]
        assert s.shape == (H, T, T)
        assert torch.equal(torch.isneginf(s), upper.expand(H, T, T)), "masked = strictly above the diagonal"
        assert torch.isfinite(s[:, ~upper]).all()
        q, k = t[p + "attn.q"], t[p + "attn.k"]
        scale = ((C // H) ** 0.5 if cfg.scale_attn_weights else 1) * ((i + 1) if cfg.scale_attn_by_inverse_layer_idx else 1)
        want = (q @ k.transpose(-1, -2)) / scale
        assert torch.allclose(s[:, ~upper], want[:, ~upper], atol=1e-4, rtol=1e-4), "q/k split"
        merged = (t[p + "attn.probs"] @ t[p + "attn.v"]).transpose(0, 1).reshape(T, C)
        assert torch.allclose(merged, t[p + "attn.merged"], atol=1e-5, rtol=1e-5), "v split"
        prev = t["embed"] if i == 0 else t[f"h.{i - 1}"]
        assert torch.allclose(t[p + "resid_1"], prev + t[p + "attn.c_proj"], atol=1e-5)
        assert torch.allclose(t[f"h.{i}"], t[p + "resid_1"] + t[p + "mlp.c_proj"], atol=1e-5)


# ---------------------------------------------------------------- references


def save_npy(path, x, dtype=np.float32):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    np.save(path, np.array(a, dtype=dtype, order="C"))  # (ascontiguousarray would make a scalar [1])


def pack_npz(directory):
    """Replace `directory` of small .npy files by one uncompressed `<directory>.npz` holding them
    (member `<name>.npy`, in name order, fixed timestamps: the same bytes on every run). A file
    takes at least a disk block, a member does not; tests/common::read_f32 reads either form."""
    import zipfile
    directory = Path(directory)
    files = sorted(directory.glob("*.npy"))
    assert files and all(f.is_file() for f in directory.iterdir()), directory
    with zipfile.ZipFile(directory.with_suffix(".npz"), "w", zipfile.ZIP_STORED) as z:
        for f in files:
            info = zipfile.ZipInfo(f.name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            z.writestr(info, f.read_bytes())
    shutil.rmtree(directory)


def to_json(obj, indent=0):
    """JSON with one key per line, but lists of numbers (ids, [id, prob] pairs) on one line."""
    pad, inner = " " * indent, " " * (indent + 1)
    flat = lambda x: not isinstance(x, (dict, list))  # noqa: E731
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {to_json(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and obj and not all(flat(x) or (isinstance(x, list) and all(map(flat, x))) for x in obj):
        return "[\n" + ",\n".join(inner + to_json(x, indent + 1) for x in obj) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(", ", ": "))


def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = to_json(obj) + "\n"
    assert json.loads(text) == obj
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def top5(logits):
    probs = torch.softmax(logits.double(), dim=-1)
    p, i = probs.topk(5)
    return [[int(a), float(b)] for a, b in zip(i, p)]


def config_summary(cfg):
    return {
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.n_positions,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": cfg.n_inner if cfg.n_inner is not None else 4 * cfg.n_embd,
        "activation_function": cfg.activation_function,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "scale_attn_weights": cfg.scale_attn_weights,
        "scale_attn_by_inverse_layer_idx": cfg.scale_attn_by_inverse_layer_idx,
        "reorder_and_upcast_attn": cfg.reorder_and_upcast_attn,
        "tie_word_embeddings": cfg.tie_word_embeddings,
    }


def write_traces(model, tok, out):
    rec = Recorder(model)
    names = trace_names(model.config.n_layer)
    prompts, stats = [], {}
    try:
        for name, text in PROMPTS:
            ids = tok(text).input_ids
            assert 1 <= len(ids) <= 12, (text, ids)
            t = rec.run(ids)
            assert list(t) == names, sorted(set(t) ^ set(names))  # every step, in forward order
            check_trace(model, ids, t)
            save_npy(out / name / "ids.npy", ids, np.int64)
            for n in names:
                save_npy(out / name / f"{n}.npy", t[n])
            logits = t["logits"]
            prompts.append({"name": name, "text": text, "ids": ids, "top5": top5(logits[-1])})
            stats[name] = (float(logits.std()), top5(logits[-1])[0][1])
    finally:
        rec.remove()
    assert any(len(p["ids"]) == 1 for p in prompts)
    assert any(EOT in p["ids"][:-1] for p in prompts)
    return prompts, names, stats


def write_generate(model, tok, out):
    n_new = 20
    long_len = min(100, model.config.n_positions - n_new)
    long_ids = tok(LONG_TEXT, verbose=False).input_ids[:long_len]  # longer than the model: cut
    assert len(long_ids) == long_len
    cases = [
        ("g0", PROMPTS[0][1], tok(PROMPTS[0][1]).input_ids),
        ("g1", PROMPTS[2][1], tok(PROMPTS[2][1]).input_ids),
        ("g2_long", tok.decode(long_ids), long_ids),
    ]
    gen_cfg = GenerationConfig(
        do_sample=False, max_new_tokens=n_new, pad_token_id=EOT,
        bos_token_id=model.config.bos_token_id, eos_token_id=model.config.eos_token_id,
    )
    out_cases = []
    for name, text, ids in cases:
        x = torch.tensor([ids])
        with torch.no_grad():
            y = model.generate(x, attention_mask=torch.ones_like(x), generation_config=gen_cfg,
                               output_logits=True, return_dict_in_generate=True)
        new = y.sequences[0, len(ids):].tolist()
        # How close each greedy choice was: the smallest top-1 minus top-2 logit gap.
        gaps = [float(v[0] - v[1]) for v in (step[0].topk(2).values for step in y.logits)]
        out_cases.append({
            "name": name, "text": text, "ids": ids, "new_ids": new,
            "new_text": tok.decode(new),
            "stopped_at_eos": len(new) < n_new,
            "min_top2_logit_gap": min(gaps),
        })
    write_json(out / "generate.json", {
        "how": "model.generate(ids, attention_mask=ones, do_sample=False, max_new_tokens=20, "
               "pad_token_id=50256), KV cache on (transformers' default); generation stops early "
               "only if eos_token_id is produced",
        "max_new_tokens": n_new,
        "eos_token_id": gen_cfg.eos_token_id,
        "pad_token_id": EOT,
        "cases": out_cases,
    })
    return out_cases


def kept(x):
    return int(torch.isfinite(x).sum())


def margin(proc, x, prefix=""):
    """How far a cut is from flipping: for top-k the gap between the k-th and (k+1)-th
    score; for top-p the distance of the cumulative probabilities (ascending, float32 as
    transformers sums them) on either side of the cut from 1 - top_p."""
    if isinstance(proc, TopKLogitsWarper):
        v = x.sort(descending=True).values
        return {prefix + "kth_minus_next": float(v[proc.top_k - 1] - v[proc.top_k])}
    if isinstance(proc, TopPLogitsWarper):
        cum = x.sort().values.softmax(-1).cumsum(-1)
        thr = 1 - proc.top_p
        n_removed = int((cum <= thr).sum())
        out = {prefix + "cum_above_cut": float(cum[n_removed] - thr)}
        if n_removed:
            out[prefix + "cum_below_cut"] = float(thr - cum[n_removed - 1])
        return out
    return {}


def write_filters(model, tok, out):
    """One step of transformers' logits processors on the last logits of FILTER_PROMPT."""
    name, text = FILTER_PROMPT
    ids = tok(text).input_ids
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]  # [V]
    d = out / "filters"
    save_npy(d / "logits.npy", logits)
    input_ids = torch.tensor([ids])
    scores = logits[None].clone()  # processors take [batch, V]

    def apply(proc):
        return proc(input_ids, scores.clone())[0]

    # An edge where min_tokens_to_keep binds: top_p below the top-1 probability keeps
    # just 1 token; min_tokens_to_keep=3 keeps 3.
    p_top1 = float(torch.softmax(logits, -1).max())
    top_p_edge = float(np.floor(p_top1 * 0.5 * 100) / 100)
    assert top_p_edge > 0
    assert kept(apply(TopPLogitsWarper(top_p=top_p_edge))) == 1
    cases = OrderedDict([
        ("temperature_0.7", ({"processor": "TemperatureLogitsWarper", "temperature": 0.7},
                             TemperatureLogitsWarper(0.7))),
        ("top_k_10", ({"processor": "TopKLogitsWarper", "top_k": 10}, TopKLogitsWarper(top_k=10))),
        ("top_p_0.9", ({"processor": "TopPLogitsWarper", "top_p": 0.9}, TopPLogitsWarper(top_p=0.9))),
        ("top_p_min_keep", ({"processor": "TopPLogitsWarper", "top_p": top_p_edge, "min_tokens_to_keep": 3},
                            TopPLogitsWarper(top_p=top_p_edge, min_tokens_to_keep=3))),
        ("repetition_penalty_1.3", ({"processor": "RepetitionPenaltyLogitsProcessor", "penalty": 1.3,
                                     "input_ids": "the prompt ids"},
                                    RepetitionPenaltyLogitsProcessor(penalty=1.3))),
    ])
    meta = OrderedDict()
    for case, (desc, proc) in cases.items():
        y = apply(proc)
        save_npy(d / f"{case}.npy", y)
        meta[case] = {**desc, "kept": kept(y), **margin(proc, scores[0])}

    # The combination, as generate() builds it: ask transformers for its processor list.
    gen_cfg = GenerationConfig(do_sample=True, temperature=0.7, top_k=50, top_p=0.9, repetition_penalty=1.3,
                               pad_token_id=EOT, bos_token_id=EOT, eos_token_id=EOT)
    procs = model._get_logits_processor(generation_config=gen_cfg, input_ids_seq_length=len(ids),
                                        device="cpu", model_kwargs={})
    order = [type(p).__name__ for p in procs]
    assert order == ["RepetitionPenaltyLogitsProcessor", "TemperatureLogitsWarper", "TopKLogitsWarper",
                     "TopPLogitsWarper"], order
    combined = procs(input_ids, scores.clone())[0]
    by_hand = scores.clone()
    for p in [RepetitionPenaltyLogitsProcessor(1.3), TemperatureLogitsWarper(0.7), TopKLogitsWarper(50),
              TopPLogitsWarper(0.9)]:
        by_hand = p(input_ids, by_hand)
    assert torch.equal(combined, by_hand[0])
    save_npy(d / "combined.npy", combined)
    save_npy(d / "combined.probs.npy", torch.softmax(combined, dim=-1))
    stage = [scores.clone()]  # the scores entering each processor
    for p in procs:
        stage.append(p(input_ids, stage[-1].clone()))
    assert torch.equal(stage[-1][0], combined)
    meta["combined"] = {
        "order": [{"processor": "RepetitionPenaltyLogitsProcessor", "penalty": 1.3},
                  {"processor": "TemperatureLogitsWarper", "temperature": 0.7},
                  {"processor": "TopKLogitsWarper", "top_k": 50, "min_tokens_to_keep": 1},
                  {"processor": "TopPLogitsWarper", "top_p": 0.9, "min_tokens_to_keep": 1}],
        "kept": kept(combined),
        **margin(procs[2], stage[2][0], "top_k_"),
        **margin(procs[3], stage[3][0], "top_p_"),
        "probs": "combined.probs.npy = softmax(combined)",
    }
    penalized = sorted(set(ids))
    signs = {"positive": sum(float(logits[i]) > 0 for i in penalized),
             "negative": sum(float(logits[i]) < 0 for i in penalized)}
    write_json(d / "cases.json", {
        "prompt": name, "text": text, "ids": ids,
        "logits": "logits.npy: last-position logits of the prompt, [vocab]",
        "how": "each case applies transformers' processor to logits.npy (input_ids = the prompt "
               "ids, batch of 1); filtered entries are -inf",
        "generate_order": order,
        "penalized_logit_signs": signs,
        "cases": meta,
    })
    return meta


def write_batch(model, tok, out):
    texts = [PROMPTS[1][1], PROMPTS[2][1], "Hello world"]
    seqs = [tok(t).input_ids for t in texts]
    T = max(map(len, seqs))
    assert len(set(map(len, seqs))) == len(seqs), "lengths must differ"
    ids = torch.tensor([[EOT] * (T - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (T - len(s)) + [1] * len(s) for s in seqs])
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
        for b, s in enumerate(seqs):  # each row at its real positions = the sequence alone
            alone = model(torch.tensor([s])).logits[0]
            assert torch.allclose(logits[b, T - len(s):], alone, atol=1e-4, rtol=1e-4)
    d = out / "batch"
    save_npy(d / "ids.npy", ids, np.int64)
    save_npy(d / "mask.npy", mask, np.int64)
    save_npy(d / "logits.npy", logits)
    write_json(d / "batch.json", {
        "texts": texts, "padding": "left", "pad_id": EOT,
        "position_ids": "(mask.cumsum(-1) - 1).clamp(min=0), passed explicitly",
        "compare": "logits only where mask == 1",
    })


TOKENIZATION_CASES = [
    "Hello, my dog is cute",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "trailing space ",
    "  two leading spaces",
    "repeated   spaces   inside",
    "ends with spaces   ",
    "   ",
    " ",
    "paragraph one\n\nparagraph two",
    "\n",
    "line\nbreak \n indented\n\n\n",
    "tab\tseparated\tvalues\t",
    "\t\tdouble tab",
    "I'm sure you don't know what they'll say, but we've seen it. He's here; she'd go.",
    "I'M SHOUTING AND DON'T CARE",
    "1234567",
    "3.14",
    "1,000",
    "In 2019, 1.5B parameters cost $43,000.",
    "!!!???...",
    "spaces before punctuation , like this ! or this ? and do n't , I 'm sure .",
    "--",
    "a -- b --- c",
    "café naïve résumé",
    "日本語のテキスト",
    "🙂👍🏽",
    "emoji 🙂 in text 👍🏽!",
    "Once upon a time<|endoftext|> The",
    "<|endoftext|>",
    "<|endoftext|><|endoftext|>",
    "text<|endoftext|>",
    "<|endoftext |> is not special",
    "",
    LONG_TEXT + "\n\n\tCafé déjà vu — 東京 🙂 x=3.14; y = 1,000!!! I'd've thought so.  ",
]


def write_tokenization(tok, out):
    assert isinstance(tok, GPT2TokenizerFast)
    default_cleanup = tok.clean_up_tokenization_spaces
    cases = []
    for text in TOKENIZATION_CASES:
        ids = tok(text).input_ids
        cases.append({
            "text": text,
            "ids": ids,
            "tokens": tok.convert_ids_to_tokens(ids),
            "decode": tok.decode(ids),
            "decode_clean_up_true": tok.decode(ids, clean_up_tokenization_spaces=True),
            "decode_each": [tok.decode([i]) for i in ids],
        })
        assert tok.decode(ids, clean_up_tokenization_spaces=False) == text or default_cleanup
    write_json(out / "tokenization.json", {
        "tokenizer": "GPT2TokenizerFast(vocab_file=vocab.json, merges_file=merges.txt), transformers defaults "
                     "(add_prefix_space=False, <|endoftext|> = 50256 as a special added token)",
        "transformers": transformers.__version__,
        "clean_up_tokenization_spaces_default": default_cleanup,
        "fields": {
            "ids": "tok(text).input_ids (no BOS/EOS added)",
            "tokens": "byte-level BPE token strings",
            "decode": f"tok.decode(ids) with the default clean_up_tokenization_spaces={default_cleanup}, "
                      "skip_special_tokens=False",
            "decode_clean_up_true": "tok.decode(ids, clean_up_tokenization_spaces=True)",
            "decode_each": "tok.decode([id]) per token: lossy (U+FFFD) where a token is part of a UTF-8 character",
        },
        "cases": cases,
    })
    return cases


def write_references(model, tok, out, model_dir_label, tokenizer_source, with_tokenization):
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    assert model.config._attn_implementation == "eager" and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    prompts, names, stats = write_traces(model, tok, out)
    gen = write_generate(model, tok, out)
    filters = write_filters(model, tok, out)
    write_batch(model, tok, out)
    if with_tokenization:
        write_tokenization(tok, out)
    (out / "architecture.txt").write_text(str(model) + "\n", encoding="utf-8")
    write_json(out / "manifest.json", {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "numpy": np.__version__, "safetensors": safetensors.__version__},
        "model_dir": model_dir_label,
        "tokenizer": tokenizer_source,
        "load": "GPT2LMHeadModel.from_pretrained(model_dir, attn_implementation='eager', dtype=torch.float32).eval()",
        "config": config_summary(model.config),
        "prompts": prompts,
        "tensors": names,
        "layout": "<prompt>/<tensor>.npy float32 without the batch axis; <prompt>/ids.npy int64; "
                  "q/k/v/scores/probs [n_head, T, *]; masked scores are -inf "
                  "(transformers itself uses finfo(float32).min); top5 = [id, prob] of the last position",
        "recording": "forward hooks on transformers' modules; scores/probs = input/output of transformers' "
                     "own softmax call inside the eager attention",
        "files": {"generate.json": "greedy generation", "filters/": "logits processors, see filters/cases.json",
                  "batch/": "left-padded batch", "architecture.txt": "print(model)",
                  **({"tokenization.json": "tokenizer golden"} if with_tokenization else {})},
    })
    return stats, gen, filters


# ---------------------------------------------------------------- dtypes.safetensors


def write_dtypes(out):
    g = torch.Generator().manual_seed(SEED + 1)
    inf = float("inf")
    tensors = OrderedDict([
        ("f32_matrix", torch.randn(2, 3, generator=g)),
        ("f32_scalar", torch.tensor(-1e4)),
        ("f16_matrix", torch.randn(3, 2, generator=g).half()),
        ("f16_cube", torch.randn(2, 2, 3, generator=g).half()),
        # max, min normal, smallest subnormal, a subnormal, signed zeros, infinities
        ("f16_special", torch.tensor([65504.0, 6.103515625e-05, 5.960464477539063e-08, 1e-5, 0.0, -0.0,
                                      inf, -inf, 1.0 / 3.0, -2.5], dtype=torch.float16)),
        ("bf16_matrix", torch.randn(2, 3, generator=g).bfloat16()),
        ("bf16_special", torch.tensor([3.3895313892515355e38, 1.1754943508222875e-38, 9.183549615799121e-41,
                                       0.0, -0.0, inf, -inf, 1.0 / 3.0, -1e4, 65536.0], dtype=torch.bfloat16)),
        ("bf16_scalar", torch.tensor(3.140625, dtype=torch.bfloat16)),
    ])
    out.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(dict(tensors), out / "dtypes.safetensors")
    back = safetensors.torch.load_file(out / "dtypes.safetensors")
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t)
        save_npy(out / f"dtypes.{name}.npy", t.float())
    return list(tensors)


# ---------------------------------------------------------------- main


def size_of(path):
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def summary(paths, stats):
    print("\nfiles:")
    for p in paths:
        n = sum(1 for f in p.rglob("*") if f.is_file()) if p.is_dir() else 1
        print(f"  {p.relative_to(REPO) if p.is_relative_to(REPO) else p}: {n} files, {size_of(p) / 1e6:.2f} MB")
    print("logits (std over [T, vocab], top-1 probability at the last position):")
    for name, (std, p1) in stats.items():
        print(f"  {name}: std {std:.3f}, top-1 p {p1:.4f}")


def mode_random(tokenizer_dir):
    model = build_random_model()
    tok = GPT2TokenizerFast(vocab_file=str(tokenizer_dir / "vocab.json"),
                            merges_file=str(tokenizer_dir / "merges.txt"))
    model_dir = GOLDEN / "model"
    save_model_dir(model, model_dir, tokenizer_dir)
    verify_model_dir(model, model_dir, tok(PROMPTS[0][1]).input_ids)
    ref = GOLDEN / "reference"
    stats, gen, filters = write_references(model, tok, ref, "golden/model",
                                           "GPT2TokenizerFast from golden/model/vocab.json + merges.txt", True)
    # A wrong implementation must not pass by accident, and a right one must not fail by a
    # rounding: spread-out logits, and greedy choices and filter cuts that are not near-ties.
    for name, (std, p1) in stats.items():
        assert std > 2.0 and 0.02 < p1 < 0.9, (name, std, p1)
    assert all(g["min_top2_logit_gap"] > 1e-3 for g in gen)
    f = filters
    assert min(f["top_k_10"]["kth_minus_next"], f["combined"]["top_k_kth_minus_next"]) > 1e-3
    assert min(f["top_p_0.9"]["cum_above_cut"], f["top_p_0.9"]["cum_below_cut"]) > 5e-5
    assert min(f["combined"]["top_p_cum_above_cut"], f["combined"]["top_p_cum_below_cut"]) > 1e-4
    # write_references starts golden/reference afresh: the perplexity and half-cache references
    # live there too.
    perplexity.write_reference("golden/model", "golden/reference/perplexity.json")
    kv_cache.write_reference("golden/model", "golden/reference/perplexity.json", "golden/reference/kv_cache")
    dtypes = write_dtypes(GOLDEN / "checkpoints")
    print(f"dtypes.safetensors: {', '.join(dtypes)}")
    for f in sorted(model_dir.iterdir()):
        print(f"  golden/model/{f.name}: {f.stat().st_size:,} bytes")
    paths = [model_dir, ref, GOLDEN / "checkpoints" / "dtypes.safetensors"]
    summary(paths, stats)
    for g in gen:
        print(f"  generate {g['name']}: {len(g['ids'])} + {len(g['new_ids'])} tokens")
    total = size_of(model_dir) + size_of(ref)
    print(f"golden/model + golden/reference: {total / 1e6:.2f} MB")


def mode_dir(model_dir, out, tokenizer_dir):
    model = GPT2LMHeadModel.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32).eval()
    if any((Path(model_dir) / f).is_file() for f in ["tokenizer.json", "vocab.json"]):
        tok = AutoTokenizer.from_pretrained(model_dir)
        source = f"AutoTokenizer.from_pretrained(model_dir) -> {type(tok).__name__}"
    else:
        tok = GPT2TokenizerFast(vocab_file=str(tokenizer_dir / "vocab.json"),
                                merges_file=str(tokenizer_dir / "merges.txt"))
        source = "GPT2TokenizerFast from --tokenizer-dir (the model directory has no tokenizer)"
    label = model_dir if not os.path.isabs(model_dir) else os.path.relpath(model_dir, REPO)
    stats, gen, _ = write_references(model, tok, Path(out), str(Path(label).as_posix()), source, False)
    summary([Path(out).resolve()], stats)
    for g in gen:
        print(f"  generate {g['name']}: {len(g['ids'])} + {len(g['new_ids'])} tokens: {g['new_text']!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="a Hugging Face GPT-2 directory (mode 2); without it, mode 1")
    ap.add_argument("--out", help="where mode 2 writes the references (default MODEL/reference)")
    ap.add_argument("--tokenizer-dir", type=Path, default=DEFAULT_TOKENIZER_DIR,
                    help="GPT-2 vocab.json + merges.txt (default: ../shared/gpt2-tokenizer next to the repo)")
    args = ap.parse_args()
    if args.model is None:
        if args.out:
            ap.error("--out is for mode 2 (--model DIR)")
        mode_random(args.tokenizer_dir)
    else:
        mode_dir(args.model, args.out or os.path.join(args.model, "reference"), args.tokenizer_dir)


if __name__ == "__main__":
    main()
