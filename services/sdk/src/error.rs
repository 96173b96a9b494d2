//! Errors of the SDK.

#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// The file or the environment could not be read or does not parse;
    /// names the key. Also a failed setup of the shared bootstrap
    /// (reflection, the metrics endpoint).
    #[error(transparent)]
    Runtime(#[from] mesh_runtime::RuntimeError),
    #[error("configuration key `{key}`: {reason}")]
    Config { key: String, reason: String },
    #[error("broker address {addr:?}: {reason}")]
    BrokerAddr { addr: String, reason: String },
    /// The broker refused a publish request (bad input, unknown topic).
    #[error("publish to {topic:?} refused: {code:?}: {message}")]
    Refused {
        topic: String,
        code: tonic::Code,
        message: String,
    },
    #[error(
        "publish to {topic:?} not acknowledged before the producer's timeout (broker unreachable?)"
    )]
    PublishTimeout { topic: String },
    #[error("the producer is shut down")]
    Closed,
    #[error("gRPC server: {0}")]
    Server(#[from] tonic::transport::Error),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("broker: {0}")]
    Status(#[from] tonic::Status),
    /// A background task of the service (a consumer, a reader) panicked or
    /// was cancelled.
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

pub fn config_err(key: impl Into<String>, reason: impl Into<String>) -> SdkError {
    SdkError::Config {
        key: key.into(),
        reason: reason.into(),
    }
}
