//! The table: TTL on the idempotency records, and what a table that
//! disappears at run time answers.

use std::{sync::Arc, time::Duration};

use notes_api::pb::GetNoteRequest;
use notes_server::{startup, store::DynamoStore, store::NoteStore};

use crate::harness::{TestApp, dynamodb_config, dynamodb_endpoint, token_for, with_token};

#[tokio::test]
async fn init_table_enables_ttl_on_the_idempotency_records_attribute() {
    let config = dynamodb_config(dynamodb_endpoint());
    let store = startup::init_table(&config).await.unwrap();
    let ttl = store
        .client()
        .describe_time_to_live()
        .table_name(store.table())
        .send()
        .await
        .unwrap();
    let description = ttl.time_to_live_description().unwrap();
    assert_eq!(description.attribute_name(), Some("expiresAt"));
    assert_eq!(
        description.time_to_live_status(),
        Some(&aws_sdk_dynamodb::types::TimeToLiveStatus::Enabled)
    );
}

#[tokio::test]
async fn a_table_deleted_at_run_time_answers_internal_not_a_retryable_code() {
    let (logs, _scope) = crate::harness::LogSink::capture("notes_server=error");
    let config = dynamodb_config(dynamodb_endpoint());
    let store: DynamoStore = startup::init_table(&config).await.unwrap();
    let client = store.client().clone();
    let table = store.table().to_owned();
    let app = TestApp::builder()
        .store_impl(Arc::new(store) as Arc<dyn NoteStore>)
        .spawn()
        .await;
    let notes = app.client_as("alice").await;
    let note = notes.create("here", None).await.unwrap();

    client
        .delete_table()
        .table_name(&table)
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = app
        .raw()
        .await
        .get_note(with_token(
            GetNoteRequest {
                note_id: note.note_id.clone(),
            },
            &token_for("alice"),
        ))
        .await
        .unwrap_err();

    // A missing table is a deployment fault: INTERNAL (clients do not retry
    // it), with no AWS detail in the message.
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    assert!(!status.message().contains(&table), "{status:?}");
    // The operator's log says what is wrong.
    let text = logs.text();
    assert!(
        text.contains(&format!("DynamoDB table \"{table}\" does not exist")),
        "{text}"
    );
}
