//! Health and reflection need mutual TLS but no token: load balancers probe
//! health without tokens, and grpcurl discovers the schema through reflection.

use notes_api::pb::ListNotesRequest;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::{v1, v1alpha};

use crate::harness::{TestApp, pki};

#[tokio::test]
async fn health_answers_serving_over_mtls_without_a_token() {
    let app = TestApp::spawn().await;
    let mut health = HealthClient::new(app.channel(Some(&pki().client)).await);

    for service in ["", "notes.v1.NotesService"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap();
        assert_eq!(
            response.into_inner().status(),
            ServingStatus::Serving,
            "{service:?}"
        );
    }
}

#[tokio::test]
async fn health_without_a_client_certificate_fails() {
    let app = TestApp::spawn().await;
    let mut health = HealthClient::new(app.channel(None).await);

    let status = health
        .check(HealthCheckRequest::default())
        .await
        .expect_err("health answered a caller without a certificate");

    // The handshake refused it: health is public, but not without mTLS.
    assert!(
        crate::transport::cause_chain(&status)
            .contains("received fatal alert: CertificateRequired"),
        "{status:?}"
    );
}

#[tokio::test]
async fn reflection_v1_lists_the_services_without_a_token() {
    let app = TestApp::spawn().await;
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(
        app.channel(Some(&pki().client)).await,
    );
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };

    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();

    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"notes.v1.NotesService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
}

#[tokio::test]
async fn reflection_v1alpha_describes_the_notes_service_for_grpcurl() {
    let app = TestApp::spawn().await;
    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(
        app.channel(Some(&pki().client)).await,
    );
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "notes.v1.NotesService".into(),
            ),
        ),
    };

    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();

    let Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        response.message_response
    else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let file: prost_types::FileDescriptorProto =
        prost::Message::decode(files.file_descriptor_proto[0].as_slice()).unwrap();
    let methods: Vec<_> = file.service[0]
        .method
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    assert_eq!(file.package(), "notes.v1");
    assert_eq!(
        methods,
        [
            "CreateNote",
            "GetNote",
            "ListNotes",
            "UpdateNote",
            "DeleteNote"
        ]
    );
}

#[tokio::test]
async fn notes_methods_still_need_a_token_on_the_same_connection() {
    let app = TestApp::spawn().await;
    // One channel: the public exemption belongs to the method, not the connection.
    let channel = app.channel(Some(&pki().client)).await;
    let mut health = HealthClient::new(channel.clone());
    let mut notes = notes_api::pb::notes_service_client::NotesServiceClient::new(channel);

    health.check(HealthCheckRequest::default()).await.unwrap();
    let status = notes
        .list_notes(ListNotesRequest::default())
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::Unauthenticated);
}
