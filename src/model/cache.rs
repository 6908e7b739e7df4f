//! The key/value cache of incremental decoding.

use anyhow::{bail, Result};
use half::{bf16, f16, slice::HalfFloatSliceExt};
use ndarray::{ArrayView1, ArrayView2, CowArray, Ix2};

use crate::checkpoint::Dtype;
use crate::config::Config;
use crate::kernels::convert::widened;

/// The keys and values of every position seen so far, per block, so that a new
/// token costs one position of work instead of a recompute of the sequence.
///
/// A value the caller owns and passes to [`crate::model::Gpt2::forward_step`]:
/// start with [`KvCache::new`] (or [`KvCache::with_capacity`] when the final
/// length is known), and each step appends its positions. Also keeps which
/// cached positions are padding and the position id of the next real token.
///
/// Each block's keys (and values) lie in one row-major buffer `[len, C]` that
/// a step extends in place: reserved once for the whole sequence
/// ([`KvCache::with_capacity`], [`KvCache::reserve`]) it is never copied or
/// grown, otherwise it grows as a `Vec` does (doubling, which copies it and
/// may leave up to half of it unused).
///
/// The keys and values are kept as `f32` unless the cache is made to keep
/// them in half precision ([`KvCache::with_dtype`], or
/// [`GenerateOptions::kv_cache`](crate::generate::GenerateOptions::kv_cache)):
/// each is then rounded to `f16` or `bf16` as it is stored (to nearest, ties
/// to even, as `torch.Tensor.to` does), which halves the cache's memory and
/// what a decoding step reads of it. Attention widens them back to `f32` as
/// it reads them, so a half cache gives exactly what an `f32` cache holding
/// the rounded values would give; the rounding is the only difference from
/// an `f32` cache (its effect on the logits is measured in
/// `docs/half-precision.md`, "A half key/value cache").
#[derive(Clone, Debug)]
pub struct KvCache {
    /// Per block: keys and values, `[len, C]` each, row-major.
    kv: Vec<(Rows, Rows)>,
    /// `C`, the width of a key; 0 until known (the first append, or a cache
    /// made for a model's config).
    width: usize,
    /// Positions [`KvCache::with_capacity`] asked room for, allocated at the
    /// first append (see there).
    room: usize,
    /// `[len]`: true at real tokens, false at padding.
    key_mask: Vec<bool>,
    /// Whether any cached position is padding.
    padded: bool,
    /// Position id (`wpe` row) the next real token gets.
    next_position: usize,
    /// A one-pass cache ([`KvCache::one_pass`]): once a block has attended,
    /// its buffers are emptied and handed to the next block.
    one_pass: bool,
}

impl KvCache {
    /// An empty cache for a model of `n_layer` blocks, keeping `f32`.
    pub fn new(n_layer: usize) -> Self {
        KvCache {
            kv: vec![(Rows::F32(Vec::new()), Rows::F32(Vec::new())); n_layer],
            width: 0,
            room: 0,
            key_mask: Vec::new(),
            padded: false,
            next_position: 0,
            one_pass: false,
        }
    }

    /// The cache of a pass whose keys and values nobody reads afterwards
    /// ([`Gpt2::forward`](crate::Gpt2::forward),
    /// [`Gpt2::next_token_logits`](crate::Gpt2::next_token_logits)): once a
    /// block has attended, its buffers are emptied and handed to the next
    /// block ([`KvCache::block_done`]), so that a long prompt holds one
    /// block's keys and values at a time instead of every block's (75.5 MB
    /// of f32 at 1,024 positions of GPT-2 small), in memory that is written
    /// once and reused rather than freed and faulted in again (freeing each
    /// block's made a 1024-token prompt 10–15% slower).
    pub(crate) fn one_pass(n_layer: usize) -> Self {
        KvCache {
            one_pass: true,
            ..KvCache::new(n_layer)
        }
    }

    /// Block `layer` has attended: a one-pass cache empties its buffers and
    /// gives them to the next block (the cache is then only good for being
    /// dropped).
    pub(crate) fn block_done(&mut self, layer: usize) {
        if self.one_pass && layer + 1 < self.kv.len() {
            let dtype = self.dtype();
            let (mut k, mut v) = std::mem::replace(
                &mut self.kv[layer],
                (Rows::empty(dtype), Rows::empty(dtype)),
            );
            k.clear();
            v.clear();
            self.kv[layer + 1] = (k, v);
        }
    }

    /// An empty cache for the model of `config` with room for `positions`
    /// positions (at most `n_positions` are ever used): each block's keys and
    /// values get `positions · n_embd` floats, at its first step, and then
    /// fill them without ever being moved or copied.
    ///
    /// The buffers are allocated by the first step (on the thread of the
    /// pool that runs it, where the memory of an earlier forward pass was
    /// freed and can be reused) rather than here, and they are only address
    /// space until written.
    pub fn with_capacity(config: &Config, positions: usize) -> Self {
        let mut cache = KvCache::new(config.n_layer);
        cache.width = config.n_embd;
        cache.room = positions;
        cache
    }

