//! Arbitrary bytes → lossy UTF-8 → the GPT-2 tokenizer → a forward pass of the
//! golden test model (`golden/model`) on the first ≤ n_positions ids, and a
//! decode back to text, which must give the text again. Model and tokenizer
//! are loaded once.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use gpt2_ndarray::{Gpt2, Tokenizer};
use libfuzzer_sys::fuzz_target;

fn model() -> &'static (Gpt2, Tokenizer) {
    static MODEL: OnceLock<(Gpt2, Tokenizer)> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../golden/model");
        let model = Gpt2::from_dir(&dir).expect("golden model");
        let tokenizer = Tokenizer::from_dir(&dir).expect("golden tokenizer");
        (model, tokenizer)
    })
}

fuzz_target!(|data: &[u8]| {
    let (model, tokenizer) = model();
    let text = String::from_utf8_lossy(data);
    let ids = tokenizer.encode(&text).expect("every string tokenizes");
    let decoded = tokenizer.decode(&ids).expect("encoded ids decode");
    assert_eq!(decoded, text, "decode(encode(text)) != text");
    let n = ids.len().min(model.config.n_positions);
    if n == 0 {
        assert!(model.forward(&ids).is_err(), "an empty prompt is an error");
        return;
    }
    // The head (48 × 50257 per position) dominates the cost: all positions
    // for short inputs, the last one (what generation computes) for long ones.
    let logits = if n <= 16 {
        let logits = model.forward(&ids[..n]).expect("in-range ids run");
        assert_eq!(logits.dim(), (n, model.config.vocab_size));
        logits.row(n - 1).to_owned()
    } else {
        model
            .next_token_logits(&ids[..n])
            .expect("in-range ids run")
    };
    assert_eq!(logits.len(), model.config.vocab_size);
    assert!(
        logits.iter().all(|v| v.is_finite()),
        "non-finite logits for {:?}",
        &ids[..n]
    );
});
