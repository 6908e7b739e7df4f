//! Which SIMD instruction set the crate's own loops run with, chosen once at
//! run time.
//!
//! The loops of [`fastmath`](super::fastmath) and the matrix–vector and
//! few-rows kernels of [`gemm`](super::gemm) are written once, in plain Rust,
//! and compiled several times by `simd_targets!`: for AVX-512
//! (`avx512f,bw,dq,vl` with AVX2 and FMA), for AVX2 with FMA, for AVX, and
//! portable (SSE2 on x86-64, NEON on aarch64, where NEON is part of the
//! baseline). The first call asks the CPU what it has and keeps the answer;
//! every later call is one atomic load and a jump.
//!
//! The AVX2 level also requires F16C (every CPU with AVX2 and FMA has it),
//! which the `f16` kernels of `half_f16c.rs` use at that level.
//!
//! Apart from the few-rows kernel (which fuses multiply–adds, see
//! [`gemm`](super::gemm)), no loop fuses a multiply and an add, so every
//! level gives the same bits: only the vector width changes.
//!
//! The environment variable `GPT2_NDARRAY_SIMD` (`avx512`, `avx2`, `avx`,
//! `neon`, `portable`), read on first use, or [`force_simd`] select a lower
//! level on the same machine, for tests and benchmarks; a level the CPU lacks
//! is never used. The `gemm` crate's packed GEMM (many rows) detects its own
//! kernels (AVX-512, else AVX2/FMA, else scalar; NEON on aarch64) and is not
//! affected by either.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set level of the crate's own kernels.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
pub enum Simd {
    /// Whatever the target's baseline has: SSE2 on x86-64, NEON on aarch64.
    Portable = 1,
    /// x86-64 with AVX (256-bit vectors, no FMA).
    Avx = 2,
    /// x86-64 with AVX2, FMA and F16C (`f16` ↔ `f32` conversion in
    /// hardware, which every CPU with AVX2 and FMA has: x86-64-v3).
    Avx2 = 3,
    /// x86-64 with AVX-512 (F, BW, DQ, VL) as well as AVX2 and FMA.
    Avx512 = 4,
}

