//! A restricted unpickler: it reads the pickles `torch.save` writes and
//! executes nothing.
//!
//! How it works, and why it is safe, is told in the docs of [`super::pytorch`].

use std::collections::HashMap;
use std::io::{self, Read};
use std::rc::Rc;

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::Dtype;

/// A torch storage class named in a pickle, e.g. `torch.FloatStorage`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StorageType {
    /// Full Python name, e.g. `"torch.FloatStorage"`.
    pub name: &'static str,
    /// Bytes per element in the raw storage data.
    pub element_size: usize,
    /// The element type, if this crate can convert it to `f32`.
    pub dtype: Option<Dtype>,
}

const fn storage_type(
    name: &'static str,
    element_size: usize,
    dtype: Option<Dtype>,
) -> StorageType {
    StorageType {
        name,
        element_size,
        dtype,
    }
}

/// Every storage class torch writes. The integer, bool and complex ones are
/// accepted so that a state dict holding e.g. a `uint8` mask still parses; the
/// loader refuses them only for a tensor the caller wants to keep.
/// (torch 2.x still writes these legacy names, e.g. `torch.FloatStorage`.)
const STORAGE_TYPES: &[StorageType] = &[
    storage_type("torch.FloatStorage", 4, Some(Dtype::F32)),
    storage_type("torch.HalfStorage", 2, Some(Dtype::F16)),
    storage_type("torch.BFloat16Storage", 2, Some(Dtype::BF16)),
    storage_type("torch.DoubleStorage", 8, Some(Dtype::F64)),
    storage_type("torch.LongStorage", 8, None),
    storage_type("torch.IntStorage", 4, None),
    storage_type("torch.ShortStorage", 2, None),
    storage_type("torch.CharStorage", 1, None),
    storage_type("torch.ByteStorage", 1, None),
    storage_type("torch.BoolStorage", 1, None),
    storage_type("torch.ComplexFloatStorage", 8, None),
    storage_type("torch.ComplexDoubleStorage", 16, None),
    storage_type("torch.QInt8Storage", 1, None),
    storage_type("torch.QUInt8Storage", 1, None),
    storage_type("torch.QInt32Storage", 4, None),
    storage_type("torch.storage.UntypedStorage", 1, None),
];

/// The only Python globals a state dict may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Global {
    /// `collections.OrderedDict`: the state dict itself.
    OrderedDict,
    /// `torch._utils._rebuild_tensor(storage, offset, size, stride)` and
    /// `_rebuild_tensor_v2(..., requires_grad, backward_hooks[, metadata])`.
    RebuildTensor,
    /// `torch._utils._rebuild_parameter(data, requires_grad, hooks[, state])`:
    /// an `nn.Parameter` wrapping a tensor; we keep the tensor.
    RebuildParameter,
    /// A storage class, the second field of a persistent id.
    Storage(StorageType),
}

impl Global {
    /// Resolves `module.name` against the allow-list, refusing everything else.
    fn resolve(module: &str, name: &str) -> Result<Global> {
        let full = format!("{module}.{name}");
        Ok(match full.as_str() {
            "collections.OrderedDict" => Global::OrderedDict,
            "torch._utils._rebuild_tensor" | "torch._utils._rebuild_tensor_v2" => {
                Global::RebuildTensor
            }
            "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
                Global::RebuildParameter
            }
            _ => match STORAGE_TYPES.iter().find(|t| t.name == full) {
                Some(t) => Global::Storage(*t),
                None => bail!(
                    "pickle refers to global \"{full}\", which is not allowed in a state dict \
                     (only tensor rebuild functions and storages are)"
                ),
            },
        })
    }
}

/// A persistent id resolved: "the bytes of storage `key`, `numel` elements of `ty`".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageRef {
    pub ty: StorageType,
    pub key: String,
    pub numel: u64,
}

/// A tensor as the pickle describes it: a strided view into a storage.
/// Element `[i, j, ...]` is storage element `offset + i*stride[0] + j*stride[1] + ...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorRef {
    pub storage: Rc<StorageRef>,
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