    /// The cache keeping its keys and values as `dtype` (`f32`, `f16` or
    /// `bf16`) from now on; what it holds already is converted (rounded, for
    /// a narrower dtype). Errors for `f64`.
    pub fn with_dtype(mut self, dtype: Dtype) -> Result<Self> {
        if dtype == Dtype::F64 {
            bail!("a key/value cache keeps f32, f16 or bf16, not {dtype}");
        }
        let width = self.width;
        for (k, v) in &mut self.kv {
            for rows in [k, v] {
                if rows.dtype() != dtype {
                    let mut converted = Rows::empty(dtype);
                    converted.reserve_exact(rows.capacity());
                    converted.extend(rows.view(width).view());
                    *rows = converted;
                }
            }
        }
        Ok(self)
    }

    /// The dtype the keys and values are kept in.
    pub fn dtype(&self) -> Dtype {
        self.kv.first().map_or(Dtype::F32, |(k, _)| k.dtype())
    }

    /// Bytes the cached keys and values take (their length, not the room
    /// reserved).
    pub fn bytes(&self) -> usize {
        let values: usize = self.kv.iter().map(|(k, v)| k.len() + v.len()).sum();
        values * self.dtype().size()
    }

    /// Make room for `additional` more positions in every block at once (one
    /// allocation each, of exactly that size), so that the steps that fill
    /// them copy nothing. Does nothing before the cache knows its width (an
    /// empty [`KvCache::new`]: use [`KvCache::with_capacity`]).
    pub fn reserve(&mut self, additional: usize) {
        let floats = additional * self.width;
        for (k, v) in &mut self.kv {
            k.reserve_exact(floats);
            v.reserve_exact(floats);
        }
    }

    /// Number of positions every block can hold before its buffers grow (for
    /// a [`KvCache::with_capacity`] before its first step: the room it will
    /// allocate).
    pub fn capacity(&self) -> usize {
        if self.kv.iter().all(|(k, _)| k.capacity() == 0) {
            return self.room;
        }
        match self.width {
            0 => 0,
            width => self
                .kv
                .iter()
                .map(|(k, v)| k.capacity().min(v.capacity()) / width)
                .min()
                .unwrap_or(0),
        }
    }

    /// The width `C` of the cached keys and values, 0 while unknown (a
    /// [`KvCache::new`] before its first step).
    pub fn width(&self) -> usize {
        self.width
    }

    /// Number of cached positions (padding included).
    pub fn len(&self) -> usize {
        self.key_mask.len()
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.key_mask.is_empty()
    }

    /// Number of cached positions that are real tokens (not padding).
    pub fn real_tokens(&self) -> usize {
        self.next_position
    }

    /// Number of blocks the cache is for.
    pub fn layers(&self) -> usize {
        self.kv.len()
    }

    /// Forget everything (keeps the allocations).
    pub fn clear(&mut self) {
        for (k, v) in &mut self.kv {
            k.clear();
            v.clear();
        }
        self.key_mask.clear();
        self.padded = false;
        self.next_position = 0;
    }

    /// Register the positions of a new step and return their position ids:
    /// real tokens count up from the last real one; padding gets position 0
    /// (it is never attended to, so its id does not matter).
    pub(crate) fn push_positions(&mut self, mask: &[bool]) -> Vec<usize> {
        mask.iter()
            .map(|&real| {
                self.key_mask.push(real);
                if real {
                    self.next_position += 1;
                    self.next_position - 1
                } else {
                    self.padded = true;
                    0
                }
            })
            .collect()
    }

