//! Generated code for every contract of the mesh.
//!
//! - [`events::v1`]: the event envelope (`mesh.events.v1`), aligned with
//!   the CloudEvents protobuf format.
//! - [`broker::v1`]: the broker's gRPC API (`mesh.broker.v1`).
//! - [`orders::v1`], [`billing::v1`], [`shipping::v1`], [`analytics::v1`]:
//!   each demo service's own API and the domain events it publishes.
//! - [`FILE_DESCRIPTOR_SET`]: all of the above, encoded, for gRPC reflection.
//! - `Code` conversions: the in-stream [`broker::v1::Code`] to and from
//!   `tonic::Code` (the same numbers).
//! - [`DomainEvent`]: the `type` name and topic of each domain event.
//! - [`codec::MeshCodec`]: the codec of every generated client and server;
//!   a request that is not valid protobuf gets INVALID_ARGUMENT.

pub mod codec;

pub mod events {
    pub mod v1 {
        tonic::include_proto!("mesh.events.v1");
    }
}

pub mod broker {
    pub mod v1 {
        tonic::include_proto!("mesh.broker.v1");
    }
}

pub mod orders {
    pub mod v1 {
        tonic::include_proto!("mesh.orders.v1");
    }
}

pub mod billing {
    pub mod v1 {
        tonic::include_proto!("mesh.billing.v1");
    }
}

pub mod shipping {
    pub mod v1 {
        tonic::include_proto!("mesh.shipping.v1");
    }
}

pub mod analytics {
    pub mod v1 {
        tonic::include_proto!("mesh.analytics.v1");
    }
}

/// The in-stream error code and tonic's status code are the same numbers
/// (google.rpc.Code), so each converts to the other without loss.
impl From<tonic::Code> for broker::v1::Code {
    fn from(c: tonic::Code) -> Self {
        broker::v1::Code::try_from(c as i32).unwrap_or(broker::v1::Code::Unknown)
    }
}

impl From<broker::v1::Code> for tonic::Code {
    fn from(c: broker::v1::Code) -> Self {
        tonic::Code::from_i32(c as i32)
    }
}

impl broker::v1::Error {
    /// The code as a gRPC status code; a number this build does not know
    /// is `Unknown`.
    pub fn status_code(&self) -> tonic::Code {
        tonic::Code::from_i32(self.code)
    }
}

/// Encoded `FileDescriptorSet` of every .proto in this crate.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("mesh_descriptor");

/// A domain event: its CloudEvents `type` and the topic it is published to.
pub trait DomainEvent: prost::Message + Default {
    const TYPE: &'static str;
    const TOPIC: &'static str;
}

macro_rules! domain_event {
    ($t:ty, $name:literal, $topic:literal) => {
        impl DomainEvent for $t {
            const TYPE: &'static str = $name;
            const TOPIC: &'static str = $topic;
        }
    };
}

domain_event!(
    orders::v1::OrderPlaced,
    "mesh.orders.v1.OrderPlaced",
    "orders"
);
domain_event!(
    orders::v1::OrderStatusChanged,
    "mesh.orders.v1.OrderStatusChanged",
    "orders"
);
domain_event!(
    billing::v1::PaymentAuthorized,
    "mesh.billing.v1.PaymentAuthorized",
    "payments"
);
domain_event!(
    billing::v1::PaymentDeclined,
    "mesh.billing.v1.PaymentDeclined",
    "payments"
);
domain_event!(
    shipping::v1::ShipmentScheduled,
    "mesh.shipping.v1.ShipmentScheduled",
    "shipments"
);

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn has_message(full_name: &str) -> bool {
        let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        fds.file.iter().any(|f| {
            f.message_type
                .iter()
                .any(|m| format!("{}.{}", f.package(), m.name()) == full_name)
        })
    }

    #[test]
    fn event_type_names_are_the_protobuf_full_names() {
        for t in [
            orders::v1::OrderPlaced::TYPE,
            orders::v1::OrderStatusChanged::TYPE,
            billing::v1::PaymentAuthorized::TYPE,
            billing::v1::PaymentDeclined::TYPE,
            shipping::v1::ShipmentScheduled::TYPE,
        ] {
            assert!(has_message(t), "{t} is not a message in the descriptor set");
        }
    }
}
