//! `notes`: the command-line client.
//!
//! In a checkout running `notes-server dev`, it needs no flags: the endpoint
//! defaults to `https://localhost:50051` and certificates and token to the
//! files under `.notes-dev/`.

use std::{io::Read, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use notes_client::{Error, NotesClient, TlsFiles, pb::Note};
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "notes",
    version,
    about = "Command-line client for the notes service"
)]
struct Cli {
    /// Service endpoint.
    #[arg(
        long,
        env = "NOTES_ENDPOINT",
        default_value = "https://localhost:50051",
        global = true
    )]
    endpoint: String,
    /// Folder of dev material, used for any of the files below not given.
    #[arg(
        long,
        env = "NOTES_DEV_DIR",
        default_value = ".notes-dev",
        global = true
    )]
    dev_dir: PathBuf,
    /// CA certificate (PEM) of the server [default: DEV_DIR/ca.pem].
    #[arg(long, env = "NOTES_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) [default: DEV_DIR/client.pem].
    #[arg(long, env = "NOTES_CLIENT_CERT", global = true)]
    cert: Option<PathBuf>,
    /// Client key (PEM) [default: DEV_DIR/client.key].
    #[arg(long, env = "NOTES_CLIENT_KEY", global = true)]
    key: Option<PathBuf>,
    /// Access token [default: the contents of --token-file].
    #[arg(long, env = "NOTES_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// File holding the access token [default: DEV_DIR/token].
    #[arg(long, env = "NOTES_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a note ('-' reads the content from standard input).
    Create {
        /// The content.
        content: String,
        /// Idempotency key: retrying with the same key creates no duplicate.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Show one note.
    Get {
        /// The note id.
        note_id: String,
    },
    /// List notes, newest first.
    List {
        /// Notes per page (server default 50, at most 100).
        #[arg(long, default_value_t = 0)]
        page_size: i32,
        /// Continue from this page token.
        #[arg(long, default_value = "")]
        page_token: String,
        /// Follow page tokens to the end.
        #[arg(long)]
        all: bool,
    },
    /// Replace a note's content ('-' reads it from standard input).
    Update {
        /// The note id.
        note_id: String,
        /// The new content.
        content: String,
        /// Only if the note is at this version (0: unconditional).
        #[arg(long, default_value_t = 0)]
        expected_version: i64,
    },
    /// Delete a note.
    Delete {
        /// The note id.
        note_id: String,
        /// Only if the note is at this version (0: unconditional).
        #[arg(long, default_value_t = 0)]
        expected_version: i64,
    },
}

/// A note as printed by `--json` (proto3 JSON field names).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonNote<'a> {
    note_id: &'a str,
    user_id: &'a str,
    content: &'a str,
    create_time: String,
    update_time: String,
    version: i64,
}

fn time(ts: &Option<prost_types::Timestamp>) -> String {
    ts.as_ref().map(ToString::to_string).unwrap_or_default()
}

fn json_note(note: &Note) -> JsonNote<'_> {
    JsonNote {
        note_id: &note.note_id,
        user_id: &note.user_id,
        content: &note.content,
        create_time: time(&note.create_time),
        update_time: time(&note.update_time),
        version: note.version,
    }
}

fn print_note(note: &Note, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json_note(note)).unwrap_or_default()
        );
    } else {
        println!(
            "{}  version {}  created {}  updated {}\n{}",
            note.note_id,
            note.version,
            time(&note.create_time),
            time(&note.update_time),
            note.content
        );
    }
}

fn summary(content: &str) -> String {
    let line = content.lines().next().unwrap_or_default();
    let mut out: String = line.chars().take(60).collect();
    if out.len() < content.len() {
        out.push('…');
    }
    out
}

/// Distinct exit codes per error kind, for scripts.
fn exit_code(err: &Error) -> u8 {
    match err {
        Error::NotFound(_) => 3,
        Error::Conflict(_) | Error::AlreadyExists(_) => 4,
        Error::InvalidArgument(_) => 5,
        Error::Unauthenticated(_) | Error::PermissionDenied(_) => 6,
        Error::Unavailable(_) | Error::Connect(_) => 7,
        Error::Config(_) => 8,
        Error::Other { .. } => 1,
    }
}

fn content_arg(content: String) -> Result<String, Error> {
    if content != "-" {
        return Ok(content);
    }
    let mut buf = String::new();
    std::io::stdin()
        .read_to_string(&mut buf)
        .map_err(|e| Error::Config(format!("reading standard input: {e}")))?;
    Ok(buf)
}

async fn run(cli: Cli) -> Result<(), Error> {
    let dev = |name: &str| cli.dev_dir.join(name);
    let tls = TlsFiles::new(
        cli.ca_cert.clone().unwrap_or_else(|| dev("ca.pem")),
        cli.cert.clone().unwrap_or_else(|| dev("client.pem")),
        cli.key.clone().unwrap_or_else(|| dev("client.key")),
    )
    .load()?;
    let token = match &cli.token {
        Some(token) => token.clone(),
        None => {
            let path = cli.token_file.clone().unwrap_or_else(|| dev("token"));
            std::fs::read_to_string(&path).map_err(|e| {
                Error::Config(format!("cannot read token file {}: {e}", path.display()))
            })?
        }
    };
    let mut client = NotesClient::builder(cli.endpoint.clone(), tls, token.trim())
        .connect()
        .await?;
    let json = cli.json;
    match cli.command {
        Command::Create {
            content,
            request_id,
        } => {
            let note = client
                .create(&content_arg(content)?, request_id.as_deref())
                .await?;
            print_note(&note, json);
        }
        Command::Get { note_id } => print_note(&client.get(&note_id).await?, json),
        Command::List {
            page_size,
            mut page_token,
            all,
        } => {
            let mut notes = Vec::new();
            loop {
                let page = client.list(page_size, &page_token).await?;
                notes.extend(page.notes);
                page_token = page.next_page_token;
                if !all || page_token.is_empty() {
                    break;
                }
            }
            if json {
                let out = serde_json::json!({
                    "notes": notes.iter().map(json_note).collect::<Vec<_>>(),
                    "nextPageToken": page_token,
                });
                println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            } else {
                for note in &notes {
                    println!(
                        "{}  v{}  {}  {}",
                        note.note_id,
                        note.version,
                        time(&note.update_time),
                        summary(&note.content)
                    );
                }
                if !page_token.is_empty() {
                    println!("more: --page-token {page_token}");
                }
            }
        }
        Command::Update {
            note_id,
            content,
            expected_version,
        } => {
            let note = client
                .update(&note_id, &content_arg(content)?, expected_version)
                .await?;
            print_note(&note, json);
        }
        Command::Delete {
            note_id,
            expected_version,
        } => {
            client.delete(&note_id, expected_version).await?;
            if json {
                println!("{{}}");
            } else {
                println!("deleted {note_id}");
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("notes: {err}");
            ExitCode::from(exit_code(&err))
        }
    }
}
