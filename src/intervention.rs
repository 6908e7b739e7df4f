//! Change activations while the model runs: ablate a head, patch an activation
//! from one run into another, steer the residual stream.
//!
//! An [`Interventions`] is a value the caller passes into the forward pass
//! ([`Gpt2::forward_intervened`], [`Gpt2::forward_step_intervened`],
//! [`Gpt2::forward_steps_intervened`]), as a [`Trace`](crate::Trace) is: the
//! model keeps no hooks of its own. Each [`Intervention`] names an activation
//! by its trace name and says what to do to it before the model continues:
//!
//! - **replace** it with given values ([`Intervention::replace`]),
//! - **add** a vector to it ([`Intervention::add`]),
//! - **edit** it in place with a function ([`Intervention::edit`]),
//!
//! at every position or only at some ([`Intervention::at`]), in one sequence
//! of a batch or all ([`Intervention::in_sequence`]), and for the per-head
//! output `h.{i}.attn.z`, in some heads only ([`Intervention::heads`]).
//!
//! | site | acted on | width `w` |
//! |---|---|---|
//! | `embed`, `h.{i}`, `h.{i}.ln_1`, `h.{i}.resid_1`, `h.{i}.ln_2`, `h.{i}.attn.merged`, `h.{i}.attn.c_proj`, `h.{i}.mlp.c_proj`, `ln_f` | each position's row | `C` |
//! | `h.{i}.attn.c_attn` | each position's row (`q | k | v`: editing `k`, `v` changes what is cached) | `3C` |
//! | `h.{i}.mlp.c_fc`, `h.{i}.mlp.act` | each position's row | `n_inner` |
//! | `h.{i}.attn.z` | each position's output of each chosen head, before `c_proj` | `d = C / n_head` |
//!
//! `h.{i}.attn.z` is `h.{i}.attn.merged` seen as `[n_head, T, d]`: head `h`'s
//! output at position `t` is the columns `h·d .. (h+1)·d` of row `t` of
//! `merged`, so an edit of `z` is an edit of those columns, and reaches the
//! rest of the model through `attn.c_proj`, as a forward pre-hook on
//! `c_proj` in PyTorch does. The entering residual stream of block `i`
//! (TransformerLens's `blocks.{i}.hook_resid_pre`) is `embed` for `i = 0` and
//! `h.{i-1}` after it ([`resid_pre`]).
//!
//! **Positions** are positions in the sequence, as the [`KvCache`] counts
//! them (padding included): during cached generation, position 7 is the
//! eighth token whether it came with the prompt or was generated later, so
//! an intervention acts in the step that computes that position, and what
//! it changes there is cached (the keys and values of the later blocks).
//! Hence cached generation with an intervention gives what a recomputation
//! of the whole sequence with it gives. Positions a step does not compute
//! are left alone.
//!
//! Interventions act in the order they are listed, and a [`Trace`](crate::Trace)
//! of the same pass records each activation as the model continued with it
//! (after the interventions). With no intervention the forward pass is the
//! plain one: [`Gpt2::forward_step`] passes an empty list, which costs one
//! branch per site.
//!
//! ```
//! use gpt2_ndarray::intervention::{Intervention, Interventions};
//! use gpt2_ndarray::{Gpt2, Trace};
//! use ndarray::Array1;
//! # let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/golden/model");
//! let model = Gpt2::from_dir(dir)?;
//! let ids = [464, 3139, 286, 4881, 318];
//!
//! // Zero-ablate head 2 of block 1 (its output, before c_proj, at every position).
//! let ablated = Interventions::from(Intervention::zero_head(1, 2));
//! let logits = model.forward_intervened(&ids, &mut Trace::off(), &ablated)?;
//!
//! // Mean-ablate it: its mean output over the positions of a reference run.
//! let mut trace = Trace::names(&["h.1.attn.z"]);
//! model.forward_traced(&ids, &mut trace)?;
//! let z = trace.get("h.1.attn.z").unwrap(); // [n_head, T, d]
//! let mean = Intervention::mean_head(1, 2, z.view().into_dimensionality()?);
//!
//! // Add a steering vector to the residual stream entering block 2, at position 4 only.
//! let steer = Intervention::add("h.1", Array1::from_elem(model.config.n_embd, 0.5)).at([4]);
//! let both = Interventions::from(vec![mean, steer]);
//! let steered = model.forward_intervened(&ids, &mut Trace::off(), &both)?;
//! assert_eq!(steered.dim(), logits.dim());
//! # anyhow::Ok(())
//! ```

use std::fmt;

use anyhow::{bail, ensure, Context, Result};
use ndarray::{
    s, Array1, Array2, ArrayD, ArrayView3, ArrayViewMut1, ArrayViewMut2, Axis, Dimension,
};

