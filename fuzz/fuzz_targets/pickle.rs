//! The restricted unpickler alone, then every accessor on what it returns.
#![no_main]

use gpt2_ndarray::checkpoint::unpickler::{self as pickle, Value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = pickle::load(data) {
        let _ = p.root.kind();
        if let Some(items) = p.dict_items(&p.root) {
            for (k, v) in items {
                let _ = (k.kind(), v.kind(), p.sequence(v));
            }
        }
        if let Some(items) = p.sequence(&p.root) {
            for v in items {
                let _ = matches!(v, Value::Tensor(_)) || p.dict_items(v).is_some();
            }
        }
    }
});
