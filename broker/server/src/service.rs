//! The gRPC edge: the generated `Broker` trait, implemented by delegating
//! to the session and admin code. Errors become statuses only here.

use std::sync::Arc;

use mesh_proto::broker::v1::{self as pb, broker_server};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    publish::{self, PublishStream},
    state::Broker,
    subscribe::{self, SubscribeStream},
};

#[derive(Clone)]
pub struct BrokerService {
    pub broker: Arc<Broker>,
}

type Rpc<T> = Result<Response<T>, Status>;

fn ok<T>(r: crate::error::Result<T>) -> Rpc<T> {
    r.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl broker_server::Broker for BrokerService {
    type PublishStream = PublishStream;
    type SubscribeStream = SubscribeStream;

    async fn publish(&self, req: Request<Streaming<pb::PublishRequest>>) -> Rpc<PublishStream> {
        ok(publish::publish_stream(
            self.broker.clone(),
            req.into_inner(),
        ))
    }

    async fn publish_unary(&self, req: Request<pb::PublishRequest>) -> Rpc<pb::PublishResponse> {
        ok(publish::publish_unary(&self.broker, req.into_inner()).await)
    }

    async fn subscribe(
        &self,
        req: Request<Streaming<pb::SubscribeRequest>>,
    ) -> Rpc<SubscribeStream> {
        ok(subscribe::subscribe(self.broker.clone(), req.into_inner()).await)
    }

    async fn create_topic(&self, req: Request<pb::CreateTopicRequest>) -> Rpc<pb::TopicInfo> {
        ok(self.broker.create_topic(req.into_inner()).await)
    }

    async fn list_topics(&self, _: Request<pb::ListTopicsRequest>) -> Rpc<pb::ListTopicsResponse> {
        Ok(Response::new(self.broker.list_topics()))
    }

    async fn describe_topic(&self, req: Request<pb::DescribeTopicRequest>) -> Rpc<pb::TopicInfo> {
        ok(self.broker.describe_topic(req.into_inner()))
    }

    async fn delete_topic(
        &self,
        req: Request<pb::DeleteTopicRequest>,
    ) -> Rpc<pb::DeleteTopicResponse> {
        ok(self
            .broker
            .delete_topic(req.into_inner())
            .await
            .map(|()| pb::DeleteTopicResponse {}))
    }

    async fn list_groups(
        &self,
        req: Request<pb::ListGroupsRequest>,
    ) -> Rpc<pb::ListGroupsResponse> {
        ok(self.broker.list_groups(&req.into_inner().topic).await)
    }

    async fn describe_group(&self, req: Request<pb::DescribeGroupRequest>) -> Rpc<pb::GroupInfo> {
        let r = req.into_inner();
        ok(self.broker.describe_group(&r.topic, &r.group).await)
    }

    async fn seek_group(&self, req: Request<pb::SeekGroupRequest>) -> Rpc<pb::SeekGroupResponse> {
        ok(self.broker.seek_group(req.into_inner()).await)
    }

    async fn delete_group(
        &self,
        req: Request<pb::DeleteGroupRequest>,
    ) -> Rpc<pb::DeleteGroupResponse> {
        let r = req.into_inner();
        ok(self
            .broker
            .delete_group(&r.topic, &r.group)
            .await
            .map(|()| pb::DeleteGroupResponse {}))
    }

    async fn list_dead_letters(
        &self,
        req: Request<pb::ListDeadLettersRequest>,
    ) -> Rpc<pb::ListDeadLettersResponse> {
        ok(self.broker.list_dead_letters(req.into_inner()).await)
    }

    async fn redrive_dead_letters(
        &self,
        req: Request<pb::RedriveDeadLettersRequest>,
    ) -> Rpc<pb::RedriveDeadLettersResponse> {
        ok(self
            .broker
            .redrive(req.into_inner())
            .await
            .map(|redriven| pb::RedriveDeadLettersResponse { redriven }))
    }

    async fn purge_dead_letters(
        &self,
        req: Request<pb::PurgeDeadLettersRequest>,
    ) -> Rpc<pb::PurgeDeadLettersResponse> {
        ok(self
            .broker
            .purge(req.into_inner())
            .await
            .map(|purged| pb::PurgeDeadLettersResponse { purged }))
    }
}