/// One value of the unpickled data. Containers are indices into the arenas
/// of the [`Pickle`] they belong to; use [`Pickle::sequence`] and
/// [`Pickle::dict_items`] to look inside them.
#[derive(Clone, Debug, Default)]
pub enum Value {
    #[default]
    None,
    Bool(bool),
    /// Python ints are unbounded; 128 bits cover everything torch writes
    /// (the legacy magic number is wider than 64 bits).
    Int(i128),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(usize),
    List(usize),
    Dict(usize),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

impl Value {
    /// A short name of the value's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

/// The result of unpickling: the root value plus the containers it refers to.
#[derive(Debug, Default)]
pub struct Pickle {
    pub root: Value,
    /// Tuples and lists, indexed by `Value::Tuple(i)` / `Value::List(i)`.
    sequences: Vec<Vec<Value>>,
    /// Dicts as (key, value) pairs in insertion order, indexed by `Value::Dict(i)`.
    dicts: Vec<Vec<(Value, Value)>>,
}

impl Pickle {
    /// The elements of a tuple or list, or `None` for any other value.
    pub fn sequence(&self, value: &Value) -> Option<&[Value]> {
        match value {
            Value::Tuple(i) | Value::List(i) => self.sequences.get(*i).map(Vec::as_slice),
            _ => None,
        }
    }

    /// The (key, value) pairs of a dict, or `None` for any other value.
    pub fn dict_items(&self, value: &Value) -> Option<&[(Value, Value)]> {
        match value {
            Value::Dict(i) => self.dicts.get(*i).map(Vec::as_slice),
            _ => None,
        }
    }
}

/// Reads one pickle (up to and including its `STOP` opcode) from `reader`.
/// Bytes after `STOP` are left unread, so several pickles can be read in a row.
/// `reader` is read a few bytes at a time: give it a buffered one.
pub fn load(reader: impl Read) -> Result<Pickle> {
    Unpickler::new(reader).run()
}

/// The opcodes this unpickler understands (names as in CPython's `pickle.py`).
mod op {
    pub const PROTO: u8 = 0x80;
    pub const FRAME: u8 = 0x95;
    pub const STOP: u8 = b'.';
    pub const GLOBAL: u8 = b'c';
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const MEMOIZE: u8 = 0x94;
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const MARK: u8 = b'(';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const EMPTY_DICT: u8 = b'}';
    pub const EMPTY_LIST: u8 = b']';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';
    pub const APPEND: u8 = b'a';
    pub const APPENDS: u8 = b'e';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const BINFLOAT: u8 = b'G';
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const NONE: u8 = b'N';
    pub const BINUNICODE: u8 = b'X';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const BINBYTES: u8 = b'B';
    pub const BINBYTES8: u8 = 0x8e;
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const BUILD: u8 = b'b';
}

/// Longest module or attribute name accepted in a `GLOBAL`.
const MAX_GLOBAL_NAME: usize = 256;

/// Longest pickle accepted. GPT-2 XL's state dict pickles to about 100 KB; the
/// cap bounds the memory a hostile pickle can make us spend on its values.
pub const MAX_PICKLE_LEN: u64 = 16 << 20;

struct Unpickler<R> {
    reader: R,
    /// Bytes consumed so far, for error messages.
    offset: u64,
    stack: Vec<Value>,
    /// Stack heights at each open `MARK`.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    out: Pickle,
}

impl<R: Read> Unpickler<R> {
    fn new(reader: R) -> Self {
        Unpickler {
            reader,
            offset: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            out: Pickle::default(),
        }
    }

    fn run(mut self) -> Result<Pickle> {
        loop {
            let at = self.offset;
            ensure!(
                at <= MAX_PICKLE_LEN,
                "pickle is longer than {MAX_PICKLE_LEN} bytes"
            );
            let opcode = self.read_u8()?;
            let stop = self
                .step(opcode)
                .with_context(|| format!("pickle opcode 0x{opcode:02x} at byte offset {at}"))?;
            if stop {
                self.out.root = self.pop()?;
                return Ok(self.out);
            }
        }
    }

