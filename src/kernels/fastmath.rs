//! The arithmetic inner loops of the blocks, written so that the compiler turns
//! them into SIMD code: sums, maxima and dot products over several independent
//! lanes, and an exponential made of a polynomial and bit operations.
//!
//! A plain `x.iter().sum()` is one chain of dependent additions: the compiler
//! may not reorder floating-point additions, so it cannot use SIMD lanes, and
//! each addition waits for the previous one. Keeping `LANES` partial sums
//! instead (`acc[l] += x[i + l]`) lets it use vector registers; the partial
//! sums are then added in a fixed order, so the result depends only on the
//! data, never on the machine or the thread count. `f32::exp` is a call into
//! the C library, one element at a time; [`exp`] is inlined into the loop that
//! uses it and vectorised with it.
//!
//! Each public loop here is compiled for every SIMD level of
//! [`simd`](super::simd) (AVX-512, AVX2 + FMA, AVX, portable/NEON) and runs
//! the one the CPU has. None of them fuses a multiply and an add, so every
//! level gives the same bits: only the vector width changes.

use super::convert::Element;
pub(crate) use super::simd::simd_targets;

/// Partial sums kept by the reductions below.
pub(crate) const LANES: usize = 16;

/// Add the lanes pairwise, in a fixed order.
///
/// Never inlined, on purpose: inlined, LLVM's SLP vectoriser matches this
/// pairwise tree against the loop that filled `acc` and compiles that loop
/// with two-lane vectors (measured: 10–20% slower at streaming a large
/// buffer); out of line, the loop gets the full vector width. It runs once per
/// reduction. (The dot products of the matrix–vector kernel's columns, the
/// head's, have twins with AVX-512 and AVX2 that fold the same way without
/// leaving the registers: `half_avx512::fold_in_register`,
/// `half_f16c::fold_pair`.)
#[inline(never)]
fn fold_lanes(mut acc: [f32; LANES], combine: impl Fn(f32, f32) -> f32) -> f32 {
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            acc[l] = combine(acc[l], acc[l + width]);
        }
    }
    acc[0]
}

simd_targets! {
    /// `Σᵢ xᵢ` with 16 partial sums.
    pub fn sum_lanes(x: &[f32]) -> f32 {
        sum(x)
    }
}

#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for l in 0..LANES {
            acc[l] += chunk[l];
        }
    }
    fold_lanes(acc, |a, b| a + b) + tail
}

simd_targets! {
    /// `Σᵢ (xᵢ - c)²` with 16 partial sums (the numerator of a variance).
    pub fn sum_squared_deviations(x: &[f32], c: f32) -> f32 {
        squared_deviations(x, c)
    }
}

#[inline(always)]
pub(crate) fn squared_deviations(x: &[f32], c: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&v| (v - c) * (v - c)).sum();
    for chunk in chunks {
        for l in 0..LANES {
            let d = chunk[l] - c;
            acc[l] += d * d;
        }
    }
    fold_lanes(acc, |a, b| a + b) + tail
}

simd_targets! {
    /// `maxᵢ xᵢ` (`-inf` for an empty slice; NaNs are ignored, as by `f32::max`).
    pub fn max_lanes(x: &[f32]) -> f32 {
        max(x)
    }
}

#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for chunk in chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(chunk[l]);
        }
    }
    fold_lanes(acc, f32::max).max(tail)
}

simd_targets! {
    /// Dot product `Σᵢ xᵢ yᵢ` of two slices of one length, with 16 partial
    /// sums; `y` may be stored in half precision (widened as it is read).
    pub fn dot_lanes<E: Element>(x: &[f32], y: &[E]) -> f32 {
        dot(x, y)
    }
}

