//! `pytorch_model.bin` bytes (zip or legacy) → tensors → (when they fit the
//! tiny config of `golden/bad/tiny`) a model that runs.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use gpt2_ndarray::checkpoint::pytorch::read_pytorch_bin_bytes;
use gpt2_ndarray::{Config, Gpt2};
use libfuzzer_sys::fuzz_target;

fn tiny_config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../golden/bad/tiny/config.json");
        Config::from_file(&path).expect("tiny config")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(tensors) = read_pytorch_bin_bytes(data, &|_| true) {
        if let Ok(model) = Gpt2::from_tensors(tiny_config().clone(), tensors) {
            let _ = model.forward(&[1, 2, 3]).expect("a loaded model runs");
        }
    }
});
