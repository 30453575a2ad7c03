//! `notes`: the command-line client.
//!
//! In a checkout running `notes-server dev`, it needs no flags: the endpoint
//! defaults to `https://localhost:50051` and certificates and token to the
//! files under `.notes-dev/`.

use std::{
    io::{Read, Write},
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use clap::{Parser, Subcommand};
use futures_util::TryStreamExt;
use notes_client::{
    Error, NotesClient, StaticToken, TlsFiles, TokenFile, TokenProvider, UserSignIn, pb::Note,
};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(
    name = "notes",
    version,
    about = "Command-line client for the notes service"
)]
struct Cli {
    /// Configuration file (TOML; keys as the long flags with '_' for '-';
    /// relative paths in it are relative to the file).
    #[arg(long, env = "NOTES_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Service endpoint [default: https://localhost:50051].
    #[arg(long, env = "NOTES_ENDPOINT", global = true)]
    endpoint: Option<String>,
    /// Folder of dev material, used for any of the files below not given.
    #[arg(long, env = "NOTES_DEV_DIR", global = true)]
    dev_dir: Option<PathBuf>,
    /// CA certificate (PEM) of the server [default: DEV_DIR/ca.pem].
    #[arg(long, env = "NOTES_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) [default: DEV_DIR/client.pem].
    #[arg(long, env = "NOTES_CERT", global = true)]
    cert: Option<PathBuf>,
    /// Client key (PEM) [default: DEV_DIR/client.key].
    #[arg(long, env = "NOTES_KEY", global = true)]
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

/// The `--config` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    endpoint: Option<String>,
    dev_dir: Option<PathBuf>,
    ca_cert: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    token_file: Option<PathBuf>,
    cognito_endpoint: Option<String>,
    client_id: Option<String>,
    username: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Create a note ('-' reads the content from standard input).
    Create {
        /// The content.
        content: String,
        /// Idempotency key: retrying with the same key creates no duplicate [default: a new UUID].
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
    /// Sign in to a Cognito user pool (USER_PASSWORD_AUTH) and save the access
    /// token to the token file. The password comes from NOTES_PASSWORD or standard input.
    Login {
        /// Cognito API endpoint, e.g. https://cognito-idp.eu-west-1.amazonaws.com/.
        #[arg(long, env = "NOTES_COGNITO_ENDPOINT")]
        cognito_endpoint: Option<String>,
        /// The app client id.
        #[arg(long, env = "NOTES_CLIENT_ID")]
        client_id: Option<String>,
        /// The user name.
        #[arg(long, env = "NOTES_USERNAME")]
        username: Option<String>,
    },
    /// Print the current token's header and claims, decoded but NOT verified (for debugging).
    Token,
}

/// Settings after flags, environment and the config file are merged.
struct Settings {
    endpoint: String,
    ca_cert: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    token: Option<String>,
    token_file: PathBuf,
    file: ConfigFile,
}

fn settings(cli: &Cli) -> Result<Settings, Error> {
    let file = match &cli.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::config_from(format!("cannot read config {}", path.display()), e)
            })?;
            let mut file: ConfigFile = toml::from_str(&text)
                .map_err(|e| Error::config_from(format!("config {}", path.display()), e))?;
            // Paths in the file are relative to the file, not to wherever
            // the CLI happens to run.
            let base = path.parent().unwrap_or(std::path::Path::new(""));
            for p in [
                &mut file.dev_dir,
                &mut file.ca_cert,
                &mut file.cert,
                &mut file.key,
                &mut file.token_file,
            ]
            .into_iter()
            .flatten()
            {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
            file
        }
        None => ConfigFile::default(),
    };
    let dev_dir = cli
        .dev_dir
        .clone()
        .or_else(|| file.dev_dir.clone())
        .unwrap_or_else(|| PathBuf::from(".notes-dev"));
    let mut from_dev_dir = false;
    let mut pick = |flag: &Option<PathBuf>, from_file: &Option<PathBuf>, dev: &str| {
        flag.clone()
            .or_else(|| from_file.clone())
            .unwrap_or_else(|| {
                from_dev_dir = true;
                dev_dir.join(dev)
            })
    };
    let (ca_cert, cert, key) = (
        pick(&cli.ca_cert, &file.ca_cert, "ca.pem"),
        pick(&cli.cert, &file.cert, "client.pem"),
        pick(&cli.key, &file.key, "client.key"),
    );
    let token_file = if cli.token.is_some() {
        // A token on the command line or in NOTES_TOKEN needs no file.
        cli.token_file
            .clone()
            .or_else(|| file.token_file.clone())
            .unwrap_or_else(|| dev_dir.join("token"))
    } else {
        pick(&cli.token_file, &file.token_file, "token")
    };
    let connects = !matches!(cli.command, Command::Login { .. } | Command::Token);
    if from_dev_dir && !dev_dir.is_dir() && connects {
        let here = std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|_| "the current folder".into());
        return Err(Error::config(format!(
            "no dev material: looked for the folder {} (from {here}). Run `notes-server dev` \
             in that folder, pass the --dev-dir its banner names, or give --ca-cert, --cert, \
             --key and --token-file (or a --config file naming them)",
            dev_dir.display()
        )));
    }
    Ok(Settings {
        endpoint: cli
            .endpoint
            .clone()
            .or_else(|| file.endpoint.clone())
            .unwrap_or_else(|| "https://localhost:50051".into()),
        ca_cert,
        cert,
        key,
        token: cli.token.clone(),
        token_file,
        file,
    })
}

