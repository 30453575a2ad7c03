//! DynamoDB going away mid-run: calls answer UNAVAILABLE (from the server's
//! own bounded timeouts and retries, not the client's deadline), the server
//! stays up, serves again once DynamoDB is back, and every acknowledged
//! create is still there.

use std::time::Duration;

use notes_api::pb::ListNotesRequest;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::harness::{
    Backend, Proxy, TestApp, create_request as create, dynamodb_endpoint, pki, token_for,
    with_token,
};

#[tokio::test]
async fn a_dynamodb_outage_answers_unavailable_and_the_server_recovers_with_no_acknowledged_note_lost()
 {
    let proxy = Proxy::start(&dynamodb_endpoint()).await;
    let app = TestApp::builder()
        .store(Backend::DynamoDbAt(proxy.endpoint.clone()))
        .spawn()
        .await;
    let token = token_for("alice");
    let mut raw = app.raw().await;
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let note = raw
            .create_note(with_token(create(&format!("before {i}")), &token))
            .await
            .unwrap();
        acknowledged.push(note.into_inner().note_id);
    }

    proxy.set_up(false);
    for i in 0..3 {
        let status = raw
            .create_note(with_token(create(&format!("during {i}")), &token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("note store is unavailable"),
            "{status:?}"
        );
    }
    let status = raw
        .list_notes(with_token(ListNotesRequest::default(), &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let mut health = HealthClient::new(app.channel(Some(&pki().client)).await);
    let serving = health
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(serving.status(), ServingStatus::Serving);

    proxy.set_up(true);
    let mut recovered = None;
    for _ in 0..50 {
        match raw.create_note(with_token(create("after"), &token)).await {
            Ok(note) => {
                recovered = Some(note.into_inner().note_id);
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    acknowledged.push(recovered.expect("the server did not recover after DynamoDB came back"));

    let listed: Vec<_> = raw
        .list_notes(with_token(ListNotesRequest::default(), &token))
        .await
        .unwrap()
        .into_inner()
        .notes
        .into_iter()
        .map(|n| n.note_id)
        .collect();
    for id in &acknowledged {
        assert!(listed.contains(id), "acknowledged note {id} is missing");
    }
}
