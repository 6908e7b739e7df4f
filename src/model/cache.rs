//! The key/value cache of incremental decoding.

use ndarray::{ArrayView1, ArrayView2};

use crate::config::Config;

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
#[derive(Clone, Debug)]
pub struct KvCache {
    /// Per block: keys and values, `[len, C]` each, row-major.
    kv: Vec<(Vec<f32>, Vec<f32>)>,
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
}

impl KvCache {
    /// An empty cache for a model of `n_layer` blocks.
    pub fn new(n_layer: usize) -> Self {
        KvCache {
            kv: vec![(Vec::new(), Vec::new()); n_layer],
            width: 0,
            room: 0,
            key_mask: Vec::new(),
            padded: false,
            next_position: 0,
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
            match new.as_slice() {
                Some(rows) => cached.extend_from_slice(rows),
                None => new.rows().into_iter().for_each(|row| cached.extend(row)),
            }
        }
    }

    /// Keys and values of block `layer`, `[len, C]` each.
    pub fn keys_values(&self, layer: usize) -> (ArrayView2<'_, f32>, ArrayView2<'_, f32>) {
        let (k, v) = &self.kv[layer];
        (rows_of(k, self.width), rows_of(v, self.width))
    }

    /// `[len]`, true at real tokens; `None` when there is no padding at all.
    pub fn key_mask(&self) -> Option<ArrayView1<'_, bool>> {
        self.padded.then(|| ArrayView1::from(&self.key_mask[..]))
    }
}

/// `x` as `[len / width, width]`, row-major (`[0, 0]` while the width is unknown).
fn rows_of(x: &[f32], width: usize) -> ArrayView2<'_, f32> {
    let rows = x.len().checked_div(width).unwrap_or(0);
    ArrayView2::from_shape((rows, width), x).expect("whole rows of the width")
}
