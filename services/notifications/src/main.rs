//! Tells customers when their order ships: a complete consumer service.
use mesh_proto::shipping::v1::ShipmentScheduled;
use mesh_sdk::{BasicConfig, Consumer, Delivered, HandlerError, ServiceConfig, app, server};

/// Ok acks the event; Err nacks it and the broker redelivers it later.
async fn handle(d: Delivered) -> Result<(), HandlerError> {
    if let Ok(ev) = d.decode::<ShipmentScheduled>() {
        let s = ev.shipment.unwrap_or_default();
        tracing::info!(customer = %s.customer_id, order = %s.order_id, "notify: your order ships soon");
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    app::main(
        "NOTIFICATIONS",
        "notifications.toml",
        |cfg: BasicConfig, listener, shutdown| async move {
            let consumer = Consumer::new(&cfg.broker()?, "shipments", "notifications")?;
            let api = server::serve(
                Default::default(),
                listener,
                &cfg.tls,
                shutdown.clone().cancelled_owned(),
            );
            let (consumed, served) = tokio::join!(consumer.run(handle, shutdown.clone()), api);
            consumed.and(served)
        },
    )
}