    /// Executes one opcode; returns `true` on `STOP`.
    fn step(&mut self, opcode: u8) -> Result<bool> {
        if let Some(value) = self.read_literal(opcode)? {
            self.push(value);
            return Ok(false);
        }
        match opcode {
            op::STOP => return Ok(true),
            op::PROTO => {
                let version = self.read_u8()?;
                ensure!(
                    (2..=5).contains(&version),
                    "unsupported pickle protocol {version}"
                );
            }
            // A frame header only announces the length of the next chunk.
            op::FRAME => {
                let _frame_len = self.read_array::<8>()?;
            }
            op::GLOBAL => {
                let module = self.read_line()?;
                let name = self.read_line()?;
                self.push(Value::Global(Global::resolve(&module, &name)?));
            }
            op::STACK_GLOBAL => {
                let name = self.pop_str()?;
                let module = self.pop_str()?;
                let too_long = name.len().max(module.len()) > MAX_GLOBAL_NAME;
                ensure!(!too_long, "global name longer than {MAX_GLOBAL_NAME} bytes");
                self.push(Value::Global(Global::resolve(&module, &name)?));
            }
            op::BINPUT => self.memoize_from_stream(1)?,
            op::LONG_BINPUT => self.memoize_from_stream(4)?,
            op::MEMOIZE => self.memoize(u32::try_from(self.memo.len())?)?,
            op::BINGET => self.memo_get(1)?,
            op::LONG_BINGET => self.memo_get(4)?,
            op::MARK => self.marks.push(self.stack.len()),
            op::POP => drop(self.pop()?),
            op::POP_MARK => drop(self.pop_to_mark()?),
            op::EMPTY_DICT => {
                let dict = self.new_dict();
                self.push(dict);
            }
            op::EMPTY_LIST => {
                let list = self.new_sequence(Vec::new(), Value::List);
                self.push(list);
            }
            op::EMPTY_TUPLE | op::TUPLE | op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                let items = match opcode {
                    op::EMPTY_TUPLE => Vec::new(),
                    op::TUPLE => self.pop_to_mark()?,
                    _ => self.pop_n(usize::from(opcode - op::TUPLE1) + 1)?,
                };
                let tuple = self.new_sequence(items, Value::Tuple);
                self.push(tuple);
            }
            op::SETITEM => {
                let pair = self.pop_n(2)?;
                self.extend_dict(pair)?;
            }
            op::SETITEMS => {
                let pairs = self.pop_to_mark()?;
                self.extend_dict(pairs)?;
            }
            op::APPEND => {
                let item = self.pop_n(1)?;
                self.extend_list(item)?;
            }
            op::APPENDS => {
                let items = self.pop_to_mark()?;
                self.extend_list(items)?;
            }
            op::BINPERSID => {
                let pid = self.pop()?;
                let storage = self.persistent_load(&pid)?;
                self.push(storage);
            }
            op::REDUCE => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let result = self.reduce(&callable, &args)?;
                self.push(result);
            }
            // BUILD sets an object's attributes from a state value (for the
            // state dict: its `_metadata`). We keep no attributes.
            op::BUILD => {
                drop(self.pop()?);
                self.top()?;
            }
            _ => bail!("unknown or unsupported pickle opcode 0x{opcode:02x}"),
        }
        Ok(false)
    }

