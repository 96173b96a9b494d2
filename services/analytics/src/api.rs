//! The `mesh.analytics.v1.Analytics` gRPC API.

use std::sync::{Arc, Mutex};

use mesh_proto::{
    analytics::v1::{GetStatsRequest, Stats, analytics_server::Analytics},
    broker::v1::DescribeTopicRequest,
};
use mesh_sdk::{
    View,
    link::{Broker, BrokerClient},
};
use tonic::{Request, Response, Status};

use crate::{TOPICS, stats};

pub struct AnalyticsApi {
    pub stats: Arc<Mutex<stats::Stats>>,
    /// Of `TOPICS`, in that order: how far `stats` has read each.
    pub views: Vec<View>,
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
        for (t, view) in TOPICS.iter().zip(&self.views) {
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
            out.push((t.to_string(), live.unwrap_or(view.head())));
        }
        out
    }
}

#[tonic::async_trait]
impl Analytics for AnalyticsApi {
    async fn get_stats(&self, req: Request<GetStatsRequest>) -> Result<Response<Stats>, Status> {
        let customer = req.into_inner().customer_id;
        let heads = self.heads().await;
        let mut out = self.stats.lock().expect("stats lock").snapshot(&customer);
        for ((t, head), view) in heads.into_iter().zip(&self.views) {
            out.lag.insert(t, head.saturating_sub(view.position()));
        }
        out.caught_up = self.views.iter().all(View::is_caught_up);
        let up = self.started.elapsed();
        out.uptime = Some(mesh_sdk::mesh_runtime::time::duration(up));
        Ok(Response::new(out))
    }
}
