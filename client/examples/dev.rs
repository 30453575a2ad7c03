//! Calls a local `notes-server dev` with the material it wrote to `.notes-dev/`:
//!
//! ```sh
//! cargo run -p notes-server -- dev            # in one terminal
//! cargo run -p notes-client --example dev     # in another, from the repository root
//! ```

use std::sync::Arc;

use futures_util::TryStreamExt;
use notes_client::{NotesClient, TlsFiles, TokenFile};

#[tokio::main]
async fn main() -> Result<(), notes_client::Error> {
    let tls = TlsFiles::new(
        ".notes-dev/ca.pem",
        ".notes-dev/client.pem",
        ".notes-dev/client.key",
    )
    .load()?;
    let client = NotesClient::builder("https://localhost:50051", tls)
        .token_provider(Arc::new(TokenFile::new(".notes-dev/token")))
        .connect()
        .await?;

    let note = client.create("written by the dev example", None).await?;
    println!("created {} (version {})", note.note_id, note.version);
    let updated = client
        .update(&note.note_id, "updated by the dev example", note.version)
        .await?;
    println!("updated to version {}", updated.version);
    let all: Vec<_> = client.list_all(50).try_collect().await?;
    println!("{} note(s) in all", all.len());
    client.delete(&note.note_id, updated.version).await?;
    println!("deleted {}", note.note_id);
    Ok(())
}
