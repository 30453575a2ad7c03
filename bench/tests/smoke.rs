//! Keeps the benchmark from rotting: each mode runs for about a second
//! (debug build, tiny counts). Nothing here asserts a speed.

use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_notes-bench"))
        .args(args)
        .output()
        .expect("notes-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // 0: every target held; 2: a target missed (a debug build on a busy
    // machine); anything else is a failure of the benchmark itself.
    assert!(
        matches!(output.status.code(), Some(0 | 2)),
        "{args:?}: {:?}\n{stdout}\n{stderr}",
        output.status
    );
    assert!(!stdout.contains("calls failed, first:"), "{stdout}");
    output
}

#[test]
fn compare_prints_a_row_per_scenario() {
    let output = bench(&[
        "compare",
        "--seconds",
        "0.5",
        "--warmup-seconds",
        "0.1",
        "--tokens",
        "20",
        "--in-flight",
        "4",
        "--connections",
        "1",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    for row in [
        "| GetNote, one token |",
        "| GetNote, a new token per call |",
        "| ListNotes, 20 notes |",
        "| CreateNote |",
        "| new connection per GetNote |",
    ] {
        assert!(stdout.contains(row), "no {row} in\n{stdout}");
    }
}

#[test]
fn soak_samples_memory() {
    let output = bench(&[
        "soak",
        "--seconds",
        "1",
        "--sample-seconds",
        "0.5",
        "--tokens",
        "20",
        "--in-flight",
        "4",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("RSS at the end / after the first sample"),
        "{stdout}"
    );
}

/// Against moto (the test command exports its endpoint): exactly one
/// DynamoDB request per RPC, or the run exits 2 and this fails.
#[test]
fn dynamodb_mode_counts_one_request_per_rpc() {
    let Ok(endpoint) = std::env::var("NOTES_TEST_DYNAMODB_ENDPOINT") else {
        eprintln!("NOTES_TEST_DYNAMODB_ENDPOINT is not set; skipped (scripts/test sets it)");
        return;
    };
    let table = format!("bench-smoke-{}", std::process::id());
    let output = Command::new(env!("CARGO_BIN_EXE_notes-bench"))
        .args(["dynamodb", "--calls", "3", "--table", &table])
        .args([
            "--dynamodb-endpoint",
            &endpoint,
            "--aws-region",
            "us-east-1",
        ])
        .output()
        .expect("notes-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("every RPC made one DynamoDB request"),
        "{stdout}"
    );
}
