//! Errors of the broker, and the one place they become gRPC statuses.

use mesh_log::LogError;
use tonic::{Code, Status};

use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Log(#[from] LogError),

    #[error(transparent)]
    Config(#[from] ConfigError),

    /// A request field is missing or malformed; names the field.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },

    /// The caller did not prove who it is (no or a wrong certificate or
    /// token); never repeats a token.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),

    /// The access-control list does not grant the call.
    #[error("permission denied: principal {principal:?} may not {verb} on topic {topic:?}{}", group_phrase(verb, group.as_deref()))]
    PermissionDenied {
        principal: String,
        /// An ACL verb (`Verb::as_str`), or "describe".
        verb: &'static str,
        topic: String,
        group: Option<String>,
    },

    /// A request message that is not valid protobuf: the codec's
    /// message, which names the message type.
    #[error("{0}")]
    Malformed(String),

    /// A configured limit was reached.
    #[error("{0}")]
    ResourceExhausted(String),

    /// The request is well-formed but not allowed in the current state.
    #[error("{0}")]
    FailedPrecondition(String),

    #[error("{0}")]
    NotFound(String),

    #[error("the broker is shutting down; reconnect")]
    ShuttingDown,

    /// The broker holding the group refused a forwarded call: its status,
    /// passed on unchanged.
    #[error("{}", .0.message())]
    Forwarded(Status),

    /// The group's dispatcher is on another broker that cannot be reached
    /// now, or is moving between brokers: retry (clients reconnect).
    #[error("{0}")]
    Unavailable(String),

    /// A member's group stopped under it (topic or group deleted, or
    /// shutdown).
    #[error("the group was stopped (topic or group deleted, or shutdown); reconnect")]
    GroupStopped,

    /// A group member sent nothing for `delivery.idle_timeout`.
    #[error(
        "no request from this subscriber for delivery.idle_timeout = {idle_ms} ms; its in-flight events went back to the group"
    )]
    IdleTimeout { idle_ms: u128 },

    /// A second `open` on a Subscribe stream.
    #[error("open: the subscription is already open; send open once per stream")]
    AlreadyOpen,

    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),

    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),

    /// Setting up what every server shares (health, reflection, metrics).
    #[error(transparent)]
    Runtime(#[from] mesh_runtime::RuntimeError),

    /// A background task (a `spawn_blocking` storage call) panicked or was
    /// cancelled before it answered.
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl BrokerError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        BrokerError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            BrokerError::Log(e) => log_code(e),
            BrokerError::InvalidArgument { .. } | BrokerError::Malformed(_) => {
                Code::InvalidArgument
            }
            BrokerError::ResourceExhausted(_) => Code::ResourceExhausted,
            BrokerError::Unauthenticated(_) => Code::Unauthenticated,
            BrokerError::PermissionDenied { .. } => Code::PermissionDenied,
            BrokerError::FailedPrecondition(_) => Code::FailedPrecondition,
            BrokerError::NotFound(_) => Code::NotFound,
            BrokerError::ShuttingDown | BrokerError::GroupStopped | BrokerError::Unavailable(_) => {
                Code::Unavailable
            }
            BrokerError::IdleTimeout { .. } => Code::DeadlineExceeded,
            BrokerError::AlreadyOpen => Code::FailedPrecondition,
            BrokerError::Forwarded(s) => s.code(),
            BrokerError::Config(_)
            | BrokerError::Transport(_)
            | BrokerError::Io(_)
            | BrokerError::Runtime(_)
            | BrokerError::Task(_) => Code::Internal,
        }
    }
}

fn group_phrase(verb: &str, group: Option<&str>) -> String {
    match group {
        Some(g) => format!(" as group {g:?}"),
        None if verb == "subscribe" => " without a group".to_string(),
        None => String::new(),
    }
}

fn log_code(e: &LogError) -> Code {
    match e {
        LogError::TopicNotFound(_) | LogError::GroupNotFound { .. } => Code::NotFound,
        LogError::TopicExists(_) => Code::AlreadyExists,
        LogError::InvalidName { .. } | LogError::RecordTooLarge { .. } => Code::InvalidArgument,
        LogError::OffsetTruncated { .. } | LogError::OffsetBeyondHead { .. } => Code::OutOfRange,
        LogError::OffsetRegression { .. } => Code::FailedPrecondition,
        LogError::Corrupt { .. } => Code::DataLoss,
        // They clear up when the broker restarts or the NATS cluster has
        // elected a leader again; clients should retry.
        LogError::Poisoned { .. } | LogError::Closed(_) | LogError::Backend { .. } => {
            Code::Unavailable
        }
        LogError::Io { .. }
        | LogError::Config(_)
        | LogError::Background { .. }
        | LogError::FormatTooNew { .. }
        | LogError::FormatUnreadable { .. } => Code::Internal,
    }
}

impl From<BrokerError> for Status {
    fn from(e: BrokerError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

/// The in-stream error message for an error that must not end the stream.
pub fn to_proto(e: &BrokerError) -> mesh_proto::broker::v1::Error {
    mesh_proto::broker::v1::Error {
        code: mesh_proto::broker::v1::Code::from(e.code()).into(),
        message: e.to_string(),
    }
}

pub type Result<T, E = BrokerError> = std::result::Result<T, E>;

impl From<mesh_runtime::tls::TlsError> for BrokerError {
    fn from(e: mesh_runtime::tls::TlsError) -> Self {
        BrokerError::Config(ConfigError::Tls(e))
    }
}