/// `println!` that ignores a closed stdout (`notes list | head`) instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
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
        out!(
            "{}",
            serde_json::to_string_pretty(&json_note(note)).unwrap_or_default()
        );
    } else {
        out!(
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
        Error::Unauthenticated(_)
        | Error::PermissionDenied(_)
        | Error::CertificateRefused { .. }
        | Error::Token { .. } => 6,
        Error::Unavailable(_) | Error::Connect { .. } => 7,
        Error::Config { .. } => 8,
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
        .map_err(|e| Error::config_from("reading standard input", e))?;
    Ok(buf)
}

async fn run(cli: Cli) -> Result<(), Error> {
    let settings = settings(&cli)?;
    match &cli.command {
        Command::Login {
            cognito_endpoint,
            client_id,
            username,
        } => {
            let dev_token = cli
                .dev_dir
                .clone()
                .or_else(|| settings.file.dev_dir.clone())
                .unwrap_or_else(|| PathBuf::from(".notes-dev"))
                .join("token");
            let named = cli.token_file.is_some() || settings.file.token_file.is_some();
            if !named || settings.token_file == dev_token {
                return Err(Error::config(format!(
                    "login would overwrite the dev token {}: pass --token-file FILE (or \
                     token_file in the --config file) here and to later commands",
                    settings.token_file.display()
                )));
            }
            return login(&settings, cognito_endpoint, client_id, username).await;
        }
        Command::Token => return print_token(&settings).await,
        _ => {}
    }
    let tls = TlsFiles::new(&settings.ca_cert, &settings.cert, &settings.key).load()?;
    let tokens: Arc<dyn TokenProvider> = match &settings.token {
        Some(token) => Arc::new(StaticToken::new(token.clone())),
        None => Arc::new(TokenFile::new(&settings.token_file)),
    };
    let client = NotesClient::builder(settings.endpoint.clone(), tls)
        .token_provider(tokens)
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
            let notes = if all {
                let notes = client
                    .list_all_from(page_size, &page_token)
                    .try_collect::<Vec<_>>()
                    .await?;
                page_token.clear();
                notes
            } else {
                let page = client.list(page_size, &page_token).await?;
                page_token = page.next_page_token;
                page.notes
            };
            if json {
                let out = serde_json::json!({
                    "notes": notes.iter().map(json_note).collect::<Vec<_>>(),
                    "nextPageToken": page_token,
                });
                out!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            } else {
                for note in &notes {
                    out!(
                        "{}  v{}  {}  {}",
                        note.note_id,
                        note.version,
                        time(&note.update_time),
                        summary(&note.content)
                    );
                }
                if !page_token.is_empty() {
                    out!("more: --page-token {page_token}");
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
                out!("{{}}");
            } else {
                out!("deleted {note_id}");
            }
        }
        // Answered before connecting, above.
        Command::Login { .. } | Command::Token => {}
    }
    Ok(())
}

async fn login(
    settings: &Settings,
    cognito_endpoint: &Option<String>,
    client_id: &Option<String>,
    username: &Option<String>,
) -> Result<(), Error> {
    let need = |flag: &Option<String>, file: &Option<String>, name: &str| {
        flag.clone().or_else(|| file.clone()).ok_or_else(|| {
            Error::config(format!(
                "login needs --{name} (or {name} in the config file)"
            ))
        })
    };
    let endpoint = need(
        cognito_endpoint,
        &settings.file.cognito_endpoint,
        "cognito-endpoint",
    )?;
    let client_id = need(client_id, &settings.file.client_id, "client-id")?;
    let username = need(username, &settings.file.username, "username")?;
    // Never from an argument (it would show in `ps` and shell history); at a
    // terminal, read without echo.
    let password = match std::env::var("NOTES_PASSWORD") {
        Ok(password) => password,
        Err(_) if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
            rpassword::prompt_password(format!("password for {username}: "))
                .map_err(|e| Error::config_from("reading the password", e))?
        }
        Err(_) => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| Error::config_from("reading the password", e))?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    let tokens = UserSignIn::new(endpoint, client_id, &username, password)?
        .sign_in()
        .await?;
    let path = &settings.token_file;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::config_from(format!("creating {}", dir.display()), e))?;
    }
    notes_api::files::write_atomically(path, tokens.access_token.as_bytes(), 0o600)
        .map_err(|e| Error::config_from(format!("writing {}", path.display()), e))?;
    out!(
        "signed in as {username}; access token saved to {} (valid {} s)",
        path.display(),
        tokens.expires_in
    );
    Ok(())
}

/// Decodes one base64url JSON segment of a JWT.
fn segment(part: Option<&str>) -> Result<serde_json::Value, Error> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.unwrap_or_default())
        .map_err(|_| Error::token("the token is not a JWT (base64)"))?;
    serde_json::from_slice(&bytes).map_err(|_| Error::token("the token is not a JWT (JSON)"))
}

async fn print_token(settings: &Settings) -> Result<(), Error> {
    let token = match &settings.token {
        Some(token) => token.clone(),
        None => TokenFile::new(&settings.token_file).token().await?,
    };
    let mut parts = token.split('.');
    let header = segment(parts.next())?;
    let claims = segment(parts.next())?;
    let out = serde_json::json!({ "verified": false, "header": header, "claims": claims });
    out!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    // A misspelt NOTES_* variable must never silently drop a setting.
    if let Err(message) = notes_api::environment::check(std::env::vars_os()) {
        eprintln!("notes: {message}");
        return ExitCode::from(8);
    }
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("notes: {}", err.chain());
            ExitCode::from(exit_code(&err))
        }
    }
}
