//! Errors of the SDK.

#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {reason}")]
    Config { key: String, reason: String },
    #[error("broker address {addr:?}: {reason}")]
    BrokerAddr { addr: String, reason: String },
    /// The broker refused a publish request (bad input, unknown topic).
    #[error("publish to {topic:?} refused: {code}: {message}")]
    Refused {
        topic: String,
        code: String,
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
}

pub fn config_err(key: impl Into<String>, reason: impl Into<String>) -> SdkError {
    SdkError::Config {
        key: key.into(),
        reason: reason.into(),
    }
}
