//! The examples behave as command-line tools: a failed run prints one line,
//! `error: <message>: caused by <cause>`, on stderr and exits with status 1,
//! with no backtrace even when `RUST_BACKTRACE=1` is set; a bad flag is
//! clap's usage error with status 2; and a run whose stderr is not a terminal
//! draws no progress bar. Two tools are also checked at work: `patch`, and
//! `generate --prompts` (each prompt's JSON line has the ids it gets alone).
//!
//! The example binaries are built for this test by cargo itself (`cargo build
//! --example ...`, same profile as the test), which finds them wherever the
//! target directory is, and costs nothing when `cargo test` has built them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const EXAMPLES: [&str; 7] = [
    "next_token",
    "generate",
    "perplexity",
    "architecture",
    "inspect",
    "patch",
    "train",
];

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The path of an example's binary, all of [`EXAMPLES`] built once per run.
fn example(name: &str) -> &'static Path {
    static BUILT: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        // This test's own binary is `<target>/<profile dir>/deps/cli_errors-<hash>`.
        let exe = std::env::current_exe().expect("the test's path");
        let profile = match exe
            .parent()
            .and_then(Path::parent)
            .and_then(Path::file_name)
        {
            Some(dir) if dir != "debug" => dir.to_string_lossy().into_owned(),
            _ => "dev".to_string(),
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .args(["build", "--quiet", "--message-format=json", "--profile"])
            .arg(&profile)
            .arg("--manifest-path")
            .arg(repo("Cargo.toml"));
        for name in EXAMPLES {
            command.args(["--example", name]);
        }
        let out = command.output().expect("cargo runs");
        assert!(
            out.status.success(),
            "cargo build of the examples failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // One JSON message per line; an example's artifact names its binary.
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["kind"][0] == "example")
            .filter_map(|m| {
                let name = m["target"]["name"].as_str()?.to_string();
                Some((name, PathBuf::from(m["executable"].as_str()?)))
            })
            .collect()
    });
    built
        .get(name)
        .unwrap_or_else(|| panic!("cargo built no example {name}: {built:?}"))
}

/// Run an example with `RUST_BACKTRACE=1` (and anyhow's own switch) set.
fn run(name: &str, args: &[&str]) -> Output {
    Command::new(example(name))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .output()
        .expect("the example runs")
}

/// The run failed with status 1 and printed exactly one line on stderr,
/// starting `error: `, and nothing on stdout; returns that line.
fn one_error_line(name: &str, args: &[&str]) -> String {
    let out = run(name, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{name} {args:?}: exit status; stderr:\n{stderr}"
    );
    assert!(out.stdout.is_empty(), "{name} {args:?}: stdout not empty");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{name} {args:?}: expected one line on stderr, got:\n{stderr}"
    );
    assert!(
        lines[0].starts_with("error: ") && stderr.ends_with('\n'),
        "{name} {args:?}: {stderr:?}"
    );
    lines[0].to_string()
}

#[test]
fn a_missing_model_directory_is_one_line_and_status_1_in_every_example_even_with_rust_backtrace() {
    let missing = Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-such-model");
    let m = missing.to_str().expect("a UTF-8 path");
    for (name, args) in [
        ("next_token", vec!["--model", m, "x"]),
        ("perplexity", vec!["--model", m, "--file", "README.md"]),
        ("architecture", vec!["--model", m]),
        ("inspect", vec!["--model", m, "x"]),
        (
            "patch",
            vec![
                "--model",
                m,
                "--clean",
                "a",
                "--corrupt",
                "b",
                "--answer",
                "c",
                "--wrong",
                "d",
            ],
        ),
    ] {
        let line = one_error_line(name, &args);
        assert_eq!(line, format!("error: model directory {m} does not exist"));
    }
}

#[test]
fn the_causes_follow_the_message_on_the_same_line() {
    let missing = Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-such-text.txt");
    let m = missing.to_str().expect("a UTF-8 path");
    let line = one_error_line("perplexity", &["--model", "golden/model", "--file", m]);
    let io = std::fs::read(&missing).expect_err("the file is missing");
    assert_eq!(line, format!("error: cannot read {m}: caused by {io}"));

    let ids = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-errors-truncated-ids.json");
    std::fs::write(&ids, "[464, 3290").expect("write the ids");
    let i = ids.to_str().expect("a UTF-8 path");
    let line = one_error_line("perplexity", &["--model", "golden/model", "--ids", i]);
    assert!(
        line.starts_with(&format!(
            "error: {i} is not a JSON list of token ids: caused by EOF while parsing a list"
        )),
        "{line}"
    );
}

