//! `config.json` text → a validated `Config`, whose derived numbers must not panic.
#![no_main]

use gpt2_ndarray::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(config) = Config::from_json(&text) {
        config.validate().expect("from_json returns valid configs");
        let _ = config.head_dim();
        let _ = config.attention_scale(config.n_layer - 1);
        let _ = config.num_parameters();
    }
});
