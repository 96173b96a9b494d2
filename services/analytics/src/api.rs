//! The `mesh.analytics.v1.Analytics` gRPC API.

use std::sync::{Arc, Mutex};

use mesh_proto::{
    analytics::v1::{GetStatsRequest, Stats, analytics_server::Analytics},
    broker::v1::DescribeTopicRequest,
};
use mesh_sdk::link::{Broker, BrokerClient};
use tonic::{Request, Response, Status};

use crate::{TOPICS, stats};

pub struct AnalyticsApi {
    pub stats: Arc<Mutex<stats::Stats>>,
    /// The broker link of the service (its TLS and token).
    pub broker: Broker,
    pub started: std::time::Instant,
}

impl AnalyticsApi {
    /// Current heads from the broker's admin API; the last known ones if
    /// the broker cannot be reached.
    async fn heads(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let client = async { self.broker.connect().await.ok() };
        let client: Option<BrokerClient> =
            tokio::time::timeout(std::time::Duration::from_secs(2), client)
                .await
                .ok()
                .flatten();
        for t in TOPICS {
            let live = match client.clone() {
                Some(mut c) => c
                    .describe_topic(DescribeTopicRequest {
                        name: t.to_string(),
                    })
                    .await
                    .ok()
                    .map(|r| r.into_inner().head_offset),
                None => None,
            };
            let known = self
                .stats
                .lock()
                .expect("stats lock")
                .head
                .get(t)
                .copied()
                .unwrap_or(0);
            out.push((t.to_string(), live.unwrap_or(known)));
        }
        out
    }
}

#[tonic::async_trait]
impl Analytics for AnalyticsApi {
    async fn get_stats(&self, req: Request<GetStatsRequest>) -> Result<Response<Stats>, Status> {
        let customer = req.into_inner().customer_id;
        let heads = self.heads().await;
        let s = self.stats.lock().expect("stats lock");
        let mut out = s.snapshot(&customer);
        for (t, head) in heads {
            let next = s.next.get(&t).copied().unwrap_or(0);
            out.lag.insert(t, head.saturating_sub(next));
        }
        let up = self.started.elapsed();
        out.uptime = Some(mesh_sdk::mesh_runtime::time::duration(up));
        Ok(Response::new(out))
    }
}
