//! The `NOTES_*` environment variables, one list for every notes program.
//!
//! A setting's variable is its long flag in capitals with `NOTES_` in front:
//! `--client-crl` is `NOTES_CLIENT_CRL` (and, in a TOML file, `client_crl`).
//! A `NOTES_*` variable that no setting reads is refused at start-up with
//! the closest valid name, so a misspelt name can never silently drop a
//! setting (a CRL, say). The list is shared so that a variable meant for the
//! CLI does not stop the server in the same shell; the binaries' tests check
//! it against their flags.

use std::ffi::OsString;

/// Every `NOTES_*` variable a notes program (`notes-server`, `notes`) reads.
pub const VARIABLES: &[&str] = &[
    // notes-server, all commands
    "NOTES_LOG_FORMAT",
    // serve and check
    "NOTES_LISTEN",
    "NOTES_ADMIN_LISTEN",
    "NOTES_TLS_CERT",
    "NOTES_TLS_KEY",
    "NOTES_CLIENT_CA",
    "NOTES_CLIENT_CRL",
    "NOTES_ALLOWED_CLIENT_IDENTITIES",
    "NOTES_AUTH_CONFIG",
    "NOTES_ISSUER",
    "NOTES_JWKS_URL",
    "NOTES_JWKS_FILE",
    "NOTES_CLIENT_IDS",
    "NOTES_READ_SCOPES",
    "NOTES_WRITE_SCOPES",
    "NOTES_TOKEN_LEEWAY_SECS",
    "NOTES_AUDIT_ALLOWED",
    "NOTES_PAGE_TOKEN_KEY_FILE",
    "NOTES_STORE",
    "NOTES_OTLP",
    "NOTES_GRACE_PERIOD_SECS",
    "NOTES_TLS_RELOAD_INTERVAL_SECS",
    "NOTES_HANDSHAKE_TIMEOUT_SECS",
    "NOTES_FIRST_BYTES_TIMEOUT_SECS",
    "NOTES_KEEPALIVE_INTERVAL_SECS",
    "NOTES_KEEPALIVE_TIMEOUT_SECS",
    "NOTES_MAX_CONCURRENT_STREAMS",
    "NOTES_MAX_CONNECTIONS",
    "NOTES_MAX_CONNECTIONS_PER_IDENTITY",
    "NOTES_MAX_HANDSHAKES",
    "NOTES_MAX_HANDSHAKES_PER_IP",
    "NOTES_MAX_HEADER_LIST_BYTES",
    "NOTES_MAX_LOCAL_ERROR_RESETS",
    "NOTES_MAX_PENDING_ACCEPT_RESETS",
    "NOTES_MAX_CONNECTION_AGE_SECS",
    "NOTES_MAX_CONNECTION_AGE_GRACE_SECS",
    "NOTES_MAX_REQUESTS_IN_FLIGHT",
    "NOTES_MAX_REQUESTS_IN_FLIGHT_PER_IDENTITY",
    "NOTES_MAX_REQUESTS_IN_FLIGHT_PER_OWNER",
    "NOTES_REVOCATION_POLL_SECS",
    "NOTES_REVOCATION_MAX_STALENESS_SECS",
    "NOTES_REVOCATION_FAIL_OPEN",
    "NOTES_REQUEST_MESSAGE_TIMEOUT_SECS",
    "NOTES_RATE_LIMIT_PER_SECOND",
    "NOTES_RATE_LIMIT_BURST",
    "NOTES_MIN_DAYS_LEFT",
    // serve, check and init-table: DynamoDB
    "NOTES_TABLE",
    "NOTES_DYNAMODB_ENDPOINT",
    "NOTES_AWS_REGION",
    "NOTES_DYNAMODB_TIMEOUT_MS",
    "NOTES_DYNAMODB_ATTEMPT_TIMEOUT_MS",
    "NOTES_DYNAMODB_MAX_ATTEMPTS",
    // dev (its own names, so a production shell cannot point it elsewhere)
    "NOTES_DEV_DIR",
    "NOTES_DEV_LISTEN",
    "NOTES_DEV_TABLE",
    "NOTES_DEV_DYNAMODB_ENDPOINT",
    "NOTES_DEV_AWS_REGION",
    // certs
    "NOTES_CERTS_DIR",
    // the notes CLI
    "NOTES_CONFIG",
    "NOTES_ENDPOINT",
    "NOTES_CA_CERT",
    "NOTES_CERT",
    "NOTES_KEY",
    "NOTES_TOKEN",
    "NOTES_TOKEN_FILE",
    "NOTES_COGNITO_ENDPOINT",
    "NOTES_CLIENT_ID",
    "NOTES_USERNAME",
    "NOTES_PASSWORD",
];

