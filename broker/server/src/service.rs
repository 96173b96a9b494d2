//! The gRPC edge: the generated `Broker` trait (named by the proto service), implemented by `GrpcService` delegating
//! to the session and admin code. Errors become statuses only here.

use std::sync::Arc;

use mesh_proto::broker::v1::{self as pb, broker_server};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    admin,
    publish::{self, PublishStream},
    state::Shared,
    subscribe::{self, SubscribeStream},
};

#[derive(Clone)]
pub struct GrpcService {
    pub broker: Arc<Shared>,
}

type Rpc<T> = Result<Response<T>, Status>;

fn ok<T>(r: crate::error::Result<T>) -> Rpc<T> {
    r.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl broker_server::Broker for GrpcService {
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
        ok(admin::create_topic(&self.broker, req.into_inner()).await)
    }

    async fn list_topics(&self, _: Request<pb::ListTopicsRequest>) -> Rpc<pb::ListTopicsResponse> {
        Ok(Response::new(admin::list_topics(&self.broker)))
    }

    async fn describe_topic(&self, req: Request<pb::DescribeTopicRequest>) -> Rpc<pb::TopicInfo> {
        ok(admin::describe_topic(&self.broker, req.into_inner()))
    }

    async fn delete_topic(
        &self,
        req: Request<pb::DeleteTopicRequest>,
    ) -> Rpc<pb::DeleteTopicResponse> {
        ok(admin::delete_topic(&self.broker, req.into_inner())
            .await
            .map(|()| pb::DeleteTopicResponse {}))
    }

    async fn list_groups(
        &self,
        req: Request<pb::ListGroupsRequest>,
    ) -> Rpc<pb::ListGroupsResponse> {
        ok(admin::list_groups(&self.broker, &req.into_inner().topic).await)
    }

    async fn describe_group(&self, req: Request<pb::DescribeGroupRequest>) -> Rpc<pb::GroupInfo> {
        let r = req.into_inner();
        ok(admin::describe_group(&self.broker, &r.topic, &r.group).await)
    }

    async fn seek_group(&self, req: Request<pb::SeekGroupRequest>) -> Rpc<pb::SeekGroupResponse> {
        ok(admin::seek_group(&self.broker, req.into_inner()).await)
    }

    async fn delete_group(
        &self,
        req: Request<pb::DeleteGroupRequest>,
    ) -> Rpc<pb::DeleteGroupResponse> {
        let r = req.into_inner();
        ok(admin::delete_group(&self.broker, &r.topic, &r.group)
            .await
            .map(|()| pb::DeleteGroupResponse {}))
    }

    async fn list_dead_letters(
        &self,
        req: Request<pb::ListDeadLettersRequest>,
    ) -> Rpc<pb::ListDeadLettersResponse> {
        ok(admin::list_dead_letters(&self.broker, req.into_inner()).await)
    }

    async fn redrive_dead_letters(
        &self,
        req: Request<pb::RedriveDeadLettersRequest>,
    ) -> Rpc<pb::RedriveDeadLettersResponse> {
        ok(admin::redrive(&self.broker, req.into_inner())
            .await
            .map(|redriven| pb::RedriveDeadLettersResponse { redriven }))
    }

    async fn purge_dead_letters(
        &self,
        req: Request<pb::PurgeDeadLettersRequest>,
    ) -> Rpc<pb::PurgeDeadLettersResponse> {
        ok(admin::purge(&self.broker, req.into_inner())
            .await
            .map(|purged| pb::PurgeDeadLettersResponse { purged }))
    }
}
