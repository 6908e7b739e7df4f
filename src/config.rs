//! `config.json`: the hyper-parameters that shape a GPT-2.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

use crate::blocks::Activation;

/// A GPT-2 configuration, read from a Hugging Face `config.json`.
///
/// Every field that changes inference is here; the others in the file
/// (dropout rates, `task_specific_params`, ...) are ignored. The five shape
/// fields are required — a file without them is more likely a mistake than a
/// GPT-2 small — while the rest default as transformers' `GPT2Config` does,
/// which is what the 2019 files of the original GPT-2 rely on.
///
/// Build one with [`Config::from_file`] / [`Config::from_json`], or use the
/// constructors of the released sizes ([`Config::gpt2`], ...).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Number of tokens in the vocabulary (`wte` rows): 50257 for GPT-2.
    pub vocab_size: usize,
    /// Longest sequence (`wpe` rows): 1024 for GPT-2. Old files also call it `n_ctx`.
    pub n_positions: usize,
    /// Width of the residual stream `C`.
    pub n_embd: usize,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Attention heads per block; `head_dim = n_embd / n_head`.
    pub n_head: usize,
    /// Hidden width of the MLP (`null` in the file means `4·n_embd`).
    pub n_inner: usize,
    /// The MLP's non-linearity (`activation_function`).
    pub activation: Activation,
    /// `ε` of every LayerNorm.
    pub layer_norm_epsilon: f32,
    /// Divide attention scores by `√head_dim` (true for GPT-2).
    pub scale_attn_weights: bool,
    /// Also divide the scores of block `i` by `i + 1` (false for GPT-2).
    pub scale_attn_by_inverse_layer_idx: bool,
    /// transformers' fp16 trick (scale before the matmul and upcast). In `f32`,
    /// which is all this crate computes in, it is the same arithmetic.
    pub reorder_and_upcast_attn: bool,
    /// The language-model head is `wte` (true for GPT-2) or its own `lm_head.weight`.
    pub tie_word_embeddings: bool,
}

/// Sizes beyond these are not a GPT-2 but a corrupt or hostile file; refusing
/// them keeps a config from asking for terabytes of weights.
const MAX_VOCAB: usize = 1 << 22;
const MAX_POSITIONS: usize = 1 << 20;
const MAX_WIDTH: usize = 1 << 16;
const MAX_LAYERS: usize = 1 << 10;

/// The top-level fields of a `config.json`, read one by one so that a value of
/// the wrong type is reported with the field's name.
struct Fields<'a>(&'a serde_json::Map<String, serde_json::Value>);

impl Fields<'_> {
    /// The field's value; `None` when it is absent or `null` (both mean "the default").
    fn get(&self, name: &str) -> Option<&serde_json::Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn wrong_type(name: &str, value: &serde_json::Value, expected: &str) -> anyhow::Error {
        anyhow::anyhow!("{name} is {}, it must be {expected}", short(value))
    }

    fn int(&self, name: &str) -> Result<Option<i128>> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let int = v
            .as_i64()
            .map(i128::from)
            .or_else(|| v.as_u64().map(i128::from));
        int.map(Some)
            .ok_or_else(|| Self::wrong_type(name, v, "an integer"))
    }

    fn float(&self, name: &str) -> Result<Option<f64>> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        v.as_f64()
            .map(Some)
            .ok_or_else(|| Self::wrong_type(name, v, "a number"))
    }

    fn boolean(&self, name: &str) -> Result<Option<bool>> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        v.as_bool()
            .map(Some)
            .ok_or_else(|| Self::wrong_type(name, v, "true or false"))
    }

    fn string(&self, name: &str) -> Result<Option<&str>> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        v.as_str()
            .map(Some)
            .ok_or_else(|| Self::wrong_type(name, v, "a string"))
    }

    /// A required size: present, positive, at most `max`.
    fn size(&self, name: &str, max: usize) -> Result<usize> {
        let v = self
            .int(name)?
            .with_context(|| format!("config.json lacks the field {name:?}"))?;
        size_in_range(name, v, max)
    }
}