/// `Σᵢ xᵢ yᵢ` for `y` stored as `f32`, `f16` or `bf16` (widened as it is
/// read): the same operations in the same order for every element type.
#[inline(always)]
pub(crate) fn dot<E: Element>(x: &[f32], y: &[E]) -> f32 {
    assert_eq!(x.len(), y.len(), "dot_lanes: lengths differ");
    let mut acc = [0.0f32; LANES];
    let (xc, yc) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(a, b)| a * b.to_f32())
        .sum();
    for (xs, ys) in xc.zip(yc) {
        for l in 0..LANES {
            acc[l] += xs[l] * ys[l].to_f32();
        }
    }
    fold_lanes(acc, |a, b| a + b) + tail
}

/// `eˣ` for `f32`, within 2 units in the last place of the exact value, in
/// straight-line arithmetic that vectorises (no branch, no table, no call).
///
/// The classic method (Cody & Waite; the polynomial is Cephes' `expf`):
///
/// 1. `x = k·ln 2 + r` with `k = round(x / ln 2)` an integer and
///    `|r| ≤ ln 2 / 2`; `ln 2` is split in two parts so `k·ln 2` is exact;
/// 2. `eʳ ≈ 1 + r + r²·p(r)`, `p` a degree-5 polynomial;
/// 3. `eˣ = 2ᵏ · eʳ`, with `2ᵏ` built directly from its bits (exponent field
///    `k + 127`), in two factors so that `k` may reach 128.
///
/// `k` is rounded with the "magic number" `1.5·2²³`: adding it to a float of
/// magnitude below `2²²` leaves the nearest integer in the low bits of the sum.
/// Results overflow to `inf` above `ln(f32::MAX) ≈ 88.72` and fall through the
/// subnormals to `0` below `-87.3`, as `f32::exp`'s do; `exp(-inf) = 0`
/// exactly (masked attention scores), and NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 = LN2_HI + LN2_LO, LN2_HI with 9 significant bits (k·LN2_HI is exact).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
                                     // Outside this range the result is 0 or inf anyway; inside it, |k| ≤ 150.
    let x_in = x.clamp(-104.0, 88.8);
    let shifted = x_in * LOG2_E + MAGIC;
    let kf = shifted - MAGIC; // round(x / ln 2), as a float
    let k = shifted.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    let r = x_in - kf * LN2_HI - kf * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes: 5.0000001201e-1, which rounds to 0.5 in f32
    let e_r = p * r * r + r + 1.0;
    // 2^k = 2^(k/2) · 2^(k - k/2): both factors are normal floats for |k| ≤ 150.
    let half = k >> 1;
    let two_to = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    e_r * two_to(half) * two_to(k - half)
}

/// The logistic sigmoid `σ(x) = 1 / (1 + e⁻ˣ)`, with [`exp`].
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

simd_targets! {
    /// `xᵢ ← f(xᵢ)` for every element, with `f` inlined into a loop compiled
    /// for the CPU's widest vectors (the activations, elementwise).
    pub fn map_inplace(x: &mut [f32], f: impl Fn(f32) -> f32) {
        for v in x.iter_mut() {
            *v = f(*v);
        }
    }
}

simd_targets! {
    /// `xᵢ ← eˣⁱ⁻ᵐ`, returning `Σᵢ eˣⁱ⁻ᵐ` (16 lanes): the numerators of a
    /// softmax whose maximum is `m`, and their sum.
    pub fn exp_sum(x: &mut [f32], m: f32) -> f32 {
        for v in x.iter_mut() {
            *v = exp(*v - m);
        }
        sum(x)
    }
}

simd_targets! {
    /// `xᵢ ← s·xᵢ`, returning the largest of the scaled values (`-inf` for
    /// an empty slice): attention scores scaled by `1/√d`, and their maximum.
    pub fn scale_max(x: &mut [f32], s: f32) -> f32 {
        for v in x.iter_mut() {
            *v *= s;
        }
        max(x)
    }
}

simd_targets! {
    /// `xᵢ ← s·xᵢ`.
    pub fn scale(x: &mut [f32], s: f32) {
        for v in x.iter_mut() {
            *v *= s;
        }
    }
}