use crate::config::Config;
#[cfg(doc)]
use crate::model::{Gpt2, KvCache};

/// Where an edit function is called: the sequence of the step (0 for a
/// single sequence), the position in it, and the head (for `attn.z`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct At {
    /// Which sequence of a [`Gpt2::forward_steps_intervened`] step (0 otherwise).
    pub sequence: usize,
    /// The position in that sequence, as its cache counts them.
    pub position: usize,
    /// The head, for `h.{i}.attn.z`; `None` for the other sites.
    pub head: Option<usize>,
}

/// A function that edits one vector of an activation in place.
pub type EditFn = dyn Fn(At, ArrayViewMut1<f32>) + Send + Sync;

/// What an [`Intervention`] does to each vector it acts on (a row `[w]`, or
/// one head's output `[d]` at one position).
pub enum Action {
    /// Set it to the given values: `[w]` (the same vector everywhere), or one
    /// vector per listed position, `[P, w]`, or for `attn.z` one per listed
    /// head and position, `[H, P, d]`.
    Replace(ArrayD<f32>),
    /// Add to it, with the shapes of [`Action::Replace`].
    Add(ArrayD<f32>),
    /// Call a function on it.
    Edit(Box<EditFn>),
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Replace(v) => write!(f, "Replace({:?})", v.shape()),
            Action::Add(v) => write!(f, "Add({:?})", v.shape()),
            Action::Edit(_) => write!(f, "Edit(fn)"),
        }
    }
}

/// One change to one activation: where (site, positions, heads, sequence) and what ([`Action`]).
#[derive(Debug)]
pub struct Intervention {
    site: Site,
    positions: Option<Vec<usize>>,
    heads: Option<Vec<usize>>,
    sequence: Option<usize>,
    action: Action,
}

/// An activation by its trace name, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Site {
    name: String,
    /// The block, or `None` for `embed` and `ln_f`.
    layer: Option<usize>,
    /// The step inside the block (`""` for the block's output `h.{i}`).
    step: String,
}

/// The steps of a block an intervention can act on (the `attn.z` heads are `attn.merged`'s columns).
const BLOCK_STEPS: [&str; 11] = [
    "",
    "ln_1",
    "attn.c_attn",
    "attn.merged",
    "attn.z",
    "attn.c_proj",
    "resid_1",
    "ln_2",
    "mlp.c_fc",
    "mlp.act",
    "mlp.c_proj",
];

impl Site {
    fn parse(name: &str) -> Site {
        let (layer, step) = match name.strip_prefix("h.") {
            Some(rest) => {
                let (layer, step) = rest.split_once('.').unwrap_or((rest, ""));
                match layer.parse() {
                    Ok(layer) => (Some(layer), step.to_owned()),
                    Err(_) => (None, name.to_owned()),
                }
            }
            None => (None, name.to_owned()),
        };
        Site {
            name: name.to_owned(),
            layer,
            step,
        }
    }

    /// The width of the vectors this site's action sees, or an error for a
    /// name that is not a site.
    fn width(&self, config: &Config) -> Result<usize> {
        let c = config.n_embd;
        let width = match (self.layer, self.step.as_str()) {
            (None, "embed" | "ln_f") => c,
            (Some(i), step) if BLOCK_STEPS.contains(&step) => {
                ensure!(
                    i < config.n_layer,
                    "{}: block {i} does not exist: the model has {} blocks (h.0 .. h.{})",
                    self.name,
                    config.n_layer,
                    config.n_layer - 1
                );
                match step {
                    "attn.c_attn" => 3 * c,
                    "mlp.c_fc" | "mlp.act" => config.n_inner,
                    "attn.z" => c / config.n_head,
                    _ => c,
                }
            }
            _ => bail!(
                "cannot intervene on {:?}: the sites are embed, ln_f and h.{{i}}, h.{{i}}.{} \
                 (attention's q, k, v, scores and probs are not sites: edit attn.c_attn or attn.z)",
                self.name,
                BLOCK_STEPS[1..].join(", h.{i}.")
            ),
        };
        Ok(width)
    }

    fn is_heads(&self) -> bool {
        self.step == "attn.z"
    }
}

/// The name of the residual stream entering block `layer` (TransformerLens's
/// `resid_pre`): `embed` for block 0, `h.{layer-1}` after it.
pub fn resid_pre(layer: usize) -> String {
    match layer {
        0 => "embed".to_owned(),
        i => format!("h.{}", i - 1),
    }
}

impl Intervention {
    fn new(site: &str, action: Action) -> Self {
        Intervention {
            site: Site::parse(site),
            positions: None,
            heads: None,
            sequence: None,
            action,
        }
    }

    /// Replace the activation `site` with `value` (shapes: [`Action::Replace`]).
    pub fn replace<D: Dimension>(site: &str, value: ndarray::Array<f32, D>) -> Self {
        Self::new(site, Action::Replace(value.into_dyn()))
    }

