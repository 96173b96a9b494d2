//! The `mesh.shipping.v1.Shipping` gRPC API.

use mesh_proto::shipping::v1::{GetShipmentRequest, Shipment, shipping_server::Shipping};
use tonic::{Request, Response, Status};

use crate::Register;

pub struct ShippingApi {
    pub register: Register,
}

#[tonic::async_trait]
impl Shipping for ShippingApi {
    async fn get_shipment(
        &self,
        req: Request<GetShipmentRequest>,
    ) -> Result<Response<Shipment>, Status> {
        let r = req.into_inner();
        let reg = self.register.lock().expect("register lock");
        let found = match (r.shipment_id.is_empty(), r.order_id.is_empty()) {
            (false, _) => reg
                .values()
                .find(|s| s.shipment_id == r.shipment_id)
                .cloned(),
            (true, false) => reg.get(&r.order_id).cloned(),
            (true, true) => {
                return Err(Status::invalid_argument(
                    "shipment_id or order_id: one is required",
                ));
            }
        };
        found.map(Response::new).ok_or_else(|| {
            Status::not_found(format!(
                "no shipment for shipment_id {:?} / order_id {:?}",
                r.shipment_id, r.order_id
            ))
        })
    }
}
