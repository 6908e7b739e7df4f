//! Text ↔ token ids: GPT-2's byte-level BPE through the `tokenizers` crate.
//!
//! GPT-2 first maps every byte of the UTF-8 text to a printable character (so
//! a space becomes `Ġ`), splits the text with a regex into words, numbers,
//! punctuation runs and whitespace, then merges characters pairwise following
//! `merges.txt` until the pieces are entries of `vocab.json`. `<|endoftext|>`
//! (id 50256) is a special token: typed inside a text it becomes that one id,
//! as in `transformers`.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{anyhow, ensure, Context, Result};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::byte_level::ByteLevel as ByteLevelProcessor;
use tokenizers::AddedToken;

/// GPT-2's end-of-text token, also its beginning-of-text and padding token.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// A GPT-2 tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Byte-level alphabet: character → the byte it stands for.
    char_to_byte: HashMap<char, u8>,
    /// Ids of the special tokens (`<|endoftext|>`), whose text is literal.
    special: HashSet<u32>,
    /// Number of ids, special tokens included, counted once: the `tokenizers`
    /// crate builds its whole vocabulary map to count it (~20 ms for GPT-2),
    /// and every id is checked against it.
    vocab_size: usize,
}

impl Tokenizer {
    /// Load from a model directory: `tokenizer.json` when present, else
    /// `vocab.json` + `merges.txt`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            let inner = tokenizers::Tokenizer::from_file(&json)
                .map_err(|e| anyhow!("cannot load {}: {e}", json.display()))?;
            return Ok(Self::wrap(inner));
        }
        Self::from_files(dir.join("vocab.json"), dir.join("merges.txt"))
    }

    /// Build GPT-2's tokenizer from `vocab.json` and `merges.txt`, configured as
    /// transformers' `GPT2TokenizerFast`: byte-level pre-tokenizer without a
    /// prefix space, BPE, byte-level decoder, `<|endoftext|>` special.
    pub fn from_files(vocab: impl AsRef<Path>, merges: impl AsRef<Path>) -> Result<Self> {
        let (vocab, merges) = (vocab.as_ref(), merges.as_ref());
        for file in [vocab, merges] {
            ensure!(
                file.is_file(),
                "tokenizer file {} not found",
                file.display()
            );
        }
        let bpe = BPE::from_file(&path_str(vocab)?, &path_str(merges)?)
            .build()
            .map_err(|e| {
                anyhow!(
                    "cannot build BPE from {} and {}: {e}",
                    vocab.display(),
                    merges.display()
                )
            })?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner
            .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
            .with_decoder(Some(ByteLevelDecoder::default()))
            .with_post_processor(Some(ByteLevelProcessor::default().trim_offsets(false)));
        inner.add_special_tokens(&[AddedToken::from(END_OF_TEXT, true)]);
        Ok(Self::wrap(inner))
    }

    fn wrap(inner: tokenizers::Tokenizer) -> Self {
        let char_to_byte = (0..=255u8)
            .zip(bytes_to_unicode())
            .map(|(b, c)| (c, b))
            .collect();
        let special = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, token)| token.special)
            .map(|(id, _)| id)
            .collect();
        let vocab_size = inner.get_vocab_size(true);
        Tokenizer {
            inner,
            char_to_byte,
            special,
            vocab_size,
        }
    }

    /// Token ids of `text` (special tokens in the text recognised).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow!("cannot tokenize: {e}"))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens included; bytes that do not form
    /// valid UTF-8 become `�`, as in transformers.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.check_ids(ids)?;
        self.inner
            .decode(ids, false)
            .map_err(|e| anyhow!("cannot decode: {e}"))
    }

    /// The raw bytes a token stands for: a piece of UTF-8 that may end or start
    /// in the middle of a character (what a streaming printer must buffer).
    pub fn token_bytes(&self, id: u32) -> Result<Vec<u8>> {
        self.check_ids(&[id])?;
        let token = self
            .inner
            .id_to_token(id)
            .with_context(|| format!("token id {id} has no string"))?;
        if self.is_special(id) {
            return Ok(token.into_bytes());
        }
        token
            .chars()
            .map(|c| self.char_to_byte.get(&c).copied())
            .collect::<Option<Vec<u8>>>()
            .with_context(|| format!("token {token:?} is not in the byte-level alphabet"))
    }

    /// The token's string as the vocabulary spells it (`Ġthe`), for display.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of `<|endoftext|>`, if the vocabulary has it.
    pub fn end_of_text(&self) -> Option<u32> {
        self.inner.token_to_id(END_OF_TEXT)
    }

    /// Number of ids, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let n = self.vocab_size();
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= n) {
            anyhow::bail!("token id {bad} is out of range: the tokenizer has {n} tokens");
        }
        Ok(())
    }
}

/// GPT-2's `bytes_to_unicode`: printable bytes stand for themselves, the
/// other 68 bytes (controls, space, ...) are shifted to U+0100.. in byte order.
fn bytes_to_unicode() -> [char; 256] {
    let printable = |b: u8| matches!(b, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff);
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    for b in 0..=255u8 {
        table[b as usize] = if printable(b) {
            char::from(b)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap_or('\u{fffd}')
        };
    }
    table
}

fn path_str(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("path {} is not valid UTF-8", path.display()))
}
