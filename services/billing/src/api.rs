//! The `mesh.billing.v1.Billing` gRPC API.

use std::sync::{Arc, Mutex};

use mesh_proto::billing::v1::{
    GetInvoiceRequest, Invoice, ListInvoicesRequest, ListInvoicesResponse, billing_server::Billing,
};
use tonic::{Request, Response, Status};

use crate::ledger::Ledger;

pub struct BillingApi {
    pub ledger: Arc<Mutex<Ledger>>,
}

#[tonic::async_trait]
impl Billing for BillingApi {
    async fn get_invoice(
        &self,
        req: Request<GetInvoiceRequest>,
    ) -> Result<Response<Invoice>, Status> {
        let r = req.into_inner();
        let ledger = self.ledger.lock().expect("ledger lock");
        let found = match (r.invoice_id.is_empty(), r.order_id.is_empty()) {
            (false, _) => ledger.by_id(&r.invoice_id),
            (true, false) => ledger.by_order(&r.order_id),
            (true, true) => {
                return Err(Status::invalid_argument(
                    "invoice_id or order_id: one is required",
                ));
            }
        };
        found.map(Response::new).ok_or_else(|| {
            Status::not_found(format!(
                "no invoice for invoice_id {:?} / order_id {:?}",
                r.invoice_id, r.order_id
            ))
        })
    }

    async fn list_invoices(
        &self,
        req: Request<ListInvoicesRequest>,
    ) -> Result<Response<ListInvoicesResponse>, Status> {
        let invoices = self
            .ledger
            .lock()
            .expect("ledger lock")
            .list(&req.into_inner().customer_id);
        Ok(Response::new(ListInvoicesResponse { invoices }))
    }
}
