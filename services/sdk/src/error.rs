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
    /// A `[tls]` file or the token file cannot be used, or the broker's
    /// URL does not fit the TLS settings; names the key.
    #[error(transparent)]
    Tls(#[from] mesh_runtime::tls::TlsError),
    /// The broker could not be reached or the TLS handshake failed; the
    /// reason carries the whole cause (an unknown issuer, a refused
    /// connection).
    #[error("cannot connect to the broker at {url}: {reason}")]
    Connect { url: String, reason: String },
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
    /// A read model ([`crate::view::View`]) did not reach `target` (or
    /// could not learn the topic's head, `None`) in time: the broker is
    /// away or the view is far behind. A handler failing with it is
    /// retried later.
    #[error(
        "the read model of {topic:?} is at offset {position}, not at {} after {waited:?} (broker unreachable?)",
        target.map_or("the topic's head".to_string(), |t| t.to_string())
    )]
    Behind {
        topic: String,
        position: u64,
        target: Option<u64>,
        waited: std::time::Duration,
    },
    /// The read model of `topic` no longer follows it (shutdown).
    #[error("the read model of {topic:?} stopped")]
    ViewStopped { topic: String },
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