/// A JSON value for an error message, cut after 60 characters.
fn short(value: &serde_json::Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(60) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

fn size_in_range(name: &str, v: i128, max: usize) -> Result<usize> {
    ensure!(v > 0, "{name} is {v}, it must be positive");
    ensure!(
        v <= max as i128,
        "{name} is {v}, more than the sane limit {max}"
    );
    Ok(v as usize)
}

impl Config {
    /// Read and validate `config.json`. Every error names the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    /// Parse and validate the text of a `config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let json: serde_json::Value =
            serde_json::from_str(text).context("config.json is not valid JSON")?;
        let fields = json
            .as_object()
            .with_context(|| format!("config.json holds {}, not a JSON object", short(&json)))?;
        let raw = Fields(fields);
        if let Some(kind) = raw.string("model_type")? {
            ensure!(
                kind == "gpt2",
                "model_type is {kind:?}, this crate runs \"gpt2\""
            );
        }
        ensure!(
            raw.boolean("add_cross_attention")? != Some(true),
            "add_cross_attention is true: encoder-decoder GPT-2 is not supported"
        );
        let n_positions = match (raw.int("n_positions")?, raw.int("n_ctx")?) {
            (Some(p), Some(c)) if p != c => bail!("n_positions ({p}) and n_ctx ({c}) disagree"),
            (None, None) => bail!("config.json lacks the field \"n_positions\""),
            (p, c) => size_in_range("n_positions", p.or(c).unwrap_or_default(), MAX_POSITIONS)?,
        };
        let n_embd = raw.size("n_embd", MAX_WIDTH)?;
        let n_inner = match raw.int("n_inner")? {
            None => 4 * n_embd,
            Some(v) => size_in_range("n_inner", v, 4 * MAX_WIDTH)?,
        };
        let config = Config {
            vocab_size: raw.size("vocab_size", MAX_VOCAB)?,
            n_positions,
            n_embd,
            n_layer: raw.size("n_layer", MAX_LAYERS)?,
            n_head: raw.size("n_head", MAX_WIDTH)?,
            n_inner,
            activation: Activation::from_name(
                raw.string("activation_function")?.unwrap_or("gelu_new"),
            )?,
            layer_norm_epsilon: raw.float("layer_norm_epsilon")?.unwrap_or(1e-5) as f32,
            scale_attn_weights: raw.boolean("scale_attn_weights")?.unwrap_or(true),
            scale_attn_by_inverse_layer_idx: raw
                .boolean("scale_attn_by_inverse_layer_idx")?
                .unwrap_or(false),
            reorder_and_upcast_attn: raw.boolean("reorder_and_upcast_attn")?.unwrap_or(false),
            tie_word_embeddings: raw.boolean("tie_word_embeddings")?.unwrap_or(true),
        };
        config.validate()?;
        Ok(config)
    }

    /// Check every field and the relations between them: sizes positive and
    /// sane, `n_embd` divisible by `n_head`, `ε` a positive number. A config
    /// built by hand goes through the same checks as one read from a file.
    pub fn validate(&self) -> Result<()> {
        for (name, value, max) in [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("n_positions", self.n_positions, MAX_POSITIONS),
            ("n_embd", self.n_embd, MAX_WIDTH),
            ("n_layer", self.n_layer, MAX_LAYERS),
            ("n_head", self.n_head, MAX_WIDTH),
            ("n_inner", self.n_inner, 4 * MAX_WIDTH),
        ] {
            if name == "n_layer" {
                ensure!(value > 0, "n_layer is 0: a GPT-2 needs at least one block");
            }
            size_in_range(name, value as i128, max)?;
        }
        ensure!(
            self.n_embd.is_multiple_of(self.n_head),
            "n_embd ({}) is not divisible by n_head ({})",
            self.n_embd,
            self.n_head
        );
        let eps = self.layer_norm_epsilon;
        ensure!(
            eps.is_finite() && eps > 0.0,
            "layer_norm_epsilon is {eps}, it must be a positive number"
        );
        Ok(())
    }

    /// Width of one attention head, `n_embd / n_head`.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// The factor attention scores of block `layer` (0-based) are multiplied by:
    /// `1/√head_dim` if `scale_attn_weights`, times `1/(layer+1)` if
    /// `scale_attn_by_inverse_layer_idx`.
    pub fn attention_scale(&self, layer: usize) -> f32 {
        let mut scale = 1.0;
        if self.scale_attn_weights {
            scale /= (self.head_dim() as f32).sqrt();
        }
        if self.scale_attn_by_inverse_layer_idx {
            scale /= (layer + 1) as f32;
        }
        scale
    }

    /// Number of parameters (tied head counted once), as `model.num_parameters()`.
    pub fn num_parameters(&self) -> usize {
        let (c, f) = (self.n_embd, self.n_inner);
        let ln = 2 * c;
        let block = ln + (c * 3 * c + 3 * c) + (c * c + c) + ln + (c * f + f) + (f * c + c);
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * c
        };
        self.vocab_size * c + self.n_positions * c + self.n_layer * block + ln + head
    }

    fn sized(n_embd: usize, n_layer: usize, n_head: usize) -> Self {
        Config {
            vocab_size: 50257,
            n_positions: 1024,
            n_embd,
            n_layer,
            n_head,
            n_inner: 4 * n_embd,
            activation: Activation::GeluNew,
            layer_norm_epsilon: 1e-5,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            reorder_and_upcast_attn: false,
            tie_word_embeddings: true,
        }
    }

    /// GPT-2 small, 124M parameters.
    pub fn gpt2() -> Self {
        Self::sized(768, 12, 12)
    }
    /// GPT-2 medium, 355M parameters.
    pub fn gpt2_medium() -> Self {
        Self::sized(1024, 24, 16)
    }
    /// GPT-2 large, 774M parameters.
    pub fn gpt2_large() -> Self {
        Self::sized(1280, 36, 20)
    }
    /// GPT-2 XL, 1.5B parameters.
    pub fn gpt2_xl() -> Self {
        Self::sized(1600, 48, 25)
    }
    /// DistilGPT2, 82M parameters: GPT-2 small's width with 6 blocks.
    pub fn distilgpt2() -> Self {
        Self::sized(768, 6, 12)
    }
}
