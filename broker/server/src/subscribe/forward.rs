//! A group member connected to a broker that does not run its group's
//! dispatcher: the same Subscribe stream, opened on the broker that does
//! (`cluster::claim` names it), relayed both ways.
//!
//! Flow control carries through: responses move into this stream's
//! outbox only as it has room, so a client that stops reading stops the
//! relay, which stops reading the holder, whose own outbox then holds the
//! member back. The holder sees a member like any other: its heartbeats,
//! idle timeout and in-stream errors reach the client unchanged.

use std::sync::Arc;

use mesh_proto::broker::v1::{self as pb, SubscribeRequest, subscribe_request::Request};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming, metadata::MetadataValue};

use crate::{
    cluster::FORWARDED,
    error::{BrokerError, Result},
    outbox::{self, Outbox},
    state::Shared,
};

/// Opens `open` on the broker at `url` and relays until either side ends.
/// Fails (before anything is sent to the client) if the holder cannot be
/// reached or refuses the open.
pub(super) async fn forward(
    broker: &Arc<Shared>,
    url: &str,
    open: pb::Open,
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
    inbound: Streaming<SubscribeRequest>,
    tx: Outbox,
    hold: impl Send + 'static,
) -> Result<()> {
    let cluster = broker.cluster.as_ref().expect("forwarding needs a cluster");
    let mut peer = cluster.peer(url)?;
    let (req_tx, req_rx) = mpsc::channel::<SubscribeRequest>(64);
    req_tx
        .send(SubscribeRequest {
            request: Some(Request::Open(open.clone())),
        })
        .await
        .map_err(|_| BrokerError::ShuttingDown)?;
    let mut req = tonic::Request::new(ReceiverStream::new(req_rx));
    if let Ok(me) = MetadataValue::try_from(cluster.me.id.as_str()) {
        req.metadata_mut().insert(FORWARDED, me);
    }
    if let Some(a) = authorization {
        req.metadata_mut().insert("authorization", a);
    }
    let upstream = peer
        .subscribe(req)
        .await
        .map_err(|s| unreachable_holder(s, url, &open))?
        .into_inner();
    tracing::debug!(topic = %open.topic, group = %open.group, holder = %url, "forwarding a group member");
    let stopping = broker.stopping.clone();
    tokio::spawn(async move {
        let _hold = hold;
        relay(inbound, req_tx, upstream, tx, stopping).await;
    });
    Ok(())
}

fn unreachable_holder(s: Status, url: &str, open: &pb::Open) -> BrokerError {
    match s.code() {
        // The holder's own answer (denied, invalid, not found...): the
        // client gets it as is.
        tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::Internal => {
            BrokerError::Unavailable(format!(
                "group {:?} of topic {:?} is dispatched by the broker at {url}, which does not answer ({}); retry: its lease expires if it is gone",
                open.group,
                open.topic,
                s.message()
            ))
        }
        _ => BrokerError::Forwarded(s),
    }
}

async fn relay(
    mut inbound: Streaming<SubscribeRequest>,
    req_tx: mpsc::Sender<SubscribeRequest>,
    mut upstream: Streaming<pb::SubscribeResponse>,
    tx: Outbox,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let mut req_tx = Some(req_tx);
    loop {
        tokio::select! {
            _ = crate::state::stopped(&mut stopping) => {
                tx.finish(Status::from(BrokerError::ShuttingDown));
                return;
            }
            _ = tx.closed() => return,
            r = inbound.message(), if req_tx.is_some() => match r {
                Ok(Some(m)) => {
                    let sent = match &req_tx {
                        Some(t) => t.send(m).await.is_ok(),
                        None => false,
                    };
                    if !sent {
                        req_tx = None;
                    }
                }
                // The client half-closed: so does the relay, and the
                // holder goes on sending.
                Ok(None) | Err(_) => req_tx = None,
            },
            r = upstream.message() => match r {
                Ok(Some(resp)) => {
                    let item: outbox::Item = Ok(resp);
                    if tx.send(item).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(s) => {
                    tx.finish(s);
                    return;
                }
            },
        }
    }
}
