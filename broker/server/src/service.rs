//! The gRPC edge: the generated `Broker` trait (named by the proto service), implemented by `GrpcService` delegating
//! to the session and admin code, after authenticating the caller and
//! checking the access-control list. Errors become statuses only here.

use std::sync::Arc;

use mesh_proto::broker::v1::{self as pb, broker_client::BrokerClient, broker_server};
use tonic::{Request, Response, Status, Streaming, metadata::MetadataValue, transport::Channel};

use crate::{
    admin,
    auth::{Caller, Verb},
    cluster,
    error::BrokerError,
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

impl GrpcService {
    /// With several brokers: a client of the broker running the group's
    /// dispatcher, and `req` to send it, if that is another broker (and
    /// `req` was not itself forwarded).
    async fn to_holder<T: Clone>(
        &self,
        req: &Request<T>,
        topic: &str,
        group: &str,
    ) -> Result<Option<(BrokerClient<Channel>, Request<T>)>, Status> {
        if req.metadata().contains_key(cluster::FORWARDED) {
            return Ok(None);
        }
        let Some(url) = cluster::holder_elsewhere(&self.broker, topic, group).await? else {
            return Ok(None);
        };
        let c = self
            .broker
            .cluster
            .as_ref()
            .expect("a holder needs a cluster");
        let mut fwd = Request::new(req.get_ref().clone());
        if let Ok(me) = MetadataValue::try_from(c.me.id.as_str()) {
            fwd.metadata_mut().insert(cluster::FORWARDED, me);
        }
        if let Some(a) = req.metadata().get("authorization") {
            fwd.metadata_mut().insert("authorization", a.clone());
        }
        Ok(Some((c.peer(&url)?, fwd)))
    }

    fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        self.broker.auth.authenticate(req).map_err(Status::from)
    }

    /// Authenticates `req` and checks that its caller may do `verb`.
    fn allowed<T>(
        &self,
        req: &Request<T>,
        verb: Verb,
        topic: &str,
        group: Option<&str>,
    ) -> Result<Caller, Status> {
        let who = self.caller(req)?;
        self.broker.auth.check(&who, verb, topic, group)?;
        Ok(who)
    }

    /// Authenticates `req` and checks that its caller holds some grant on
    /// `topic` (and on `group` when given): what describing them takes.
    fn sees<T>(
        &self,
        req: &Request<T>,
        topic: &str,
        group: Option<&str>,
    ) -> Result<Caller, Status> {
        let who = self.caller(req)?;
        let auth = &self.broker.auth;
        let visible = match group {
            None => auth.sees_topic(&who, topic),
            Some(g) => auth.sees_group(&who, topic, g),
        };
        if !visible {
            return Err(BrokerError::PermissionDenied {
                principal: who.principal.to_string(),
                verb: "describe",
                topic: topic.to_string(),
                group: group.map(str::to_string),
            }
            .into());
        }
        Ok(who)
    }
}

/// The group of a request, `None` when empty.
fn group(g: &str) -> Option<&str> {
    (!g.is_empty()).then_some(g)
}

#[tonic::async_trait]
impl broker_server::Broker for GrpcService {
    type PublishStream = PublishStream;
    type SubscribeStream = SubscribeStream;

    async fn publish(&self, req: Request<Streaming<pb::PublishRequest>>) -> Rpc<PublishStream> {
        let who = self.caller(&req)?;
        let slot = self.broker.streams.open(req.remote_addr())?;
        ok(publish::publish_stream(
            self.broker.clone(),
            who,
            slot,
            req.into_inner(),
        ))
    }

    async fn publish_unary(&self, req: Request<pb::PublishRequest>) -> Rpc<pb::PublishResponse> {
        let who = self.caller(&req)?;
        ok(publish::publish_unary(&self.broker, &who, req.into_inner()).await)
    }

    async fn subscribe(
        &self,
        req: Request<Streaming<pb::SubscribeRequest>>,
    ) -> Rpc<SubscribeStream> {
        let who = self.caller(&req)?;
        let slot = self.broker.streams.open(req.remote_addr())?;
        let via = subscribe::Via {
            forwarded: req.metadata().contains_key(crate::cluster::FORWARDED),
            authorization: req.metadata().get("authorization").cloned(),
        };
        ok(subscribe::subscribe(self.broker.clone(), who, slot, via, req.into_inner()).await)
    }

    async fn create_topic(&self, req: Request<pb::CreateTopicRequest>) -> Rpc<pb::TopicInfo> {
        self.allowed(&req, Verb::TopicAdmin, &req.get_ref().name, None)?;
        ok(admin::create_topic(&self.broker, req.into_inner()).await)
    }

