"""Write the small PyTorch checkpoints that tests/pytorch_bin.rs reads.

Run from anywhere (after `pip install -r python_ref/requirements.txt`):

    python3 python_ref/make_checkpoints.py

Output, all in golden/checkpoints/ (a few KB in total):

* tiny_zip.bin, tiny_proto4.bin, tiny_legacy.bin: one state dict (f32, f16,
  bf16, f64, a transposed view, slices with storage offsets and strides, tied
  weights sharing a storage, one tensor object stored twice, a scalar, an empty
  tensor, a causal mask to skip) written by torch.save as a zip (pickle
  protocol 2, the default), as a zip with pickle protocol 4 (FRAME,
  STACK_GLOBAL, MEMOIZE opcodes) and in the legacy non-zip format.
  tiny_expected/<key>.npy holds every tensor as float32, in row-major order.
* hostile_*.bin: pickles whose __reduce__ names os.system (written by Python
  as posix.system), builtins.eval and subprocess.Popen. They are only ever
  written here, never loaded. Their payload would create the marker file
  ${TMPDIR:-/tmp}/gpt2_ndarray_pwned_marker (= Rust's std::env::temp_dir()).
* broken files: no data.pkl, not a checkpoint at all, a storage shorter than its
  tensor, a missing storage entry, a truncated data.pkl, a truncated legacy
  file, a tensor claiming 100 GB, a tensor whose size overflows, an int64
  tensor.

Determinism: running the script twice gives byte-identical files.
torch.save's zip writer is deterministic (entries are stored with a fixed
1980 timestamp and `.data/serialization_id` is derived from the content), so
its output is kept as is. The legacy writer is not: it names and orders
storages by their memory addresses, so `legacy_bytes` renames and reorders
them. Zips built here use fixed timestamps.
"""