    /// Opcodes that just push a constant read from the stream; `None` for the
    /// others. For strings, bytes and long integers the argument is the width
    /// of the little-endian length prefix that precedes the data.
    fn read_literal(&mut self, opcode: u8) -> Result<Option<Value>> {
        let value = match opcode {
            op::NONE => Value::None,
            op::NEWTRUE => Value::Bool(true),
            op::NEWFALSE => Value::Bool(false),
            op::BININT => Value::Int(i32::from_le_bytes(self.read_array()?).into()),
            op::BININT1 => Value::Int(self.read_uint(1)?.into()),
            op::BININT2 => Value::Int(self.read_uint(2)?.into()),
            op::LONG1 => self.read_long(1)?,
            op::LONG4 => self.read_long(4)?,
            op::BINFLOAT => Value::Float(f64::from_be_bytes(self.read_array()?)),
            op::SHORT_BINUNICODE => self.read_str(1)?,
            op::BINUNICODE => self.read_str(4)?,
            op::BINUNICODE8 => self.read_str(8)?,
            op::SHORT_BINBYTES => self.read_bytes(1)?,
            op::BINBYTES => self.read_bytes(4)?,
            op::BINBYTES8 => self.read_bytes(8)?,
            _ => return Ok(None),
        };
        Ok(Some(value))
    }

    // ---- reading the byte stream ----

