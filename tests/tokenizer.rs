//! Token ids and decoded text equal `transformers`' GPT-2 tokenizer on a golden
//! list of awkward strings (whitespace runs, contractions, CJK, emoji,
//! `<|endoftext|>` inside a text, the empty string, ...).

mod common;

use common::golden_dir;
use gpt2_ndarray::Tokenizer;
use serde_json::Value;

fn golden_cases() -> Vec<Value> {
    let path = golden_dir().join("reference/tokenization.json");
    let text =
        std::fs::read_to_string(&path).expect("tokenization.json (run python_ref/export_model.py)");
    let json: Value = serde_json::from_str(&text).expect("json");
    json["cases"].as_array().expect("cases").clone()
}

fn tokenizer() -> Tokenizer {
    // golden/model has vocab.json + merges.txt and no tokenizer.json: this
    // builds GPT-2's byte-level BPE from the two original files.
    Tokenizer::from_dir(golden_dir().join("model")).expect("tokenizer")
}

#[test]
fn encode_gives_the_ids_of_transformers_for_every_golden_string() {
    let tokenizer = tokenizer();
    let cases = golden_cases();
    assert!(cases.len() >= 15, "the golden list is too short");
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let expected: Vec<u32> = case["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        assert_eq!(
            tokenizer.encode(text).expect("encode"),
            expected,
            "ids of {text:?}"
        );
    }
}

#[test]
fn decode_gives_the_text_of_transformers_for_every_golden_string() {
    let tokenizer = tokenizer();
    for case in golden_cases() {
        let ids: Vec<u32> = case["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        let expected = case["decode"].as_str().expect("decode");
        assert_eq!(
            tokenizer.decode(&ids).expect("decode"),
            expected,
            "decode of {ids:?}"
        );
    }
}

#[test]
fn end_of_text_inside_a_text_is_the_single_special_id_50256() {
    let tokenizer = tokenizer();
    assert_eq!(tokenizer.end_of_text(), Some(50256));
    let ids = tokenizer.encode("a<|endoftext|>b").expect("encode");
    assert_eq!(ids.iter().filter(|&&id| id == 50256).count(), 1, "{ids:?}");
    assert_eq!(tokenizer.vocab_size(), 50257);
}

#[test]
fn token_bytes_reassemble_the_utf8_of_a_text_split_inside_characters() {
    let tokenizer = tokenizer();
    let text = "naïve 🙂 日本";
    let ids = tokenizer.encode(text).expect("encode");
    let bytes: Vec<u8> = ids
        .iter()
        .flat_map(|&id| tokenizer.token_bytes(id).expect("bytes"))
        .collect();
    assert_eq!(bytes, text.as_bytes());
    // The emoji is split over several byte-level tokens, each not valid UTF-8 alone.
    assert!(ids
        .iter()
        .any(|&id| std::str::from_utf8(&tokenizer.token_bytes(id).unwrap()).is_err()));
}

#[test]
fn decoding_an_id_out_of_range_is_an_error() {
    let tokenizer = tokenizer();
    let err = tokenizer.decode(&[50257]).unwrap_err().to_string();
    assert!(
        err.contains("50257") && err.contains("out of range"),
        "{err}"
    );
}
