//! The audit trail: one event per decision with its fields and never the
//! token, what `--audit-allowed` writes, and reads counted, not written.

use notes_api::pb::{CreateNoteRequest, DeleteNoteRequest, GetNoteRequest, ListNotesRequest};

use crate::harness::{LogSink, TestApp, token_for, with_other_signature, with_token};

#[tokio::test]
async fn every_decision_writes_one_audit_event_with_its_fields_and_never_the_token() {
    let logs = LogSink::default();
    logs.install_server_telemetry();
    let app = TestApp::spawn().await;
    let token = token_for("alice");
    let mut raw = app.raw().await;

    raw.list_notes(with_token(ListNotesRequest::default(), &token))
        .await
        .unwrap();
    let forged = with_other_signature(&token);
    raw.get_note(with_token(
        GetNoteRequest {
            note_id: "x".into(),
        },
        &forged,
    ))
    .await
    .unwrap_err();

    let text = logs.text();
    let audit: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("notes::audit"))
        .collect();
    assert_eq!(audit.len(), 2, "{text}");
    let (allow, deny) = (audit[0], audit[1]);
    for field in [
        "method=/notes.v1.NotesService/ListNotes",
        "subject=alice",
        "kind=User",
        "peer=spiffe://notes.test/billing",
        "decision=\"allow\"",
        "reason=\"ok\"",
    ] {
        assert!(allow.contains(field), "{field} not in {allow}");
    }
    for field in [
        "method=/notes.v1.NotesService/GetNote",
        "peer=spiffe://notes.test/billing",
        "decision=\"deny\"",
        "reason=\"bad_signature\"",
    ] {
        assert!(deny.contains(field), "{field} not in {deny}");
    }
    // Neither the token nor its signature is ever written.
    let signature = token.rsplit('.').next().unwrap();
    assert!(!text.contains(signature), "a token reached the log");
}

/// `--audit-allowed false`: allowed calls write no audit event, refusals
/// still do.
#[tokio::test]
async fn with_allowed_calls_unaudited_only_refusals_are_audited() {
    let logs = LogSink::default();
    logs.install_server_telemetry();
    let app = TestApp::builder()
        .settings(|s, _| s.audit_allowed = notes_server::auth::AuditAllowed::None)
        .spawn()
        .await;
    let token = token_for("alice");
    let mut raw = app.raw().await;
    raw.list_notes(with_token(ListNotesRequest::default(), &token))
        .await
        .unwrap();
    raw.list_notes(with_token(
        ListNotesRequest::default(),
        &with_other_signature(&token),
    ))
    .await
    .unwrap_err();

    let text = logs.text();
    let audit: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("notes::audit"))
        .collect();
    assert_eq!(audit.len(), 1, "{text}");
    assert!(audit[0].contains("decision=\"deny\""), "{text}");
}

/// The default, `--audit-allowed changes`: every change, and each token's
/// first allowed read on each connection, are audited; further reads with
/// that token on that connection are counted, not written. A refused call
/// does not count as a token's first.
#[tokio::test]
async fn by_default_repeated_reads_with_one_token_on_one_connection_are_counted_not_audited() {
    let logs = LogSink::default();
    logs.install_server_telemetry();
    let app = TestApp::spawn().await;
    let token = token_for("alice");
    let mut raw = app.raw().await;
    for _ in 0..3 {
        raw.list_notes(with_token(ListNotesRequest::default(), &token))
            .await
            .unwrap();
    }
    let note = raw
        .create_note(with_token(
            CreateNoteRequest {
                content: "audited".into(),
                request_id: String::new(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    raw.get_note(with_token(
        GetNoteRequest {
            note_id: note.note_id.clone(),
        },
        &token,
    ))
    .await
    .unwrap();
    raw.delete_note(with_token(
        DeleteNoteRequest {
            note_id: note.note_id,
            expected_version: 0,
            request_id: String::new(),
        },
        &token,
    ))
    .await
    .unwrap();
    // Another token of the same subject (its own jti) is a first read again.
    raw.get_note(with_token(
        GetNoteRequest {
            note_id: "00000000-0000-4000-8000-000000000000".into(),
        },
        &token_for("alice"),
    ))
    .await
    .unwrap_err();
    // A token whose first call is refused: its first allowed read is audited.
    let mut read_only = crate::harness::tokens::claims("alice");
    read_only["scope"] = crate::harness::tokens::READ.into();
    let read_only = crate::harness::tokens::sign(&read_only);
    let status = raw
        .create_note(with_token(
            CreateNoteRequest {
                content: "refused".into(),
                request_id: String::new(),
            },
            &read_only,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    raw.list_notes(with_token(ListNotesRequest::default(), &read_only))
        .await
        .unwrap();
    // The first token over another connection (a replay elsewhere) is
    // audited again.
    app.raw()
        .await
        .list_notes(with_token(ListNotesRequest::default(), &token))
        .await
        .unwrap();

    let text = logs.text();
    let audit: Vec<(&str, &str)> = text
        .lines()
        .filter(|l| l.contains("notes::audit"))
        .map(|l| {
            let method = l
                .split("method=/notes.v1.NotesService/")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .unwrap_or(l);
            let decision = if l.contains("decision=\"allow\"") {
                "allow"
            } else {
                "deny"
            };
            (method, decision)
        })
        .collect();
    assert_eq!(
        audit,
        [
            ("ListNotes", "allow"),
            ("CreateNote", "allow"),
            ("DeleteNote", "allow"),
            ("GetNote", "allow"),
            ("CreateNote", "deny"),
            ("ListNotes", "allow"),
            ("ListNotes", "allow"),
        ],
        "{text}"
    );
}
