//! `notes-server`: parses configuration, builds the server
//! ([`notes_server::startup::build`]), binds its listeners and serves.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use notes_server::{
    config::{DevConfig, DynamoConfig, ServeConfig, StoreKind, StoreSettings},
    dev::{self, DevMaterial},
    startup,
    telemetry::{self, LogFormat},
    tls,
};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(name = "notes-server", version, about = "The notes.v1 gRPC service")]
struct Cli {
    /// Log format [default: json for serve, text otherwise].
    #[arg(long, env = "NOTES_LOG_FORMAT", value_enum, global = true)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run on embedded defaults: dev PKI, dev token issuer, in-memory store.
    Dev(DevConfig),
    /// Run with explicit configuration (flags or NOTES_* variables).
    Serve(Box<ServeConfig>),
    /// Check serve's settings without serving: key sets, TLS files and dates,
    /// the table; one line per check, non-zero exit on any failure.
    Check {
        /// Certificates and CRLs with fewer days left fail the check.
        #[arg(long, env = "NOTES_MIN_DAYS_LEFT", default_value_t = notes_server::check::MIN_DAYS_LEFT)]
        min_days_left: i64,
        /// The settings of `serve`.
        #[command(flatten)]
        serve: Box<ServeConfig>,
    },
    /// Create the DynamoDB table if it is missing and wait until it is ACTIVE.
    InitTable(DynamoConfig),
    /// Revoke tokens at this service: every running instance refuses them
    /// within its poll interval (2 s by default), no redeploy. One token
    /// (--jti), a sign-in's tokens (--origin-jti), or a subject's or an app
    /// client's tokens issued up to a time (--subject, --client-id).
    RevokeTokens(Box<notes_server::config::RevokeTokensArgs>),
    /// Create a CA, issue server and client certificates, revoke them.
    Certs {
        /// Folder of the PKI.
        #[arg(
            long = "certs-dir",
            env = "NOTES_CERTS_DIR",
            default_value = "certs/out"
        )]
        dir: PathBuf,
        #[command(subcommand)]
        command: notes_server::certs::CertsCommand,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    // A misspelt NOTES_* variable must never silently drop a setting.
    if let Err(message) = notes_api::environment::check(std::env::vars_os()) {
        eprintln!("notes-server: {message}");
        return ExitCode::from(2);
    }
    let cli = Cli::try_parse().unwrap_or_else(|err| exit_with_origin(err));
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The cause chain on one line; no backtrace for operators.
            eprintln!("notes-server: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints clap's error and exits; when settings conflict, says which of
/// them came from `NOTES_*` variables (a variable exported long ago is easy
/// to forget, and clap names only the flag).
fn exit_with_origin(err: clap::Error) -> ! {
    if err.kind() == clap::error::ErrorKind::ArgumentConflict {
        let text = err.to_string();
        let from_env: Vec<String> = std::env::vars_os()
            .filter_map(|(name, _)| name.into_string().ok())
            .filter_map(|name| {
                let flag = format!(
                    "--{}",
                    name.strip_prefix("NOTES_")?.to_ascii_lowercase().replace('_', "-")
                );
                (text.contains(&format!("'{flag} ")) || text.contains(&format!("'{flag}'"))).then(|| {
                    format!("note: {flag} was set by the environment variable {name}; unset it to use the other setting")
                })
            })
            .collect();
        if !from_env.is_empty() {
            eprint!("{text}");
            for note in from_env {
                eprintln!("{note}");
            }
            std::process::exit(2);
        }
    }
    err.exit()
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let format = cli.log_format.unwrap_or(match cli.command {
        Command::Serve(_) => LogFormat::Json,
        _ => LogFormat::Text,
    });
    let otlp = matches!(&cli.command, Command::Serve(config) if config.otlp);
    let _telemetry = telemetry::init(format == LogFormat::Json, otlp);
    tls::install_crypto_provider();

    let (server, listener, admin, dev) = match cli.command {
        Command::Dev(config) => {
            config.check_listen()?;
            // Bind before writing anything: a busy port leaves the files alone.
            let listener = bind(config.listen, "dev-listen").await?;
            let store = match config.store {
                StoreKind::Memory => StoreSettings::Memory,
                StoreKind::Dynamodb => StoreSettings::Dynamodb {
                    config: config.dynamodb(),
                    create_if_missing: true,
                },
            };
            let material = DevMaterial::ensure(&config.dir)?;
            let server = startup::build(dev::settings(&material, store)).await?;
            (server, listener, None, Some(material))
        }
        Command::Serve(config) => {
            let server = startup::build(config.settings()?).await?;
            let listener = bind(config.listen, "listen").await?;
            let admin = bind(config.admin_listen, "admin-listen").await?;
            (server, listener, Some(admin), None)
        }
        Command::Certs { dir, command } => {
            println!("{}", notes_server::certs::run(&dir, command)?);
            return Ok(());
        }
        Command::Check {
            min_days_left,
            serve,
        } => {
            let checks = notes_server::check::run(&serve, min_days_left).await;
            for check in &checks {
                println!("{check}");
            }
            let failed = checks.iter().filter(|c| c.outcome.is_err()).count();
            if failed > 0 {
                anyhow::bail!("{failed} of {} checks failed", checks.len());
            }
            println!("all {} checks passed", checks.len());
            return Ok(());
        }
        Command::RevokeTokens(args) => {
            use notes_server::store::NoteStore;
            let now_ns = || {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos() as u64
            };
            // Checked before anything is reached, stamped just before it is
            // written (readers look back from their own clocks).
            args.revocation(now_ns())?;
            let store = startup::dynamodb_store(&args.dynamodb).await?;
            store
                .check_table()
                .await
                .map_err(|e| anyhow::anyhow!(notes_server::error::error_chain(&e)))?;
            let revocation = args.revocation(now_ns())?;
            store
                .revoke_tokens(&revocation)
                .await
                .map_err(|e| anyhow::anyhow!(notes_server::error::error_chain(&e)))?;
            let before = match revocation.before {
                u64::MAX => String::new(),
                before => format!(" issued at or before {before} (Unix seconds)"),
            };
            println!(
                "revoked the tokens of {} {} of {}{before}; every instance refuses them from its next read of the list",
                revocation.what.kind(),
                revocation.what.value(),
                revocation.issuer
            );
            return Ok(());
        }
        Command::InitTable(config) => {
            let store = startup::init_table(&config).await?;
            println!(
                "table {:?} is ACTIVE with userId (HASH) + noteId (RANGE)",
                store.table()
            );
            return Ok(());
        }
    };
    if let Some(material) = dev {
        print_dev_instructions(&material, listener.local_addr()?);
    }
    server.serve(listener, admin, shutdown_signal()).await?;
    Ok(())
}

/// Binds the address of the setting `flag`; a failure names the setting,
/// so a port the user never chose (the admin listener's default, say) is
/// not a mystery.
async fn bind(addr: SocketAddr, flag: &'static str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!(
            "binding {addr} ({}); choose another address with it",
            notes_server::config::setting(flag)
        )
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGTERM; only Ctrl-C stops the server");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}

fn print_dev_instructions(material: &DevMaterial, addr: SocketAddr) {
    let d = material.dir.display();
    let port = addr.port();
    // The CLI's flags that reach this server, when not its defaults.
    let mut reach = String::new();
    if port != 50051 || !addr.ip().is_loopback() {
        let host = if addr.ip().is_loopback() {
            "localhost".to_owned()
        } else {
            addr.ip().to_string()
        };
        reach.push_str(&format!(" --endpoint https://{host}:{port}"));
    }
    if material.dir != std::path::Path::new(".notes-dev") {
        reach.push_str(&format!(" --dev-dir {d}"));
    }
    println!(
        "\nnotes-server dev: listening on {addr} (mutual TLS)\n\
         dev material: {d}/ (CA, server and client certificates, signing key, token)\n\
         \n\
         Try the CLI (these commands reach this server):\n\
         \x20 cargo run -p notes-client --bin notes --{reach} create 'my first note'\n\
         \x20 cargo run -p notes-client --bin notes --{reach} list\n\
         \n\
         Or grpcurl (reflection is on):\n\
         \x20 grpcurl -cacert {d}/ca.pem -cert {d}/client.pem -key {d}/client.key \\\n\
         \x20   -H \"authorization: Bearer $(cat {d}/token)\" \\\n\
         \x20   -d '{{\"content\":\"hello\"}}' localhost:{port} notes.v1.NotesService/CreateNote\n\
         \x20 grpcurl -cacert {d}/ca.pem -cert {d}/client.pem -key {d}/client.key \\\n\
         \x20   -H \"authorization: Bearer $(cat {d}/token)\" localhost:{port} notes.v1.NotesService/ListNotes\n\
         \n\
         The token in {d}/token is valid for 12 hours and re-issued on every start. Ctrl-C stops the server.\n"
    );
}