    /// Add `value` to the activation `site` (shapes: [`Action::Replace`]).
    pub fn add<D: Dimension>(site: &str, value: ndarray::Array<f32, D>) -> Self {
        Self::new(site, Action::Add(value.into_dyn()))
    }

    /// Call `f` on each vector of the activation `site` that the
    /// intervention acts on, with where it is ([`At`]).
    pub fn edit(site: &str, f: impl Fn(At, ArrayViewMut1<f32>) + Send + Sync + 'static) -> Self {
        Self::new(site, Action::Edit(Box::new(f)))
    }

    /// Act only at these positions (default: every position). With a
    /// per-position value (`[P, w]` or `[H, P, d]`), its `p`-th vector goes to
    /// the `p`-th position listed.
    pub fn at(mut self, positions: impl IntoIterator<Item = usize>) -> Self {
        self.positions = Some(positions.into_iter().collect());
        self
    }

    /// Act only on these heads (`h.{i}.attn.z` only; default: every head).
    pub fn heads(mut self, heads: impl IntoIterator<Item = usize>) -> Self {
        self.heads = Some(heads.into_iter().collect());
        self
    }

    /// Act only in sequence `b` of a [`Gpt2::forward_steps_intervened`] step
    /// (default: every sequence).
    pub fn in_sequence(mut self, b: usize) -> Self {
        self.sequence = Some(b);
        self
    }

    /// Zero-ablation of head `head` of block `layer`: its output (`attn.z`)
    /// set to zero at every position, before `c_proj`.
    pub fn zero_head(layer: usize, head: usize) -> Self {
        Self::edit(&format!("h.{layer}.attn.z"), |_, mut z| z.fill(0.0)).heads([head])
    }

    /// Mean-ablation of head `head` of block `layer`: its output set at every
    /// position to its mean over the positions of `z`, a reference run's
    /// `h.{layer}.attn.z` (`[n_head, T, d]`, e.g. from a [`Trace`](crate::Trace)).
    pub fn mean_head(layer: usize, head: usize, z: ArrayView3<f32>) -> Self {
        let mean: Array1<f32> = z
            .index_axis(Axis(0), head)
            .mean_axis(Axis(0))
            .unwrap_or_else(|| Array1::zeros(z.dim().2));
        Self::replace(&format!("h.{layer}.attn.z"), mean).heads([head])
    }

    /// The trace name of the activation acted on.
    pub fn site(&self) -> &str {
        &self.site.name
    }

    /// Check the intervention against the model's shapes.
    fn check(&self, config: &Config) -> Result<()> {
        let width = self.site.width(config)?;
        let name = &self.site.name;
        let heads = match (&self.heads, self.site.is_heads()) {
            (Some(_), false) => bail!("{name}: heads are chosen on attn.z only"),
            (Some(heads), true) => {
                if let Some(h) = heads.iter().find(|&&h| h >= config.n_head) {
                    bail!(
                        "{name}: head {h} does not exist: the model has {} heads",
                        config.n_head
                    );
                }
                heads.len()
            }
            (None, _) => config.n_head,
        };
        let value = match &self.action {
            Action::Replace(v) | Action::Add(v) => v,
            Action::Edit(_) => return Ok(()),
        };
        let shape = value.shape();
        if shape == [width] {
            return Ok(());
        }
        let Some(positions) = &self.positions else {
            bail!(
                "{name}: the value is {shape:?}, but without chosen positions it must be one \
                 vector [{width}] (for a value per position, say which positions with .at(...))"
            );
        };
        let expected = if self.site.is_heads() {
            vec![heads, positions.len(), width]
        } else {
            vec![positions.len(), width]
        };
        ensure!(
            shape == expected.as_slice(),
            "{name}: the value is {shape:?}, expected [{width}] or {expected:?}"
        );
        Ok(())
    }

    /// The index of `position` in the listed positions (its value's row), or
    /// `None` when the intervention does not act there.
    fn slot(&self, position: usize) -> Option<usize> {
        match &self.positions {
            None => Some(0),
            Some(list) => list.iter().position(|&p| p == position),
        }
    }

    /// Act on one vector `x`, the `slot`-th listed position (and `head_slot`-th head).
    fn act(&self, at: At, slot: usize, head_slot: usize, mut x: ArrayViewMut1<f32>) {
        match &self.action {
            Action::Edit(f) => f(at, x),
            Action::Replace(v) | Action::Add(v) => {
                let v = match v.ndim() {
                    1 => v.view(),
                    2 => v.slice(s![slot, ..]).into_dyn(),
                    _ => v.slice(s![head_slot, slot, ..]).into_dyn(),
                };
                let v = v
                    .into_dimensionality::<ndarray::Ix1>()
                    .expect("checked: a vector");
                if matches!(self.action, Action::Replace(_)) {
                    x.assign(&v);
                } else {
                    x += &v;
                }
            }
        }
    }
}