#[test]
fn a_library_error_over_several_lines_is_printed_on_one() {
    // The loader lists every tensor that does not fit, one per line.
    let line = one_error_line("architecture", &["--model", "golden/bad/mismatch"]);
    assert!(
        line.starts_with("error: in golden/bad/mismatch/model.safetensors: caused by the checkpoint does not fit config.json (3 problems): - tensor h.0.attn.c_attn.weight has shape [24, 8]"),
        "{line}"
    );
    assert!(line.contains(" - missing tensor h.1.ln_2.bias"), "{line}");
}

#[test]
fn a_bad_flag_is_claps_usage_error_with_status_2() {
    let out = run("next_token", &["--no-such-flag", "x"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: unexpected argument '--no-such-flag' found"),
        "{stderr}"
    );
    assert!(stderr.contains("Usage: next_token"), "{stderr}");
}

#[test]
fn a_run_off_a_terminal_prints_its_results_and_no_progress_bar() {
    let ids = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-errors-ids.json");
    let list: Vec<String> = (0..300).map(|i| (i * 7 % 50257).to_string()).collect();
    std::fs::write(&ids, format!("[{}]", list.join(","))).expect("write the ids");
    let i = ids.to_str().expect("a UTF-8 path");
    let out = run(
        "perplexity",
        &["--model", "golden/model", "--ids", i, "--stride", "64"],
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("tokens:     299 scored"), "{stdout}");
    // stderr holds the one line saying what runs, and no bar.
    assert_eq!(
        stderr, "300 tokens, windows of 128 every 64\n",
        "a progress bar was drawn into a pipe"
    );
}

#[test]
fn train_refuses_bad_input_in_one_line_and_writes_nothing() {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join("train-cli");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let text = tmp.join("text.txt");
    std::fs::write(
        &text,
        "In the beginning God created the heaven and the earth. ".repeat(20),
    )
    .unwrap();
    let empty = tmp.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let short = tmp.join("short.txt");
    std::fs::write(&short, "In the beginning").unwrap();
    let full = tmp.join("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("keep.txt"), "x").unwrap();
    let out = tmp.join("out");
    let log = tmp.join("log.jsonl");
    let p = |p: &Path| p.to_str().expect("UTF-8").to_owned();
    let args = |data: &Path, out: &Path, changes: &[(&str, &str)]| -> Vec<String> {
        let mut flags = vec![
            ("--model", "golden/model".to_string()),
            ("--data", p(data)),
            ("--out", p(out)),
            ("--steps", "3".into()),
            ("--batch", "2".into()),
            ("--seq", "8".into()),
            ("--lr", "1e-3".into()),
            ("--warmup", "1".into()),
            ("--weight-decay", "0.1".into()),
            ("--grad-clip", "1.0".into()),
            ("--log-json", p(&log)),
        ];
        for (flag, value) in changes {
            match flags.iter_mut().find(|(f, _)| f == flag) {
                Some(entry) => entry.1 = value.to_string(),
                None => flags.push((flag, value.to_string())),
            }
        }
        flags
            .into_iter()
            .flat_map(|(f, v)| [f.to_string(), v])
            .collect()
    };
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            args(&empty, &out, &[]),
            format!("error: {} is empty", p(&empty)),
        ),
        (
            args(&short, &out, &[]),
            format!(
                "error: cannot train on {}: caused by the text has 3 tokens: too short for \
                 sequences of 8 tokens (at least 10 needed)",
                p(&short)
            ),
        ),
        (
            args(&text, &out, &[("--seq", "129")]),
            "error: --seq 129 is longer than the model's n_positions = 128".into(),
        ),
        (
            args(&text, &out, &[("--steps", "0")]),
            "error: --steps must be at least 1".into(),
        ),
        (
            args(&text, &out, &[("--batch", "0")]),
            "error: --batch must be at least 1".into(),
        ),
        (
            args(&text, &out, &[("--lr", "-1e-3")]),
            "error: the learning rate must be a finite number ≥ 0, got -0.001".into(),
        ),
        (
            args(&text, &out, &[("--warmup", "3")]),
            "error: the warm-up (3 steps) must be shorter than the run (3 steps)".into(),
        ),
        (
            args(&text, &full, &[]),
            format!(
                "error: the output directory {} exists and is not empty",
                p(&full)
            ),
        ),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let line = one_error_line("train", &args);
        assert_eq!(line, expected, "{args:?}");
        assert!(!out.exists(), "{args:?}: the output directory was written");
        assert!(!log.exists(), "{args:?}: the log was written");
        assert_eq!(std::fs::read_dir(&full).unwrap().count(), 1, "{args:?}");
    }
}