impl Simd {
    /// The name `GPT2_NDARRAY_SIMD` takes (and `bench` prints).
    pub fn name(self) -> &'static str {
        match self {
            Simd::Portable if cfg!(target_arch = "aarch64") => "neon",
            Simd::Portable => "portable",
            Simd::Avx => "avx",
            Simd::Avx2 => "avx2",
            Simd::Avx512 => "avx512",
        }
    }

    /// The level called `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Simd> {
        match name.trim().to_ascii_lowercase().as_str() {
            "avx512" | "avx-512" | "x86-v4" => Some(Simd::Avx512),
            "avx2" | "x86-v3" => Some(Simd::Avx2),
            "avx" => Some(Simd::Avx),
            "portable" | "neon" | "scalar" | "sse2" => Some(Simd::Portable),
            _ => None,
        }
    }

    /// Whether this CPU has every feature this level is compiled for.
    pub fn is_available(self) -> bool {
        match self {
            Simd::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Simd::Avx => std::arch::is_x86_feature_detected!("avx"),
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => {
                Simd::Avx2.is_available()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512vl")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Whether the few-rows kernel's fused multiply–adds run in vector
    /// registers at this level (AVX2 + FMA and up, and NEON); elsewhere
    /// `f32::mul_add` would be a library call per element.
    pub fn fuses_multiply_add(self) -> bool {
        self >= Simd::Avx2 || cfg!(target_arch = "aarch64")
    }
}

impl fmt::Display for Simd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Every level this CPU runs, best first.
pub fn available() -> Vec<Simd> {
    [Simd::Avx512, Simd::Avx2, Simd::Avx, Simd::Portable]
        .into_iter()
        .filter(|s| s.is_available())
        .collect()
}

/// The level in use: 0 until the first call of [`level`]. Only ever holds a
/// level whose features the CPU was detected to have ([`set`] checks), which
/// is what makes the calls of `#[target_feature]` functions in
/// `simd_targets!` sound.
static LEVEL: AtomicU8 = AtomicU8::new(0);

/// The level the crate's kernels run with now.
#[inline]
pub fn level() -> Simd {
    match LEVEL.load(Ordering::Relaxed) {
        4 => Simd::Avx512,
        3 => Simd::Avx2,
        2 => Simd::Avx,
        1 => Simd::Portable,
        _ => init(),
    }
}

#[cold]
fn init() -> Simd {
    let best = available()[0];
    let chosen = match std::env::var("GPT2_NDARRAY_SIMD") {
        Ok(name) => match Simd::from_name(&name) {
            Some(wanted) if wanted.is_available() => wanted,
            _ => {
                eprintln!(
                    "gpt2-ndarray: GPT2_NDARRAY_SIMD={name:?} is not a level this CPU has \
                     ({}); using {best}",
                    available()
                        .iter()
                        .map(|s| s.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                best
            }
        },
        Err(_) => best,
    };
    set(chosen);
    chosen
}

fn set(level: Simd) -> bool {
    if !level.is_available() {
        return false;
    }
    LEVEL.store(level as u8, Ordering::Relaxed);
    true
}

/// Run the crate's own kernels with `level` from now on (for every thread),
/// to compare the paths on one machine. Returns `false`, and changes
/// nothing, when the CPU lacks that level. Not for concurrent use with
/// differing levels: results are right at every level, but which one a
/// running product uses is then unspecified.
#[doc(hidden)]
pub fn force_simd(level: Simd) -> bool {
    set(level)
}

/// Compile a function for each [`Simd`] level and pick the one in use at
/// every call.
///
/// The body is written once, as an `#[inline(always)]` function `portable`,
/// and called from one `#[target_feature]` wrapper per x86-64 level, so
/// that the compiler vectorises it for that level's registers. Arguments are
/// plain `name: Type` pairs (`impl Trait` types included; no patterns, no
/// generics).
macro_rules! simd_targets {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn portable($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                use $crate::kernels::simd::{level, Simd};
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,avx")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    portable($($arg),*)
                }
                #[target_feature(enable = "avx2,fma,avx")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    portable($($arg),*)
                }
                #[target_feature(enable = "avx")]
                fn avx($($arg: $ty),*) $(-> $ret)? {
                    portable($($arg),*)
                }
                match level() {
                    // SAFETY: `level()` returns `Avx512` only when the CPU was
                    // detected to have avx512f, bw, dq, vl, avx2, fma (and so
                    // avx): `Simd::is_available` is checked before the level
                    // is stored (`simd::set`), and nothing else stores it.
                    Simd::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above, `Avx2` is stored only after avx2 and
                    // fma were detected (AVX2 implies AVX).
                    Simd::Avx2 => return unsafe { avx2($($arg),*) },
                    // SAFETY: as above, `Avx` is stored only after avx was detected.
                    Simd::Avx => return unsafe { avx($($arg),*) },
                    Simd::Portable => {}
                }
            }
            portable($($arg),*)
        }
    };
    // The same for a function with one type parameter (`fn f<E: Bound>(...)`)
    // or one const parameter (`fn f<const R: usize>(...)`): each level's copy
    // is generic too, and monomorphised per parameter.
    ($(#[$attr:meta])* $vis:vis fn $name:ident<$g:ident: $bound:path>($($args:tt)*) $(-> $ret:ty)? $body:block) => {
        $crate::kernels::simd::simd_targets!(@generic [$(#[$attr])*] $vis $name [$g: $bound] $g ($($args)*) [$($ret)?] $body);
    };
    ($(#[$attr:meta])* $vis:vis fn $name:ident<const $g:ident: $t:ty>($($args:tt)*) $(-> $ret:ty)? $body:block) => {
        $crate::kernels::simd::simd_targets!(@generic [$(#[$attr])*] $vis $name [const $g: $t] $g ($($args)*) [$($ret)?] $body);
    };
    (@generic [$($attr:tt)*] $vis:vis $name:ident [$($param:tt)*] $g:ident ($($arg:ident: $ty:ty),* $(,)?) [$($ret:ty)?] $body:block) => {
        $($attr)*
        $vis fn $name<$($param)*>($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn portable<$($param)*>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                use $crate::kernels::simd::{level, Simd};
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,avx")]
                fn avx512<$($param)*>($($arg: $ty),*) $(-> $ret)? {
                    portable::<$g>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma,avx")]
                fn avx2<$($param)*>($($arg: $ty),*) $(-> $ret)? {
                    portable::<$g>($($arg),*)
                }
                #[target_feature(enable = "avx")]
                fn avx<$($param)*>($($arg: $ty),*) $(-> $ret)? {
                    portable::<$g>($($arg),*)
                }
                match level() {
                    // SAFETY: as in the first arm: `level()` returns a level
                    // only after `Simd::is_available` found its features.
                    Simd::Avx512 => return unsafe { avx512::<$g>($($arg),*) },
                    // SAFETY: as above (avx2 and fma detected).
                    Simd::Avx2 => return unsafe { avx2::<$g>($($arg),*) },
                    // SAFETY: as above (avx detected).
                    Simd::Avx => return unsafe { avx::<$g>($($arg),*) },
                    Simd::Portable => {}
                }
            }
            portable::<$g>($($arg),*)
        }
    };
}
pub(crate) use simd_targets;

/// Ask for the cache line at `p` to be brought into the L2 cache
/// (`prefetcht1` on x86-64; nothing elsewhere).
///
/// A hint: it never faults and reads nothing into the program, so `p` need
/// not point into anything (compute it with `wrapping_add` or
/// `wrapping_offset`, which are defined for any address).
#[inline(always)]
pub(crate) fn prefetch_l2<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint to the cache: it never faults, whatever
    // the address, and changes nothing the program can read.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        _mm_prefetch::<_MM_HINT_T1>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Ask for the `width` values of `x` from `start` (a row, or the piece of a
/// row a kernel reads next) to be brought into the L2 cache, a line at a time
/// ([`prefetch_l2`]). A hint: past the end of `x` (the rows after the last)
/// it fetches nothing useful and never faults.
#[inline(always)]
pub(crate) fn prefetch_row<E>(x: &[E], start: usize, width: usize) {
    let p = x.as_ptr().wrapping_add(start).cast::<u8>();
    for byte in (0..width * std::mem::size_of::<E>()).step_by(64) {
        prefetch_l2(p.wrapping_add(byte));
    }
}
