//! The one mapping of AWS SDK failures into [`StoreError`]: transient
//! conditions (throttling, timeouts, connection failures) are
//! [`StoreError::Unavailable`], misconfiguration (no table, denied access) is
//! [`StoreError::Internal`] with a message naming the table.

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};

use crate::store::StoreError;

/// DynamoDB error codes that a later attempt may not meet.
const TRANSIENT_CODES: [&str; 7] = [
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "ThrottlingException",
    "InternalServerError",
    "ServiceUnavailable",
    "TransactionConflictException",
    "TransactionInProgressException",
];

/// Error codes of credentials or permissions that do not fit the table.
const ACCESS_DENIED_CODES: [&str; 5] = [
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "ExpiredTokenException",
    "MissingAuthenticationTokenException",
];

/// Awaits one DynamoDB call (`operation` as IAM and the API name it) and
/// records it: outcome (ok, condition_failed, throttled, error) and latency
/// (retries included) in the process's metrics.
pub(super) async fn observed<T, E, R>(
    operation: &'static str,
    call: impl std::future::Future<Output = Result<T, SdkError<E, R>>>,
) -> Result<T, SdkError<E, R>>
where
    E: ProvideErrorMetadata,
{
    use tracing::Instrument;
    let started = std::time::Instant::now();
    let span = crate::telemetry::call::in_call(|| {
        tracing::info_span!(
            "dynamodb",
            otel.name = operation,
            otel.kind = "client",
            db.system = "dynamodb",
            db.operation = operation,
        )
    });
    let result = call.instrument(span).await;
    let metrics = crate::metrics::metrics();
    let outcome = match &result {
        Ok(_) => "ok",
        Err(err) => match err.code() {
            Some("ConditionalCheckFailedException" | "TransactionCanceledException") => {
                "condition_failed"
            }
            Some(code) if THROTTLING_CODES.contains(&code) => {
                metrics
                    .dynamodb_throttles
                    .with_label_values(&[operation])
                    .inc();
                "throttled"
            }
            _ => "error",
        },
    };
    metrics
        .dynamodb_requests
        .with_label_values(&[operation, outcome])
        .inc();
    metrics
        .dynamodb_seconds
        .with_label_values(&[operation])
        .observe(started.elapsed().as_secs_f64());
    result
}

/// Whether `code` is one of DynamoDB's throttling answers.
pub(super) fn is_throttling(code: &str) -> bool {
    THROTTLING_CODES.contains(&code)
}

/// DynamoDB's throttling error codes.
const THROTTLING_CODES: [&str; 3] = [
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "ThrottlingException",
];

/// Maps an SDK failure that is not an expected condition of the operation.
pub(super) fn map_sdk_error<E>(
    err: SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
    table: &str,
) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let code = err.code().map(str::to_owned);
    let failed = |err| {
        StoreError::Internal(
            format!("DynamoDB request on {table:?} failed"),
            Some(Box::new(err)),
        )
    };
    match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            StoreError::Unavailable(Box::new(err))
        }
        SdkError::ServiceError(_) => match code.as_deref() {
            Some(code) if TRANSIENT_CODES.contains(&code) => StoreError::Unavailable(Box::new(err)),
            Some("ResourceNotFoundException") => StoreError::Internal(
                format!("DynamoDB table {table:?} does not exist"),
                Some(Box::new(err)),
            ),
            Some(code) if ACCESS_DENIED_CODES.contains(&code) => StoreError::Internal(
                format!("access to DynamoDB table {table:?} was denied"),
                Some(Box::new(err)),
            ),
            _ => failed(err),
        },
        _ => failed(err),
    }
}