    fn read_array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut buf = [0u8; N];
        self.reader
            .read_exact(&mut buf)
            .map_err(|e| self.read_error(e, N as u64))?;
        self.offset += N as u64;
        Ok(buf)
    }

    fn read_u8(&mut self) -> Result<u8> {
        let [byte] = self.read_array()?;
        Ok(byte)
    }

    /// An unsigned little-endian integer of `width` (1, 2, 4 or 8) bytes.
    fn read_uint(&mut self, width: usize) -> Result<u64> {
        let mut buf = [0u8; 8];
        let bytes = buf
            .get_mut(..width)
            .ok_or_else(|| anyhow!("bad width {width}"))?;
        self.reader
            .read_exact(bytes)
            .map_err(|e| self.read_error(e, width as u64))?;
        self.offset += width as u64;
        Ok(u64::from_le_bytes(buf))
    }

    /// Reads `n` bytes. The buffer grows only as bytes actually arrive, so a
    /// forged length costs nothing before it is found to be a lie.
    fn read_vec(&mut self, n: u64) -> Result<Vec<u8>> {
        let budget = MAX_PICKLE_LEN.saturating_sub(self.offset);
        ensure!(
            n <= budget,
            "a {n}-byte value makes the pickle longer than {MAX_PICKLE_LEN} bytes"
        );
        let mut buf = Vec::new();
        (&mut self.reader).take(n).read_to_end(&mut buf)?;
        if (buf.len() as u64) < n {
            bail!(
                "pickle is truncated: {n} bytes announced at byte offset {}, only {} present",
                self.offset,
                buf.len()
            );
        }
        self.offset += n;
        Ok(buf)
    }

    fn read_error(&self, e: io::Error, wanted: u64) -> anyhow::Error {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            anyhow!(
                "pickle is truncated: {wanted} more bytes needed at byte offset {}",
                self.offset
            )
        } else {
            anyhow::Error::new(e).context("reading the pickle")
        }
    }

    /// A newline-terminated ASCII line, as in `GLOBAL module\nname\n`.
    fn read_line(&mut self) -> Result<String> {
        let mut line = Vec::new();
        loop {
            let byte = self.read_u8()?;
            if byte == b'\n' {
                break;
            }
            ensure!(
                line.len() < MAX_GLOBAL_NAME,
                "GLOBAL name longer than {MAX_GLOBAL_NAME} bytes"
            );
            line.push(byte);
        }
        String::from_utf8(line).context("GLOBAL name is not UTF-8")
    }

    fn read_str(&mut self, len_width: usize) -> Result<Value> {
        let n = self.read_uint(len_width)?;
        let text = String::from_utf8(self.read_vec(n)?).context("string is not valid UTF-8")?;
        Ok(Value::Str(text.into()))
    }

    fn read_bytes(&mut self, len_width: usize) -> Result<Value> {
        let n = self.read_uint(len_width)?;
        Ok(Value::Bytes(self.read_vec(n)?.into()))
    }

    /// `LONG1`/`LONG4`: a little-endian two's-complement integer of `n` bytes.
    fn read_long(&mut self, len_width: usize) -> Result<Value> {
        let n = self.read_uint(len_width)?;
        ensure!(n <= 16, "integer of {n} bytes is wider than 128 bits");
        let bytes = self.read_vec(n)?;
        let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
        let mut wide = if negative { [0xff; 16] } else { [0; 16] };
        wide[..bytes.len()].copy_from_slice(&bytes);
        Ok(Value::Int(i128::from_le_bytes(wide)))
    }

    // ---- the stack, marks and memo ----

    fn push(&mut self, value: Value) {
        self.stack.push(value);
    }

    /// The height below which `pop` may not go: the innermost open `MARK`.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Value> {
        ensure!(self.stack.len() > self.floor(), "pickle stack underflow");
        self.stack
            .pop()
            .ok_or_else(|| anyhow!("pickle stack underflow"))
    }

    fn pop_n(&mut self, n: usize) -> Result<Vec<Value>> {
        ensure!(
            self.stack.len() >= self.floor() + n,
            "pickle stack underflow"
        );
        Ok(self.stack.split_off(self.stack.len() - n))
    }

    fn pop_to_mark(&mut self) -> Result<Vec<Value>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| anyhow!("no MARK on the stack"))?;
        ensure!(mark <= self.stack.len(), "pickle stack underflow");
        Ok(self.stack.split_off(mark))
    }

    fn top(&self) -> Result<&Value> {
        ensure!(self.stack.len() > self.floor(), "pickle stack underflow");
        self.stack
            .last()
            .ok_or_else(|| anyhow!("pickle stack underflow"))
    }

    fn pop_str(&mut self) -> Result<Rc<str>> {
        match self.pop()? {
            Value::Str(s) => Ok(s),
            other => bail!(
                "expected a string for STACK_GLOBAL, found a {}",
                other.kind()
            ),
        }
    }

    fn memoize(&mut self, key: u32) -> Result<()> {
        let value = self.top()?.clone();
        self.memo.insert(key, value);
        Ok(())
    }

    /// `BINPUT`/`LONG_BINPUT`: the memo key follows the opcode.
    fn memoize_from_stream(&mut self, key_width: usize) -> Result<()> {
        let key = u32::try_from(self.read_uint(key_width)?)?;
        self.memoize(key)
    }

    /// `BINGET`/`LONG_BINGET`: pushes the memo entry whose key follows the opcode.
    fn memo_get(&mut self, key_width: usize) -> Result<()> {
        let key = u32::try_from(self.read_uint(key_width)?)?;
        let value = self.memo.get(&key).cloned();
        self.push(value.ok_or_else(|| anyhow!("memo key {key} was never stored"))?);
        Ok(())
    }

    // ---- containers ----

    /// Stores a tuple or list in the arena; `wrap` is `Value::Tuple` or `Value::List`.
    fn new_sequence(&mut self, items: Vec<Value>, wrap: fn(usize) -> Value) -> Value {
        self.out.sequences.push(items);
        wrap(self.out.sequences.len() - 1)
    }

    fn new_dict(&mut self) -> Value {
        self.out.dicts.push(Vec::new());
        Value::Dict(self.out.dicts.len() - 1)
    }

    fn extend_list(&mut self, items: Vec<Value>) -> Result<()> {
        let index = match self.top()? {
            Value::List(i) => *i,
            other => bail!("APPEND to a {}, not a list", other.kind()),
        };
        let list = self.out.sequences.get_mut(index);
        list.ok_or_else(|| anyhow!("dangling list reference"))?
            .extend(items);
        Ok(())
    }

    fn extend_dict(&mut self, flat: Vec<Value>) -> Result<()> {
        ensure!(
            flat.len().is_multiple_of(2),
            "SETITEMS with an odd number of values"
        );
        let index = match self.top()? {
            Value::Dict(i) => *i,
            other => bail!("SETITEM on a {}, not a dict", other.kind()),
        };
        let dict = self.out.dicts.get_mut(index);
        let dict = dict.ok_or_else(|| anyhow!("dangling dict reference"))?;
        let mut values = flat.into_iter();
        while let (Some(key), Some(value)) = (values.next(), values.next()) {
            dict.push((key, value));
        }
        Ok(())
    }

    // ---- the only "calls": persistent ids and allowed callables ----

    /// Resolves `('storage', StorageType, key, location, numel[, view])`.
    fn persistent_load(&self, pid: &Value) -> Result<Value> {
        let not_a_storage = "persistent id is not a ('storage', type, key, location, numel) tuple";
        let fields = self.out.sequence(pid).unwrap_or(&[]);
        let [tag, ty, key, _location, numel, rest @ ..] = fields else {
            bail!(not_a_storage);
        };
        let (Value::Str(tag), Value::Global(Global::Storage(ty)), Value::Str(key)) = (tag, ty, key)
        else {
            bail!(not_a_storage);
        };
        ensure!(&**tag == "storage", "persistent id of unknown kind {tag:?}");
        match rest {
            [] | [Value::None] => {}
            _ => bail!("storage {key:?} has view metadata (a legacy storage view): not supported"),
        }
        let numel = as_int::<u64>(numel).context("storage element count")?;
        let storage = StorageRef {
            ty: *ty,
            key: key.to_string(),
            numel,
        };
        Ok(Value::Storage(Rc::new(storage)))
    }

    /// `REDUCE`: "calls" an allowed global by building the value it would return.
    fn reduce(&mut self, callable: &Value, args: &Value) -> Result<Value> {
        let Value::Global(global) = callable else {
            bail!(
                "REDUCE applied to a {}, which is not callable",
                callable.kind()
            );
        };
        let args = match args {
            Value::Tuple(_) => self.out.sequence(args).unwrap_or(&[]),
            other => bail!("REDUCE arguments are a {}, not a tuple", other.kind()),
        };
        match (global, args) {
            (Global::OrderedDict, []) => Ok(self.new_dict()),
            (Global::RebuildTensor, [storage, offset, size, stride, ..]) => {
                self.rebuild_tensor(storage, offset, size, stride)
            }
            (Global::RebuildParameter, [tensor @ Value::Tensor(_), ..]) => Ok(tensor.clone()),
            (global, args) => bail!("cannot apply {global:?} to {} arguments", args.len()),
        }
    }

    fn rebuild_tensor(
        &self,
        storage: &Value,
        offset: &Value,
        size: &Value,
        stride: &Value,
    ) -> Result<Value> {
        let Value::Storage(storage) = storage else {
            bail!("tensor rebuilt from a {}, not a storage", storage.kind());
        };
        let size = self.usize_tuple(size).context("tensor size")?;
        let stride = self.usize_tuple(stride).context("tensor stride")?;
        ensure!(
            size.len() == stride.len(),
            "tensor size {size:?} and stride {stride:?} have different lengths"
        );
        let offset = as_int::<usize>(offset).context("tensor storage offset")?;
        let tensor = TensorRef {
            storage: Rc::clone(storage),
            offset,
            size,
            stride,
        };
        Ok(Value::Tensor(Rc::new(tensor)))
    }

    /// A tuple of non-negative integers that each fit in an `isize`.
    fn usize_tuple(&self, value: &Value) -> Result<Vec<usize>> {
        let items = self
            .out
            .sequence(value)
            .ok_or_else(|| anyhow!("expected a tuple of ints, found a {}", value.kind()))?;
        items
            .iter()
            .map(|v| {
                let i = as_int::<usize>(v)?;
                ensure!(isize::try_from(i).is_ok(), "integer {i} is out of range");
                Ok(i)
            })
            .collect()
    }
}

/// Converts an `Int` value to `T`, failing on other kinds and out-of-range values.
fn as_int<T: TryFrom<i128>>(value: &Value) -> Result<T> {
    match value {
        Value::Int(i) => T::try_from(*i).map_err(|_| anyhow!("integer {i} is out of range")),
        other => bail!("expected an int, found a {}", other.kind()),
    }
}
