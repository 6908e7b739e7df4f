//! The comparison helper itself: it passes what it should, and when it fails its
//! message names the tensor, the worst element and how many failed.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use common::{assert_close, golden_dir, read_f32, Tol, EXACT, SINGLE_OP};
use ndarray::{arr0, array, ArrayD};

/// The panic message of `f`, which must panic.
fn panic_message(f: impl FnOnce()) -> String {
    let payload = catch_unwind(AssertUnwindSafe(f)).expect_err("expected a panic");
    match (
        payload.downcast_ref::<String>(),
        payload.downcast_ref::<&str>(),
    ) {
        (Some(s), _) => s.clone(),
        (None, Some(s)) => s.to_string(),
        (None, None) => panic!("panic payload is not a string"),
    }
}

#[test]
fn values_within_atol_plus_rtol_times_expected_pass() {
    let expected = array![[1.0f32, -200.0, 0.0], [1e-7, 5.0, -0.5]].into_dyn();
    // each off by just under its budget 1e-6 + 1e-5·|e|
    let got = array![[1.0f32 + 1.0e-5, -200.0 - 1.9e-3, 9e-7], [0.0, 5.0, -0.5]].into_dyn();
    assert_close("near", got.view(), expected.view(), SINGLE_OP);
}

#[test]
fn equal_infinities_of_the_same_sign_match_even_with_exact_tolerance() {
    let x = array![f32::NEG_INFINITY, 0.25, f32::INFINITY].into_dyn();
    assert_close("inf", x.view(), x.view(), EXACT);
}

#[test]
fn a_failure_names_the_tensor_the_worst_index_its_values_and_the_count() {
    let expected = array![[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]].into_dyn();
    let got = array![[1.0f32, 2.5, 3.0], [4.0, 5.0, 7.0]].into_dyn(); // [1, 2] is worst
    let tol = Tol {
        atol: 0.1,
        rtol: 0.0,
    };
    let msg = panic_message(|| assert_close("h.0.mlp", got.view(), expected.view(), tol));
    for part in [
        "h.0.mlp",
        "[2, 3]",
        "2 of 6",
        "[1, 2]",
        "expected 6.0",
        "found 7.0",
        "10.000x",
    ] {
        assert!(msg.contains(part), "{part:?} missing from:\n{msg}");
    }
}

#[test]
fn a_shape_mismatch_fails_with_both_shapes() {
    let a = ArrayD::<f32>::zeros(vec![2, 3]);
    let b = ArrayD::<f32>::zeros(vec![3, 2]);
    let msg = panic_message(|| assert_close("logits", a.view(), b.view(), SINGLE_OP));
    assert!(
        msg.contains("logits") && msg.contains("[2, 3]") && msg.contains("[3, 2]"),
        "{msg}"
    );
}

#[test]
fn nan_never_matches_not_even_nan() {
    let nan = array![0.0f32, f32::NAN].into_dyn();
    let msg = panic_message(|| assert_close("p", nan.view(), nan.view(), SINGLE_OP));
    assert!(
        msg.contains("1 of 2") && msg.contains("[1]") && msg.contains("NaN"),
        "{msg}"
    );
    let zero = array![0.0f32, 0.0].into_dyn();
    panic_message(|| assert_close("p", nan.view(), zero.view(), SINGLE_OP));
    panic_message(|| assert_close("p", zero.view(), nan.view(), SINGLE_OP));
}

#[test]
fn opposite_infinities_and_inf_against_finite_fail() {
    let neg = array![f32::NEG_INFINITY].into_dyn();
    let pos = array![f32::INFINITY].into_dyn();
    let big = array![f32::MAX].into_dyn();
    panic_message(|| assert_close("s", neg.view(), pos.view(), SINGLE_OP));
    panic_message(|| assert_close("s", pos.view(), big.view(), SINGLE_OP));
}

#[test]
fn exact_tolerance_rejects_the_smallest_difference() {
    let one = arr0(1.0f32).into_dyn();
    let next = arr0(f32::from_bits(1.0f32.to_bits() + 1)).into_dyn();
    let msg = panic_message(|| assert_close("ids", next.view(), one.view(), EXACT));
    assert!(msg.contains("1 of 1"), "{msg}");
    // with a zero budget the worst element is the one with the largest difference
    let (e, g) = (
        array![1.0f32, 2.0, 3.0].into_dyn(),
        array![1.5f32, 2.0, 5.0].into_dyn(),
    );
    let msg = panic_message(|| assert_close("ids", g.view(), e.view(), EXACT));
    assert!(
        msg.contains("2 of 3") && msg.contains("worst at [2]"),
        "{msg}"
    );
}

#[test]
fn a_missing_golden_file_says_which_file_and_what_to_run() {
    let path = golden_dir().join("blocks").join("no_such_case.out.npy");
    let msg = panic_message(|| {
        read_f32(&path);
    });
    assert!(msg.contains("no_such_case.out.npy"), "{msg}");
    assert!(msg.contains("python3 python_ref/blocks.py"), "{msg}");
}