import io
import os
import pickle
import pickletools
import struct
import subprocess
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parent.parent / "golden" / "checkpoints"
MARKER_CMD = 'touch "${TMPDIR:-/tmp}/gpt2_ndarray_pwned_marker"'
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def tiny_state_dict():
    g = torch.Generator().manual_seed(0)
    sd = OrderedDict()
    sd["f32.matrix"] = torch.randn(3, 4, generator=g)
    sd["f32.vector"] = torch.randn(5, generator=g)
    sd["f16.matrix"] = torch.randn(2, 3, generator=g).half()
    sd["bf16.matrix"] = torch.randn(2, 3, generator=g).bfloat16()
    sd["f64.vector"] = torch.randn(4, generator=g, dtype=torch.float64)
    # A non-contiguous view, saved as is: the full [4, 3] storage, stride (1, 3).
    sd["transposed"] = torch.randn(4, 3, generator=g).t()
    # Two views of one 10-element storage: offset 3; offset 1 with stride 3.
    row = torch.randn(10, generator=g)
    sd["slice"] = row[3:7]
    sd["strided"] = row[1::3]
    # Tied weights as transformers saves them: two tensor objects, one storage.
    wte = torch.randn(6, 4, generator=g)
    sd["transformer.wte.weight"] = wte.detach()
    sd["lm_head.weight"] = wte.detach()
    # One tensor object under two keys: the second is a memo reference (BINGET).
    same = torch.randn(2, 2, generator=g).half()
    sd["same_object.a"] = same
    sd["same_object.b"] = same
    sd["scalar"] = torch.tensor(-1e4)
    sd["empty"] = torch.zeros(0, 3)
    # The causal-mask buffer that loaders skip.
    sd["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 4, 4))
    return sd


def write_zip(path, entries):
    """A stored (uncompressed) zip with fixed timestamps, like torch writes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries:
            z.writestr(zipfile.ZipInfo(name, date_time=ZIP_TIME), data)


def torch_zip_entries(obj, **kwargs):
    """What torch.save writes for `obj`, as (name, bytes) pairs (top folder 'archive')."""
    buf = io.BytesIO()
    torch.save(obj, buf, **kwargs)
    with zipfile.ZipFile(buf) as z:
        return [(info.filename, z.read(info)) for info in z.infolist()]


def legacy_bytes(state_dict, pickle_module=pickle):
    """torch.save's legacy format, with deterministic storage keys and order.

    The legacy writer names each storage after its memory address
    (str(storage._cdata)) and writes the storages sorted by that name, so
    both the names and the order change from run to run. Here the storages
    are renamed by first use in the state-dict pickle ('00..0', '00..1', ...,
    same length as the address, so the pickle keeps its size), and the key
    list and the storage blocks are rewritten in that order.
    """
    buf = io.BytesIO()
    torch.save(state_dict, buf, pickle_module=pickle_module, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    element_size = {
        str(t.untyped_storage()._cdata): t.element_size()
        for t in state_dict.values()
        if isinstance(t, torch.Tensor)
    }
    f = io.BytesIO(data)
    for _ in range(4):  # magic number, protocol version, sys info, state dict
        for _op in pickletools.genops(f):
            pass
    pickles_end = f.tell()
    keys = pickle.load(f)  # the storage-key list: a plain list of str
    pos = f.tell()
    blocks = {}
    for key in keys:
        (numel,) = struct.unpack_from("<Q", data, pos)
        end = pos + 8 + numel * element_size[key]
        blocks[key], pos = data[pos:end], end
    assert pos == len(data)

    header = data[:pickles_end]
    as_binunicode = lambda k: b"X" + struct.pack("<I", len(k)) + k.encode()  # noqa: E731
    by_first_use = sorted(keys, key=lambda k: header.index(as_binunicode(k)))
    new_keys = [str(i).zfill(len(k)) for i, k in enumerate(by_first_use)]
    for old, new in zip(by_first_use, new_keys):
        header = header.replace(as_binunicode(old), as_binunicode(new))
    key_list = pickle.dumps(new_keys, protocol=2)
    return header + key_list + b"".join(blocks[k] for k in by_first_use)


def save_legacy(obj, path, pickle_module=pickle):
    path.write_bytes(legacy_bytes(obj, pickle_module))


def write_tiny():
    sd = tiny_state_dict()
    torch.save(sd, OUT / "tiny_zip.bin")
    torch.save(sd, OUT / "tiny_proto4.bin", pickle_protocol=4)
    save_legacy(sd, OUT / "tiny_legacy.bin")
    expected = OUT / "tiny_expected"
    expected.mkdir(exist_ok=True)
    for key, t in sd.items():
        np.save(expected / f"{key}.npy", t.to(torch.float32).contiguous().numpy())
    for name in ["tiny_zip.bin", "tiny_proto4.bin", "tiny_legacy.bin"]:
        # Files we just wrote (torch's weights_only unpickler rejects FRAME, protocol 4).
        loaded = torch.load(OUT / name, weights_only=False)
        assert loaded.keys() == sd.keys(), name
        for key, t in sd.items():
            assert torch.equal(loaded[key], t), (name, key)


# ---- hostile pickles: written, never loaded ----


class SystemPayload:
    def __reduce__(self):
        return (os.system, (MARKER_CMD,))


class EvalPayload:
    def __reduce__(self):
        return (eval, (f"__import__('os').system({MARKER_CMD!r})",))


class Python3NamesPickler(pickle.Pickler):
    """Protocol 2 normally renames modules for Python 2 (subprocess.Popen is
    written as commands.Popen); this keeps the Python 3 name."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, fix_imports=False, **kwargs)


PYTHON3_NAMES = types.SimpleNamespace(
    __name__="pickle_python3_names", Pickler=Python3NamesPickler, dump=pickle.dump
)


class PopenPayload:
    def __reduce__(self):
        return (subprocess.Popen, (["sh", "-c", MARKER_CMD],))


def write_hostile():
    weight = torch.ones(2)
    torch.save({"weight": weight, "payload": SystemPayload()}, OUT / "hostile_os_system.bin")
    torch.save({"weight": weight, "payload": EvalPayload()}, OUT / "hostile_eval.bin", pickle_protocol=4)
    popen = {"weight": weight, "payload": PopenPayload()}
    save_legacy(popen, OUT / "hostile_popen.bin", PYTHON3_NAMES)


# ---- crafted tensors: pickles torch itself would refuse to write ----


class FakeStorage:
    def __init__(self, storage_type, key, numel):
        self.storage_type, self.key, self.numel = storage_type, key, numel


class FakeTensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class CraftPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
        return None


def write_crafted(path, state_dict, storages):
    buf = io.BytesIO()
    CraftPickler(buf, protocol=2).dump(state_dict)
    top = path.stem
    entries = [(f"{top}/data.pkl", buf.getvalue()), (f"{top}/byteorder", b"little")]
    entries += [(f"{top}/data/{key}", data) for key, data in storages.items()]
    entries.append((f"{top}/version", b"3\n"))
    write_zip(path, entries)


def write_broken():
    (OUT / "not_a_checkpoint.bin").write_bytes(b"this is not a checkpoint, just some text\n")
    write_zip(OUT / "no_data_pkl.bin", [("archive/version", b"3\n"), ("archive/data/0", bytes(16))])

    weight = OrderedDict(weight=torch.arange(12, dtype=torch.float32).reshape(3, 4))
    entries = torch_zip_entries(weight)
    shortened = [(n, d[:20] if n == "archive/data/0" else d) for n, d in entries]
    write_zip(OUT / "short_storage.bin", shortened)
    write_zip(OUT / "missing_storage.bin", [(n, d) for n, d in entries if n != "archive/data/0"])
    cut_pkl = [(n, d[: len(d) // 2] if n == "archive/data.pkl" else d) for n, d in entries]
    write_zip(OUT / "truncated_pkl.bin", cut_pkl)

    (OUT / "truncated_legacy.bin").write_bytes(legacy_bytes(weight)[:-7])

    # 25000 x 1000000 float32 = 100 GB, backed by a 64-byte storage.
    huge = FakeStorage(torch.FloatStorage, "0", 25_000_000_000)
    tensor = FakeTensor(huge, 0, (25_000, 1_000_000), (1_000_000, 1))
    write_crafted(OUT / "huge_tensor.bin", OrderedDict(weight=tensor), {"0": bytes(64)})
    # 2^40 x 2^40 elements: the element count overflows 64 bits.
    tensor = FakeTensor(FakeStorage(torch.FloatStorage, "0", 16), 0, (1 << 40, 1 << 40), (1 << 40, 1))
    write_crafted(OUT / "overflow_tensor.bin", OrderedDict(weight=tensor), {"0": bytes(64)})

    ids = OrderedDict(ids=torch.arange(5), weight=torch.ones(3))
    torch.save(ids, OUT / "unsupported_dtype.bin")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    write_tiny()
    write_hostile()
    write_broken()
    for path in sorted(OUT.glob("*.bin")):
        print(f"{path.stat().st_size:6d}  {path.relative_to(OUT.parent.parent)}")


if __name__ == "__main__":
    main()
