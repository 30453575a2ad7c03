//! A service calling the notes service with a Cognito machine token:
//!
//! ```sh
//! NOTES_ENDPOINT=https://notes.internal:50051 \
//! COGNITO_TOKEN_URL=https://my-pool.auth.eu-west-1.amazoncognito.com/oauth2/token \
//! COGNITO_CLIENT_ID=... COGNITO_CLIENT_SECRET=... \
//! cargo run -p notes-client --example machine -- ca.pem service.pem service.key
//! ```

use std::sync::Arc;

use notes_client::{ClientCredentials, Error, NotesClient, TlsFiles};

fn env(name: &str) -> Result<String, Error> {
    std::env::var(name).map_err(|_| Error::config(format!("set {name}")))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let files: Vec<String> = std::env::args().skip(1).collect();
    let [ca, cert, key] = files.as_slice() else {
        return Err(Error::config("usage: machine CA_PEM CERT_PEM KEY_PEM"));
    };
    let tokens = ClientCredentials::new(
        env("COGNITO_TOKEN_URL")?,
        env("COGNITO_CLIENT_ID")?,
        env("COGNITO_CLIENT_SECRET")?,
    )?
    .scopes(["notes/read", "notes/write"]);
    let client = NotesClient::builder(env("NOTES_ENDPOINT")?, TlsFiles::new(ca, cert, key).load()?)
        .token_provider(Arc::new(tokens))
        .connect()
        .await?;
    let note = client.create("hello from a service", None).await?;
    println!("{} owned by {}", note.note_id, note.user_id);
    Ok(())
}
