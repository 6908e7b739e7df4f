//! The key/value cache of incremental decoding.

use ndarray::{Array2, ArrayView1, ArrayView2, Axis};

/// The keys and values of every position seen so far, per block, so that a new
/// token costs one position of work instead of a recompute of the sequence.
///
/// A value the caller owns and passes to [`crate::model::Gpt2::forward_step`]:
/// start with [`KvCache::new`], and each step appends its positions. Also keeps
/// which cached positions are padding and the position id of the next real token.
#[derive(Clone, Debug)]
pub struct KvCache {
    /// Per block: keys and values, `[len, C]` each.
    kv: Vec<(Array2<f32>, Array2<f32>)>,
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
            kv: vec![(Array2::zeros((0, 0)), Array2::zeros((0, 0))); n_layer],
            key_mask: Vec::new(),
            padded: false,
            next_position: 0,
        }
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
            *k = Array2::zeros((0, k.ncols()));
            *v = Array2::zeros((0, v.ncols()));
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

    /// Append the keys and values of the new positions to block `layer`.
    pub(crate) fn append<'a>(
        &mut self,
        layer: usize,
        k: ArrayView2<'a, f32>,
        v: ArrayView2<'a, f32>,
    ) {
        let (keys, values) = &mut self.kv[layer];
        for (cached, new) in [(keys, k), (values, v)] {
            if cached.is_empty() {
                *cached = Array2::zeros((0, new.ncols()));
            }
            cached
                .append(Axis(0), new)
                .expect("keys and values of one model have one width");
        }
    }

    /// Keys and values of block `layer`, `[len, C]` each.
    pub fn keys_values(&self, layer: usize) -> (ArrayView2<'_, f32>, ArrayView2<'_, f32>) {
        let (k, v) = &self.kv[layer];
        (k.view(), v.view())
    }

    /// `[len]`, true at real tokens; `None` when there is no padding at all.
    pub fn key_mask(&self) -> Option<ArrayView1<'_, bool>> {
        self.padded.then(|| ArrayView1::from(&self.key_mask[..]))
    }
}