/// Names earlier versions read, and the names that replaced them.
pub const RENAMED: &[(&str, &str)] = &[
    ("NOTES_CLIENT_CRLS", "NOTES_CLIENT_CRL"),
    ("NOTES_CLIENT_CERT", "NOTES_CERT"),
    ("NOTES_CLIENT_KEY", "NOTES_KEY"),
];

/// Variables under this prefix belong to the test suite, not to a program.
pub const TEST_PREFIX: &str = "NOTES_TEST_";

/// The variables of `vars` named `NOTES_*` that no notes program reads,
/// each with the closest valid name.
pub fn unknown(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Vec<(String, &'static str)> {
    let mut unknown: Vec<_> = vars
        .into_iter()
        .filter_map(|(name, _)| {
            let name = name.to_string_lossy().into_owned();
            let ours = name.starts_with("NOTES_") && !name.starts_with(TEST_PREFIX);
            (ours && !VARIABLES.contains(&name.as_str())).then(|| {
                let closest = closest(&name);
                (name, closest)
            })
        })
        .collect();
    unknown.sort();
    unknown
}

/// Refuses the environment if it has a `NOTES_*` variable no program reads;
/// the message names each and the valid name closest to it.
pub fn check(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Result<(), String> {
    let unknown = unknown(vars);
    if unknown.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = unknown
        .iter()
        .map(|(name, closest)| format!("{name} (did you mean {closest}?)"))
        .collect();
    Err(format!(
        "unknown environment variable{} {}: no notes setting reads {}; rename or unset {}",
        if unknown.len() == 1 { "" } else { "s" },
        names.join(", "),
        if unknown.len() == 1 { "it" } else { "them" },
        if unknown.len() == 1 { "it" } else { "them" },
    ))
}

/// The name that replaced `name`, or the valid name with the smallest edit
/// distance to it.
fn closest(name: &str) -> &'static str {
    if let Some((_, new)) = RENAMED.iter().find(|(old, _)| *old == name) {
        return new;
    }
    VARIABLES
        .iter()
        .min_by_key(|valid| edit_distance(name, valid))
        .copied()
        .unwrap_or("NOTES_CONFIG")
}

/// Levenshtein distance over bytes (the names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            current[j + 1] = (previous[j] + usize::from(ca != cb))
                .min(previous[j + 1] + 1)
                .min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(names: &[&str]) -> Vec<(OsString, OsString)> {
        names.iter().map(|n| (n.into(), "x".into())).collect()
    }

    #[test]
    fn a_misspelt_variable_is_refused_with_the_right_name() {
        assert_eq!(
            unknown(env(&["NOTES_CLIENT_CRLS", "PATH", "NOTES_TABLE"])),
            vec![("NOTES_CLIENT_CRLS".to_owned(), "NOTES_CLIENT_CRL")]
        );
        assert_eq!(
            unknown(env(&["NOTES_CLIENT_CERT"])),
            vec![("NOTES_CLIENT_CERT".to_owned(), "NOTES_CERT")]
        );
        let message = check(env(&["NOTES_ISUER"])).unwrap_err();
        assert!(
            message.contains("NOTES_ISUER (did you mean NOTES_ISSUER?)"),
            "{message}"
        );
    }

    #[test]
    fn known_test_and_foreign_variables_pass() {
        assert_eq!(
            check(env(&[
                "NOTES_CLIENT_CRL",
                "NOTES_TEST_GRPCURL",
                "AWS_REGION",
                "NOTESX"
            ])),
            Ok(())
        );
        let mut sorted = VARIABLES.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), VARIABLES.len(), "a variable is listed twice");
    }
}
