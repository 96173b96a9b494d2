//! Waiting for the topics a service needs: each is described first and
//! created only when missing. Under least privilege a service may not
//! create topics (CreateTopic needs `topic_admin`); then it says so and
//! waits for an operator (or the broker's `[[topics]]`) to create them.

use mesh_proto::broker::v1::{CreateTopicRequest, DescribeTopicRequest};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::{SdkError, link::Broker};

/// Why a round did not see every topic.
enum Missing {
    /// The broker is away, or refused something other than the create.
    Broker(SdkError),
    /// `topic` does not exist and this service may not create it.
    NotAllowed { topic: String, message: String },
}

/// One round: describe each topic, create the ones that are missing.
async fn round(broker: &Broker, topics: &[&str]) -> Result<(), Missing> {
    let mut c = broker.connect().await.map_err(Missing::Broker)?;
    for t in topics {
        let described = c
            .describe_topic(DescribeTopicRequest {
                name: t.to_string(),
            })
            .await;
        match described {
            Ok(_) => continue,
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(Missing::Broker(SdkError::Status(s))),
        }
        let created = c
            .create_topic(CreateTopicRequest {
                name: t.to_string(),
                ..Default::default()
            })
            .await;
        match created {
            Ok(_) => tracing::info!(topic = t, "created topic"),
            // Another service created it in between.
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) if s.code() == Code::PermissionDenied => {
                return Err(Missing::NotAllowed {
                    topic: t.to_string(),
                    message: s.message().to_string(),
                });
            }
            Err(s) => return Err(Missing::Broker(SdkError::Status(s))),
        }
    }
    Ok(())
}

/// Waits until every topic in `topics` exists, creating missing ones when
/// this service may, retrying with backoff while the broker is away or a
/// topic is missing that it may not create. Returns early (`Ok`) if
/// `shutdown` is cancelled.
pub async fn ensure_topics(
    broker: &Broker,
    topics: &[&str],
    shutdown: &CancellationToken,
) -> Result<(), SdkError> {
    let mut backoff = mesh_runtime::backoff::Backoff::default();
    loop {
        let r = tokio::select! {
            r = round(broker, topics) => r,
            _ = shutdown.cancelled() => return Ok(()),
        };
        match r {
            Ok(()) => return Ok(()),
            Err(Missing::NotAllowed { topic, message }) => tracing::warn!(
                topic,
                broker = broker.url(),
                reason = message,
                "topic {topic} does not exist and this service may not create it; \
                 create it with [[topics]] in the broker config or as admin"
            ),
            Err(Missing::Broker(e)) => {
                tracing::warn!(broker = broker.url(), error = %e, "broker not ready; retrying")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}
