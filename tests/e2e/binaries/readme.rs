//! The README's commands, run as written.

use super::*;

/// The README's "Running for real" block, run as written from an empty
/// folder (with `check` for `serve` and the memory store): the certs
/// tool's file names, the page-token key command and the flags stay true.
#[tokio::test]
async fn the_readme_running_for_real_block_works_as_written() {
    let readme = include_str!("../../../README.md");
    let block = readme
        .split("## Running for real")
        .nth(1)
        .and_then(|section| section.split("```sh\n").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("README's Running for real has a sh block");
    assert!(block.contains("notes-server serve"), "{block}");
    // `check` with its default thresholds: what the block makes passes them.
    let script = block.replace("notes-server serve", "notes-server check");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("jwks.json"),
        serde_json::to_vec(&issuer().jwks).unwrap(),
    )
    .unwrap();
    let bin_dir = bin("notes-server").parent().unwrap().to_owned();
    let mut cmd = Command::new("bash");
    cmd.current_dir(dir.path())
        .args(["-euo", "pipefail", "-c", &script])
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("NOTES_STORE", "memory");
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("checks passed"));
}

/// The README's Rust client snippet is `client/examples/machine.rs`, which
/// the build compiles: the two must not drift.
#[test]
fn the_readme_rust_snippet_is_the_compiled_example() {
    let readme = include_str!("../../../README.md");
    let example = include_str!("../../../client/examples/machine.rs");
    let body = &example[example.find("use std::sync::Arc;").unwrap()..];
    assert!(
        readme.contains(&format!("```rust\n{body}```")),
        "README's Rust client snippet differs from client/examples/machine.rs"
    );
}

/// A `sh` block of README.md: the first after `heading` whose text contains `marker`.
fn readme_block(heading: &str, marker: &str) -> String {
    let readme = include_str!("../../../README.md");
    readme
        .split(heading)
        .nth(1)
        .expect("the heading is in README.md")
        .split("```sh\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .find(|block| block.contains(marker))
        .expect("a sh block with the marker")
        .to_owned()
}

/// The README's CLI quick start and its DynamoDB commands, run as written
/// (the built binaries for `cargo run`, the test's ports and moto's address
/// for the defaults, `check` for the long-running `serve`).
#[tokio::test]
async fn the_readmes_cli_and_dynamodb_commands_work_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = start_dev(dir.path()).await;
    let bin_dir = bin("notes").parent().unwrap().to_owned();
    let sh = |script: String| {
        let mut cmd = Command::new("bash");
        cmd.current_dir(dir.path())
            .args(["-euo", "pipefail", "-c", &script])
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    bin_dir.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env("NOTES_TABLE", format!("readme-{}", std::process::id()));
        run(cmd)
    };
    let check = |out: &Output, what: &str| {
        assert!(
            out.status.success(),
            "{what}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let quick = readme_block("## Quick start", "--bin notes").replace(
        "cargo run -p notes-client --bin notes --",
        &format!("notes --endpoint https://localhost:{port}"),
    );
    let lines: Vec<&str> = quick.lines().filter(|l| !l.trim().is_empty()).collect();
    let created = check(&sh(lines[0].to_owned()).await, lines[0]);
    let id = created.split_whitespace().next().unwrap().to_owned();
    let listed = check(&sh(lines[1].to_owned()).await, lines[1]);
    assert!(listed.contains(&id), "{listed}");
    let got = check(&sh(lines[2].replace("<note-id>", &id)).await, lines[2]);
    let got: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got["noteId"], id.as_str());

    let dynamodb = readme_block("### DynamoDB", "init-table")
        .replace("cargo run -p notes-server --", "notes-server")
        .replace("http://127.0.0.1:5000", &dynamodb_endpoint())
        .replace("notes-server serve", "notes-server check");
    let out = sh(dynamodb).await;
    assert!(check(&out, "DynamoDB block").contains("checks passed"));
}
