//! End-to-end tests: a real server on 127.0.0.1 with an ephemeral port,
//! reached over real TCP and mutual TLS, with RSA-signed tokens.
//!
//! One binary, one module per area; [`helpers`] holds the harness.
//!
//! The contract suites (`crud`, `isolation`, `concurrency`) run unchanged on
//! both stores: [`conformance!`] makes a `memory::` and a `dynamodb::` test
//! of each.

/// For each `async fn name(backend: Backend)`, a test per store.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        // Two worker threads: the server's tasks really run in parallel, so
        // a store that is atomic only on one thread is caught.
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::harness::Backend::Memory).await
                }
            )*
        }
        mod dynamodb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::harness::Backend::DynamoDb).await
                }
            )*
        }
    };
}

mod abuse;
mod audit;
mod binaries;
mod client;
mod cognito;
mod concurrency;
mod crud;
mod exactly_once;
mod fail_closed;
mod fairness;
mod harness;
mod isolation;
mod jwks;
mod lost_replies;
mod mtls;
mod observability;
mod outage;
mod policy;

mod public_services;
mod retries;
mod revocation;
mod robustness;
mod settings;
mod table;
mod tokens;
mod transport;
