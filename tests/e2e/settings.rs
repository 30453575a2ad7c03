//! The naming rule and the settings reference, checked against the real
//! binaries' `--help`: every flag `--x-y` with a variable reads `NOTES_X_Y`;
//! every variable is in `notes_api::environment::VARIABLES` (which the
//! binaries use to refuse unknown `NOTES_*` names) and the other way round;
//! and `docs/settings.md` is what the binaries say. Regenerate the doc with
//! `NOTES_TEST_WRITE_SETTINGS=1 cargo nextest run settings`.

use std::{collections::BTreeSet, path::Path, process::Command};

use crate::harness::process::bin;

/// One option of one command, as its `--help` shows it.
#[derive(Debug)]
struct Setting {
    flag: String,
    variable: Option<String>,
    default: Option<String>,
    meaning: String,
}

fn help(program: &str, command: &[&str]) -> String {
    let out = Command::new(bin(program))
        .args(command)
        .arg("--help")
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success(), "{program} {command:?} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

/// The subcommands a help text lists.
fn subcommands(help: &str) -> Vec<String> {
    let Some(start) = help.find("\nCommands:\n") else {
        return vec![];
    };
    help[start + 11..]
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

fn settings(help: &str) -> Vec<Setting> {
    let Some(start) = help.find("\nOptions:\n") else {
        return vec![];
    };
    // One block of lines per option: its flag line and what follows it.
    let mut blocks: Vec<Vec<&str>> = Vec::new();
    for line in help[start + 10..].lines() {
        if line.starts_with("      --") || line.starts_with("  -") {
            blocks.push(vec![line]);
        } else if let Some(block) = blocks.last_mut() {
            block.push(line);
        }
    }
    let bracket = |text: &str, open: &str, close: char| {
        text.find(open).map(|i| {
            let rest = &text[i + open.len()..];
            rest[..rest.find(close).unwrap_or(rest.len())].to_owned()
        })
    };
    blocks
        .into_iter()
        .map(|block| {
            let text = block.join(" ");
            let flag = text
                .split_whitespace()
                .find(|w| w.starts_with("--"))
                .unwrap()
                .to_owned();
            // The flag line's own text (short help) or the first line after it.
            let first = block[0].trim();
            let inline = first
                .find("  ")
                .map(|i| first[i..].trim().to_owned())
                .unwrap_or_default();
            let meaning = std::iter::once(inline)
                .chain(block[1..].iter().map(|l| l.trim().to_owned()))
                .find(|l| !l.is_empty() && !l.starts_with('['))
                .unwrap_or_default();
            let meaning =
                meaning[..meaning.find(" [").unwrap_or(meaning.len())].replace('|', "\\|");
            Setting {
                flag,
                variable: bracket(&text, "[env: ", ']')
                    .map(|v| v.split('=').next().unwrap_or_default().to_owned()),
                default: bracket(&text, "[default: ", ']'),
                meaning,
            }
        })
        .filter(|s| s.flag != "--help" && s.flag != "--version")
        .collect()
}

/// Every command of a program, depth first, with its settings.
fn commands(program: &str) -> Vec<(String, Vec<Setting>)> {
    let mut out = Vec::new();
    let mut stack = vec![vec![]];
    while let Some(path) = stack.pop() {
        let text = help(
            program,
            &path.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        for sub in subcommands(&text).into_iter().rev() {
            let mut child = path.clone();
            child.push(sub);
            stack.push(child);
        }
        let name = std::iter::once(program.to_owned())
            .chain(path.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        out.push((name, settings(&text)));
    }
    out
}

fn reference(programs: &[(String, Vec<Setting>)]) -> String {
    let mut doc = String::from(
        "# Settings reference\n\n\
         Generated from the binaries' `--help` by `tests/e2e/settings.rs`, which fails when \
         this file and the binaries disagree (regenerate: \
         `NOTES_TEST_WRITE_SETTINGS=1 cargo nextest run settings`).\n\n\
         Every setting with a variable follows one rule: the flag `--x-y` is the variable \
         `NOTES_X_Y` (and the key `x_y` in the CLI's `--config` file). A `NOTES_*` variable \
         that no setting reads stops every notes program at start-up, naming the closest \
         valid name. Dev mode's settings are named `--dev-*` / `NOTES_DEV_*` so that a shell \
         set up for production cannot point it elsewhere. `NOTES_PASSWORD` (the CLI's `login`) \
         is read without a flag, so that a password never appears in a process list.\n",
    );
    for (command, settings) in programs {
        if settings.is_empty() {
            continue;
        }
        doc.push_str(&format!(
            "\n## `{command}`\n\n| flag | variable | default | meaning |\n|---|---|---|---|\n"
        ));
        for s in settings {
            doc.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                s.flag,
                s.variable
                    .as_deref()
                    .map_or("-".to_owned(), |v| format!("`{v}`")),
                s.default
                    .as_deref()
                    .map_or("-".to_owned(), |d| format!("`{d}`")),
                s.meaning
            ));
        }
    }
    doc
}

#[test]
fn settings_follow_one_naming_rule_and_the_reference_is_current() {
    let mut all = commands("notes-server");
    all.extend(commands("notes"));

    let mut read = BTreeSet::new();
    for (command, settings) in &all {
        for s in settings {
            if let Some(variable) = &s.variable {
                let expected = format!(
                    "NOTES_{}",
                    s.flag
                        .trim_start_matches("--")
                        .replace('-', "_")
                        .to_uppercase()
                );
                assert_eq!(variable, &expected, "{command} {}", s.flag);
                read.insert(variable.clone());
            }
        }
    }
    let listed: BTreeSet<String> = notes_api::environment::VARIABLES
        .iter()
        .map(|v| v.to_string())
        .filter(|v| v != "NOTES_PASSWORD")
        .collect();
    assert_eq!(
        read, listed,
        "notes_api::environment::VARIABLES and the binaries' flags disagree"
    );

    let doc = reference(&all);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/settings.md");
    if std::env::var_os("NOTES_TEST_WRITE_SETTINGS").is_some() {
        std::fs::write(&path, &doc).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == doc,
        "docs/settings.md is out of date with the binaries' flags; regenerate it with \
         NOTES_TEST_WRITE_SETTINGS=1 cargo nextest run settings"
    );
}

/// A misspelt variable stops both programs with the valid name, before
/// anything else happens (the CRL case: the server must not start without it).
#[test]
fn a_misspelt_variable_stops_both_programs_naming_the_valid_one() {
    for (program, code) in [("notes-server", 2), ("notes", 8)] {
        let out = Command::new(bin(program))
            .arg("--help")
            .env("NOTES_CLIENT_CRLS", "certs/out/crl.pem")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{program}: {stderr}");
        assert!(
            stderr.contains("NOTES_CLIENT_CRLS (did you mean NOTES_CLIENT_CRL?)"),
            "{program}: {stderr}"
        );
    }
}
