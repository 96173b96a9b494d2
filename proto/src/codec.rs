//! The codec of every generated mesh client and server: tonic's prost codec,
//! except for what a message that is not valid protobuf becomes.
//!
//! tonic's codec answers such a message INTERNAL, as if the server had
//! failed. Here a *request* that does not decode is the caller's mistake
//! and gets INVALID_ARGUMENT, naming the message type and prost's reason:
//! `request is not a valid mesh.broker.v1.PublishRequest: <reason>`. A
//! *response* that does not decode (a client talking to a broken or
//! mismatched server) stays INTERNAL, with the same kind of message.
//!
//! On a streaming RPC the status arrives as the item the handler reads
//! from its inbound `Streaming`; the handler decides how the stream ends.

use std::marker::PhantomData;

use prost::{Message, Name};
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::{ProstCodec, ProstEncoder};

include!(concat!(env!("OUT_DIR"), "/rpc_inputs.rs"));

/// Encodes `T`, decodes `U`: `T` is the request and `U` the response in a
/// client, the other way round in a server.
#[derive(Debug, Clone)]
pub struct MeshCodec<T, U> {
    /// Does the encoding; its decoder is replaced.
    inner: ProstCodec<T, U>,
}

impl<T, U> Default for MeshCodec<T, U> {
    fn default() -> Self {
        MeshCodec {
            inner: ProstCodec::default(),
        }
    }
}

impl<T, U> Codec for MeshCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = MeshDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        MeshDecoder { _pd: PhantomData }
    }
}

/// Decodes `U` with prost; see the module doc for its errors.
#[derive(Debug, Clone)]
pub struct MeshDecoder<U> {
    /// Only the type: the decoder holds no state between messages.
    _pd: PhantomData<U>,
}

impl<U: Message + Name + Default> Decoder for MeshDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|e| decode_status(&U::full_name(), &e))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// The status for a message of type `full_name` that prost could not
/// decode: INVALID_ARGUMENT for an RPC's input, INTERNAL otherwise.
pub fn decode_status(full_name: &str, e: &prost::DecodeError) -> Status {
    if RPC_INPUTS.contains(&full_name) {
        Status::invalid_argument(format!("request is not a valid {full_name}: {e}"))
    } else {
        Status::internal(format!("response is not a valid {full_name}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::v1 as pb;

    fn garbage<M: Message + Default + std::fmt::Debug>() -> prost::DecodeError {
        // A field header with wire type 7, which does not exist.
        M::decode(&[0x0f_u8][..]).unwrap_err()
    }

    #[test]
    fn a_request_that_does_not_decode_is_invalid_argument() {
        let s = decode_status(
            &pb::PublishRequest::full_name(),
            &garbage::<pb::PublishRequest>(),
        );
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(
            s.message()
                .starts_with("request is not a valid mesh.broker.v1.PublishRequest: "),
            "{s:?}"
        );
    }

    #[test]
    fn a_response_that_does_not_decode_stays_internal() {
        let s = decode_status(&pb::TopicInfo::full_name(), &garbage::<pb::TopicInfo>());
        assert_eq!(s.code(), tonic::Code::Internal);
        assert!(
            s.message()
                .starts_with("response is not a valid mesh.broker.v1.TopicInfo: "),
            "{s:?}"
        );
    }

    #[test]
    fn every_broker_rpc_input_is_listed() {
        for n in [
            pb::PublishRequest::full_name(),
            pb::SubscribeRequest::full_name(),
            pb::ListTopicsRequest::full_name(),
            pb::PurgeDeadLettersRequest::full_name(),
        ] {
            assert!(RPC_INPUTS.contains(&n.as_str()), "{n}");
        }
    }
}