    async fn list_topics(
        &self,
        req: Request<pb::ListTopicsRequest>,
    ) -> Rpc<pb::ListTopicsResponse> {
        let who = self.caller(&req)?;
        let mut all = admin::list_topics(&self.broker);
        all.topics
            .retain(|t| self.broker.auth.sees_topic(&who, &t.name));
        Ok(Response::new(all))
    }

    async fn describe_topic(&self, req: Request<pb::DescribeTopicRequest>) -> Rpc<pb::TopicInfo> {
        self.sees(&req, &req.get_ref().name, None)?;
        ok(admin::describe_topic(&self.broker, req.into_inner()))
    }

    async fn delete_topic(
        &self,
        req: Request<pb::DeleteTopicRequest>,
    ) -> Rpc<pb::DeleteTopicResponse> {
        self.allowed(&req, Verb::TopicAdmin, &req.get_ref().name, None)?;
        ok(admin::delete_topic(&self.broker, req.into_inner())
            .await
            .map(|()| pb::DeleteTopicResponse {}))
    }

    async fn list_groups(
        &self,
        req: Request<pb::ListGroupsRequest>,
    ) -> Rpc<pb::ListGroupsResponse> {
        let who = self.sees(&req, &req.get_ref().topic, None)?;
        let topic = req.get_ref().topic.clone();
        let mut all = admin::list_groups(&self.broker, &topic).await?;
        all.groups
            .retain(|g| self.broker.auth.sees_group(&who, &topic, &g.group));
        // A group another broker dispatches: its members, in-flight and
        // lag as that broker sees them (the stored position otherwise, if
        // it cannot be asked).
        for g in &mut all.groups {
            let mut ask = Request::new(pb::DescribeGroupRequest {
                topic: topic.clone(),
                group: g.group.clone(),
            });
            *ask.metadata_mut() = req.metadata().clone();
            if let Some((mut peer, fwd)) = self.to_holder(&ask, &topic, &g.group).await?
                && let Ok(info) = peer.describe_group(fwd).await
            {
                *g = info.into_inner();
            }
        }
        Ok(Response::new(all))
    }

    async fn describe_group(&self, req: Request<pb::DescribeGroupRequest>) -> Rpc<pb::GroupInfo> {
        let r = req.get_ref();
        self.sees(&req, &r.topic, Some(&r.group))?;
        if let Some((mut peer, fwd)) = self.to_holder(&req, &r.topic, &r.group).await? {
            return peer.describe_group(fwd).await;
        }
        let r = req.into_inner();
        ok(admin::describe_group(&self.broker, &r.topic, &r.group).await)
    }

    async fn seek_group(&self, req: Request<pb::SeekGroupRequest>) -> Rpc<pb::SeekGroupResponse> {
        let r = req.get_ref();
        self.allowed(&req, Verb::Seek, &r.topic, group(&r.group))?;
        if let Some((mut peer, fwd)) = self.to_holder(&req, &r.topic, &r.group).await? {
            return peer.seek_group(fwd).await;
        }
        ok(admin::seek_group(&self.broker, req.into_inner()).await)
    }

    async fn delete_group(
        &self,
        req: Request<pb::DeleteGroupRequest>,
    ) -> Rpc<pb::DeleteGroupResponse> {
        let r = req.get_ref();
        self.allowed(&req, Verb::Seek, &r.topic, group(&r.group))?;
        let r = req.into_inner();
        ok(admin::delete_group(&self.broker, &r.topic, &r.group)
            .await
            .map(|()| pb::DeleteGroupResponse {}))
    }

    async fn list_dead_letters(
        &self,
        req: Request<pb::ListDeadLettersRequest>,
    ) -> Rpc<pb::ListDeadLettersResponse> {
        let r = req.get_ref();
        self.allowed(&req, Verb::DlqAdmin, &r.topic, group(&r.group))?;
        ok(admin::list_dead_letters(&self.broker, req.into_inner()).await)
    }

    async fn redrive_dead_letters(
        &self,
        req: Request<pb::RedriveDeadLettersRequest>,
    ) -> Rpc<pb::RedriveDeadLettersResponse> {
        let r = req.get_ref();
        self.allowed(&req, Verb::DlqAdmin, &r.topic, group(&r.group))?;
        ok(admin::redrive(&self.broker, req.into_inner())
            .await
            .map(|redriven| pb::RedriveDeadLettersResponse { redriven }))
    }

    async fn purge_dead_letters(
        &self,
        req: Request<pb::PurgeDeadLettersRequest>,
    ) -> Rpc<pb::PurgeDeadLettersResponse> {
        let r = req.get_ref();
        self.allowed(&req, Verb::DlqAdmin, &r.topic, group(&r.group))?;
        ok(admin::purge(&self.broker, req.into_inner())
            .await
            .map(|purged| pb::PurgeDeadLettersResponse { purged }))
    }
}