    /// Append the keys and values of the new positions (`[T, C]` each) to
    /// block `layer`.
    ///
    /// # Panics
    ///
    /// If `C` is not the width of the keys already cached.
    pub(crate) fn append<'a>(
        &mut self,
        layer: usize,
        k: ArrayView2<'a, f32>,
        v: ArrayView2<'a, f32>,
    ) {
        let width = k.ncols();
        if self.width == 0 {
            self.width = width; // the first append of a `KvCache::new`
        }
        assert!(
            width == self.width && v.ncols() == width,
            "keys and values of one model have one width: the cache holds {}, the step gives {} and {}",
            self.width,
            width,
            v.ncols()
        );
        let (keys, values) = &mut self.kv[layer];
        for (cached, new) in [(keys, k), (values, v)] {
            // All the new rows at once: an empty buffer gets the room asked
            // for (or exactly their size), a full one grows once (doubling),
            // never row by row.
            if cached.capacity() == 0 {
                cached.reserve_exact(new.len().max(self.room * width));
            }
            cached.reserve(new.len());
            cached.extend(new);
        }
    }

    /// Keys and values of block `layer`, `[len, C]` each, as `f32`: a view of
    /// an `f32` cache, a widened copy of a half one.
    pub fn keys_values(&self, layer: usize) -> (CowArray<'_, f32, Ix2>, CowArray<'_, f32, Ix2>) {
        let (k, v) = &self.kv[layer];
        (k.view(self.width), v.view(self.width))
    }

    /// Keys and values of block `layer` as they are stored, for attention to
    /// read (and widen) in place.
    pub(crate) fn stored(&self, layer: usize) -> Stored<'_> {
        let width = self.width;
        match &self.kv[layer] {
            (Rows::F32(k), Rows::F32(v)) => Stored::F32(rows_of(k, width), rows_of(v, width)),
            (Rows::F16(k), Rows::F16(v)) => Stored::F16(rows_of(k, width), rows_of(v, width)),
            (Rows::BF16(k), Rows::BF16(v)) => Stored::BF16(rows_of(k, width), rows_of(v, width)),
            // Keys and values are converted together (`with_dtype`).
            _ => unreachable!("a cache keeps its keys and values in one dtype"),
        }
    }

    /// `[len]`, true at real tokens; `None` when there is no padding at all.
    pub fn key_mask(&self) -> Option<ArrayView1<'_, bool>> {
        self.padded.then(|| ArrayView1::from(&self.key_mask[..]))
    }
}

/// One block's keys (or values), `[len, C]` row-major, in the cache's dtype.
#[derive(Clone, Debug)]
enum Rows {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

/// `$body` with `$v` bound to the buffer of `$rows`, whatever its dtype.
macro_rules! each_dtype {
    ($rows:expr, $v:ident => $body:expr) => {
        match $rows {
            Rows::F32($v) => $body,
            Rows::F16($v) => $body,
            Rows::BF16($v) => $body,
        }
    };
}

/// A block's keys and values as stored: `[len, C]` each, in the cache's dtype.
pub(crate) enum Stored<'a> {
    F32(ArrayView2<'a, f32>, ArrayView2<'a, f32>),
    F16(ArrayView2<'a, f16>, ArrayView2<'a, f16>),
    BF16(ArrayView2<'a, bf16>, ArrayView2<'a, bf16>),
}

impl Rows {
    fn empty(dtype: Dtype) -> Self {
        match dtype {
            Dtype::F16 => Rows::F16(Vec::new()),
            Dtype::BF16 => Rows::BF16(Vec::new()),
            Dtype::F32 | Dtype::F64 => Rows::F32(Vec::new()),
        }
    }

    fn dtype(&self) -> Dtype {
        match self {
            Rows::F32(_) => Dtype::F32,
            Rows::F16(_) => Dtype::F16,
            Rows::BF16(_) => Dtype::BF16,
        }
    }

    fn len(&self) -> usize {
        each_dtype!(self, v => v.len())
    }

    fn capacity(&self) -> usize {
        each_dtype!(self, v => v.capacity())
    }

    fn reserve(&mut self, additional: usize) {
        each_dtype!(self, v => v.reserve(additional))
    }

    fn reserve_exact(&mut self, additional: usize) {
        each_dtype!(self, v => v.reserve_exact(additional))
    }

    fn clear(&mut self) {
        each_dtype!(self, v => v.clear())
    }

    /// Append the rows of `new`, each value rounded to the dtype.
    fn extend(&mut self, new: ArrayView2<f32>) {
        match new.as_slice() {
            Some(values) => self.extend_from_slice(values),
            None => {
                for row in new.rows() {
                    match row.as_slice() {
                        Some(values) => self.extend_from_slice(values),
                        None => self.extend_from_slice(&row.to_vec()),
                    }
                }
            }
        }
    }

    /// Append `values`, each rounded to the dtype.
    fn extend_from_slice(&mut self, values: &[f32]) {
        match self {
            Rows::F32(v) => v.extend_from_slice(values),
            Rows::F16(v) => append_rounded(v, values),
            Rows::BF16(v) => append_rounded(v, values),
        }
    }

    fn view(&self, width: usize) -> CowArray<'_, f32, Ix2> {
        match self {
            Rows::F32(v) => rows_of(v, width).into(),
            Rows::F16(v) => widened(rows_of(v, width)).into(),
            Rows::BF16(v) => widened(rows_of(v, width)).into(),
        }
    }
}

/// `values` rounded to the half type `H` and appended to `v`.
fn append_rounded<H: Default + Clone>(v: &mut Vec<H>, values: &[f32])
where
    [H]: HalfFloatSliceExt,
{
    let start = v.len();
    v.resize(start + values.len(), H::default());
    v[start..].convert_from_f32_slice(values);
}

/// `x` as `[len / width, width]`, row-major (`[0, 0]` while the width is unknown).
fn rows_of<E>(x: &[E], width: usize) -> ArrayView2<'_, E> {
    let rows = x.len().checked_div(width).unwrap_or(0);
    ArrayView2::from_shape((rows, width), x).expect("whole rows of the width")
}