/// A list of [`Intervention`]s, applied in order; empty for a plain forward pass.
#[derive(Debug, Default)]
pub struct Interventions {
    list: Vec<Intervention>,
}

impl From<Intervention> for Interventions {
    fn from(one: Intervention) -> Self {
        Interventions { list: vec![one] }
    }
}

impl From<Vec<Intervention>> for Interventions {
    fn from(list: Vec<Intervention>) -> Self {
        Interventions { list }
    }
}

impl FromIterator<Intervention> for Interventions {
    fn from_iter<I: IntoIterator<Item = Intervention>>(iter: I) -> Self {
        Interventions {
            list: iter.into_iter().collect(),
        }
    }
}

impl Interventions {
    /// None: the plain forward pass.
    pub const fn none() -> Self {
        Interventions { list: Vec::new() }
    }

    /// Append one.
    pub fn push(&mut self, intervention: Intervention) {
        self.list.push(intervention);
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Number of interventions.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Check every intervention against the model's shapes: each site exists
    /// (its block too), heads are in range, values have the width of the site.
    pub fn check(&self, config: &Config) -> Result<()> {
        for (n, intervention) in self.list.iter().enumerate() {
            intervention
                .check(config)
                .with_context(|| format!("intervention {n}"))?;
        }
        Ok(())
    }

    /// Apply the interventions on block `layer`'s step `step` (`layer`
    /// `None`: the top-level `embed`, `ln_f`) to `x` (`[rows, w]`), whose row
    /// `r` is position `rows[r].1` of sequence `rows[r].0`. At
    /// `attn.merged` the `attn.z` interventions act too, on columns of heads.
    pub(crate) fn apply(
        &self,
        layer: Option<usize>,
        step: &str,
        mut x: ArrayViewMut2<f32>,
        rows: &[(usize, usize)],
        n_head: usize,
    ) {
        for iv in &self.list {
            let site = &iv.site;
            let z = step == "attn.merged" && site.is_heads();
            if site.layer != layer || (site.step != step && !z) {
                continue;
            }
            for (mut row, &(sequence, position)) in x.rows_mut().into_iter().zip(rows) {
                if iv.sequence.is_some_and(|b| b != sequence) {
                    continue;
                }
                let Some(slot) = iv.slot(position) else {
                    continue;
                };
                let mut at = At {
                    sequence,
                    position,
                    head: None,
                };
                if !z {
                    iv.act(at, slot, 0, row);
                    continue;
                }
                let d = row.len() / n_head;
                let all: Vec<usize>;
                let heads = match &iv.heads {
                    Some(heads) => heads,
                    None => {
                        all = (0..n_head).collect();
                        &all
                    }
                };
                for (head_slot, &h) in heads.iter().enumerate() {
                    at.head = Some(h);
                    let head = row.slice_mut(s![h * d..(h + 1) * d]);
                    iv.act(at, slot, head_slot, head);
                }
            }
        }
    }
}

/// What the forward pass carries for its interventions: the list, and which
/// sequence and position each row of the current activations is (computed
/// only when the list is not empty).
pub(crate) struct Hooks<'a> {
    edits: &'a Interventions,
    /// `(sequence, position)` of each row.
    rows: Vec<(usize, usize)>,
    n_head: usize,
}

impl<'a> Hooks<'a> {
    /// The hooks of a step whose sequences have `(cached, new)` positions
    /// each (`cached` counting the new ones), their rows stacked in order.
    pub(crate) fn new(
        edits: &'a Interventions,
        sequences: impl Iterator<Item = (usize, usize)>,
        n_head: usize,
    ) -> Self {
        let mut rows = Vec::new();
        if !edits.is_empty() {
            for (b, (cached, new)) in sequences.enumerate() {
                rows.extend((cached - new..cached).map(|position| (b, position)));
            }
        }
        Hooks {
            edits,
            rows,
            n_head,
        }
    }

    /// Apply the interventions on step `step` of block `layer` (`None`: the
    /// top-level `embed`, `ln_f`) to `x`; nothing to do without interventions.
    #[inline]
    pub(crate) fn apply(&self, layer: Option<usize>, step: &str, x: &mut Array2<f32>) {
        if !self.edits.is_empty() {
            self.edits
                .apply(layer, step, x.view_mut(), &self.rows, self.n_head);
        }
    }

    /// From here on the activations hold only the rows `keep` (in the last
    /// block, when only some positions' logits are wanted).
    pub(crate) fn keep(&mut self, keep: &[usize]) {
        if !self.edits.is_empty() {
            self.rows = keep.iter().map(|&r| self.rows[r]).collect();
        }
    }
}
