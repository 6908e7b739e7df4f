//! Named intermediate activations, captured on request during a forward pass.
//!
//! A [`Trace`] is a value the caller passes into the forward pass. When it is
//! [`Trace::off`] (the default) recording costs one branch per step; when it is
//! on, each step the forward pass reaches is copied under its Hugging Face-style
//! name, the names the golden files of `python_ref/export_model.py` use:
//!
//! | name | shape | what |
//! |---|---|---|
//! | `embed` | `[T, C]` | `wte[ids] + wpe[positions]` |
//! | `h.{i}.ln_1` | `[T, C]` | first LayerNorm of block `i` |
//! | `h.{i}.attn.c_attn` | `[T, 3C]` | `q | k | v` projection |
//! | `h.{i}.attn.q`, `.k`, `.v` | `[n_head, T(k), d]` | split into heads (`k`, `v` include cached positions) |
//! | `h.{i}.attn.scores` | `[n_head, T, Tk]` | scaled, masked scores (`-inf` where masked) |
//! | `h.{i}.attn.probs` | `[n_head, T, Tk]` | softmax of the scores |
//! | `h.{i}.attn.merged` | `[T, C]` | heads merged back |
//! | `h.{i}.attn.z` | `[n_head, T, d]` | `attn.merged` again, each head's output apart (before `c_proj`): recorded when asked for by name or prefix, not by [`Trace::all`] |
//! | `h.{i}.attn.c_proj` | `[T, C]` | attention output projection |
//! | `h.{i}.resid_1` | `[T, C]` | residual stream after the attention |
//! | `h.{i}.ln_2` | `[T, C]` | second LayerNorm |
//! | `h.{i}.mlp.c_fc` | `[T, n_inner]` | MLP up-projection |
//! | `h.{i}.mlp.act` | `[T, n_inner]` | after the activation |
//! | `h.{i}.mlp.c_proj` | `[T, C]` | MLP down-projection |
//! | `h.{i}` | `[T, C]` | residual stream leaving block `i` |
//! | `ln_f` | `[T', C]` | final LayerNorm (only the positions whose logits are computed) |
//! | `logits` | `[T', vocab]` | the language-model head |

use std::collections::BTreeMap;

use ndarray::{ArrayD, ArrayView, Dimension};

/// Which activations to keep, and the ones kept so far.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    filter: Filter,
    /// Captured activations by name, in name order.
    pub tensors: BTreeMap<String, ArrayD<f32>>,
}

#[derive(Clone, Debug, Default)]
enum Filter {
    #[default]
    Off,
    All,
    Prefixes(Vec<String>),
    Names(Vec<String>),
}

impl Trace {
    /// Record nothing.
    pub fn off() -> Self {
        Self::default()
    }

    /// Record every step.
    pub fn all() -> Self {
        Trace {
            filter: Filter::All,
            tensors: BTreeMap::new(),
        }
    }

    /// Record the steps whose name starts with one of `prefixes`
    /// (`["h.3.attn.probs", "ln_f"]`, or `["h.0."]` for all of block 0).
    pub fn only<S: AsRef<str>>(prefixes: &[S]) -> Self {
        Trace {
            filter: Filter::Prefixes(prefixes.iter().map(|p| p.as_ref().to_owned()).collect()),
            tensors: BTreeMap::new(),
        }
    }

    /// Record exactly the steps called `names` (`["h.3", "h.3.attn.probs"]`:
    /// block 3's output and its attention probabilities, nothing else).
    pub fn names<S: AsRef<str>>(names: &[S]) -> Self {
        Trace {
            filter: Filter::Names(names.iter().map(|n| n.as_ref().to_owned()).collect()),
            tensors: BTreeMap::new(),
        }
    }

    /// Whether a step called `name` would be recorded.
    pub fn wants(&self, name: &str) -> bool {
        match &self.filter {
            Filter::Off => false,
            Filter::All => true,
            Filter::Prefixes(prefixes) => prefixes.iter().any(|p| name.starts_with(p.as_str())),
            Filter::Names(names) => names.iter().any(|n| n == name),
        }
    }

    /// Whether step `step` of block `layer` (`h.{layer}.{step}`) would be recorded.
    pub fn wants_in(&self, layer: usize, step: &str) -> bool {
        !matches!(self.filter, Filter::Off) && self.wants(&block_name(layer, step))
    }

    /// Whether step `step` of block `layer` is asked for by name or prefix
    /// (not merely by [`Trace::all`]): for a view of another step, such as
    /// `attn.z`, that `all` would only record twice.
    pub fn asks_for_in(&self, layer: usize, step: &str) -> bool {
        !matches!(self.filter, Filter::Off | Filter::All) && self.wants(&block_name(layer, step))
    }

    /// Record a top-level step (`embed`, `ln_f`, `logits`).
    pub fn record<D: Dimension>(&mut self, name: &str, x: ArrayView<f32, D>) {
        if self.wants(name) {
            self.tensors
                .insert(name.to_owned(), x.into_dyn().to_owned());
        }
    }

    /// Record step `step` of block `layer` as `h.{layer}.{step}` (`step` empty: `h.{layer}`).
    /// The name is only formatted when tracing is on.
    pub fn record_in<D: Dimension>(&mut self, layer: usize, step: &str, x: ArrayView<f32, D>) {
        if matches!(self.filter, Filter::Off) {
            return;
        }
        let name = block_name(layer, step);
        if self.wants(&name) {
            self.tensors.insert(name, x.into_dyn().to_owned());
        }
    }

    /// A recorded activation.
    pub fn get(&self, name: &str) -> Option<&ArrayD<f32>> {
        self.tensors.get(name)
    }
}

fn block_name(layer: usize, step: &str) -> String {
    if step.is_empty() {
        format!("h.{layer}")
    } else {
        format!("h.{layer}.{step}")
    }
}
