//! GPT-2 from scratch on `ndarray` (the tour is being written).

pub mod blocks;
