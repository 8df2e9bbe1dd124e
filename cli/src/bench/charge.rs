//! `tandemctl bench charge`: an authorization and its capture through the sandbox connector.

use std::sync::Arc;

use tandem_proto::tandem::vault::v1 as pb;
use tandem_tls::identity::Role;

use super::measure::measure;
use super::pay::usd;
use super::stack::{CALL_TIMEOUT, Stack, channels};
use super::tokenize::tokenize_cards;
use super::{LoadArgs, baseline, check_shape};
use crate::dev;

/// Authorizes and captures charges through the sandbox connector.
pub(super) async fn run(args: LoadArgs) -> anyhow::Result<()> {
    check_shape(&args.shape)?;
    dev::ensure_certificates(&args.certs)?;
    let baseline = baseline(&args.shape).await?;
    let mut stack = Stack::new()?;
    let uri = stack.vault(&args).await?;
    // Cards to charge: four per client, so that the sandbox's per-card lock is not the
    // bottleneck being measured.
    let run_id = super::run_id();
    let tokens = tokenize_cards(&uri, &args.certs, &run_id, args.shape.concurrency * 4).await?;
    let clients: Vec<_> = channels(
        &uri,
        &args.certs,
        Role::Orchestrator,
        args.shape.concurrency,
        CALL_TIMEOUT,
    )
    .await?
    .into_iter()
    .map(pb::charge_service_client::ChargeServiceClient::new)
    .collect();
    let clients = Arc::new(clients);
    let tokens = Arc::new(tokens);
    let measured = measure(&args.shape, &stack, "pairs", move |worker, n| {
        let mut client = clients[worker % clients.len()].clone();
        let token = tokens[(worker + n as usize * 7) % tokens.len()].clone();
        let id = format!("bench-{run_id}-{worker}-{n}");
        async move {
            let authorize = pb::AuthorizeRequest {
                request_id: format!("{id}/authorize"),
                token,
                amount: Some(usd(1000 + (n % 100) as i64)),
                ..Default::default()
            };
            let Ok(response) = client.authorize(authorize).await else {
                return false;
            };
            let Some(charge) = response.into_inner().charge else {
                return false;
            };
            let capture = pb::CaptureRequest {
                request_id: format!("{id}/capture"),
                charge_id: charge.id,
                amount: None,
            };
            client.capture(capture).await.is_ok_and(|r| {
                r.get_ref()
                    .charge
                    .as_ref()
                    .is_some_and(|c| c.state == pb::ChargeState::Captured as i32)
            })
        }
    })
    .await?;
    stack.stop();
    println!("charge (authorize + capture pairs): {}", args.shape);
    measured.print(baseline.as_ref());
    Ok(())
}