/// `patch` as the README runs it: the tables, the JSON with the five keys
/// the issue names, and both heat maps; and its two errors, one line each.
#[test]
fn patch_runs_as_documented_and_refuses_unequal_lengths_and_multi_token_answers() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-patch");
    let json = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-patch.json");
    let (j, d) = (json.to_str().expect("UTF-8"), dir.to_str().expect("UTF-8"));
    let clean = "And they came to Pharaoh king of";
    let corrupt = "And they came to Cyrus king of";
    let args = [
        "--model",
        "models/kjv-gpt2",
        "--clean",
        clean,
        "--corrupt",
        corrupt,
        "--answer",
        " Egypt",
        "--wrong",
        " Persia",
    ];
    let out = run("patch", &[&args[..], &["--json", j, "--out", d]].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("  clean    10.637"), "{stdout}");
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON")).expect("JSON");
    let keys: Vec<&String> = value.as_object().expect("an object").keys().collect();
    assert_eq!(
        keys,
        ["clean", "corrupt", "head_out", "resid_pre", "tokens"]
    );
    assert_eq!(value["resid_pre"].as_array().map(Vec::len), Some(6));
    assert_eq!(value["resid_pre"][0].as_array().map(Vec::len), Some(7));
    assert_eq!(value["head_out"][5].as_array().map(Vec::len), Some(4));
    assert_eq!(value["tokens"][4], " Pharaoh");
    for png in ["patch-resid-pre.png", "patch-head-out.png"] {
        let bytes = std::fs::read(dir.join(png)).expect("the figure");
        assert!(bytes.starts_with(b"\x89PNG"), "{png} is a PNG");
    }

    let mut longer = args.to_vec();
    longer[5] = "And they came unto Cyrus the king of";
    let line = one_error_line("patch", &longer);
    assert!(
        line.contains("the clean one has 7, the corrupted one 8"),
        "{line}"
    );
    let mut several = args.to_vec();
    several[9] = " Nebuchadnezzar";
    let line = one_error_line("patch", &several);
    assert!(
        line.starts_with("error: --wrong: caused by \" Nebuchadnezzar\" is 6 tokens, not one"),
        "{line}"
    );
}

/// `generate --prompts FILE --batch-size B --json` (issue 21): one JSON line
/// per non-empty line of the file, in the file's order, each with the ids and
/// the stop reason `generate` gives that prompt alone (greedy), with batches
/// that split the prompts unevenly and one that holds them all.
#[test]
fn generate_prompts_writes_per_prompt_json_lines_as_each_prompt_alone() {
    use gpt2_ndarray::generate::{generate, GenerateOptions};
    use gpt2_ndarray::{Gpt2, Tokenizer};
    let prompts = ["In the beginning", "And he said unto them", "The Lord is"];
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-generate-prompts.txt");
    let text = format!("{}\n\n{}\n{}\n", prompts[0], prompts[1], prompts[2]);
    std::fs::write(&file, text).expect("write the prompts");
    let dir = repo("models/kjv-gpt2");
    let (model, tokenizer) = (
        Gpt2::from_dir(&dir).expect("the bundled model"),
        Tokenizer::from_dir(&dir).expect("its tokenizer"),
    );
    let options = GenerateOptions {
        max_new_tokens: 6,
        ..GenerateOptions::default()
    };
    let alone: Vec<_> = prompts
        .iter()
        .map(|p| {
            let ids = tokenizer.encode(p).expect("encode");
            generate(&model, &tokenizer, &ids, &options).expect("generate")
        })
        .collect();
    for batch_size in ["2", "8"] {
        let args = [
            "--prompts",
            file.to_str().expect("UTF-8"),
            "--batch-size",
            batch_size,
            "--json",
            "--max-new-tokens",
            "6",
            "--model",
            "models/kjv-gpt2",
        ];
        let out = run("generate", &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "generate {args:?}: {stderr}");
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert_eq!(
            lines.len(),
            prompts.len(),
            "batch size {batch_size}: {lines:?}"
        );
        for ((line, prompt), (ids, reason)) in lines.iter().zip(prompts).zip(&alone) {
            assert_eq!(line["prompt"], *prompt, "batch size {batch_size}");
            let got: Vec<u32> = serde_json::from_value(line["ids"].clone()).expect("ids");
            assert_eq!(&got, ids, "batch size {batch_size}: {prompt:?}");
            assert_eq!(line["stop_reason"], format!("{reason:?}"), "{prompt:?}");
            assert!(line["text"].is_string(), "batch size {batch_size}: {line}");
        }
    }
}
