//! `tandemctl bench tokenize`, and the generated cards every benchmark tokenizes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use tandem_proto::tandem::vault::v1 as pb;
use tandem_tls::identity::Role;

use super::measure::measure;
use super::stack::{CALL_TIMEOUT, Stack, channels};
use super::{LoadArgs, baseline, check_shape};
use crate::dev;

/// Tokenizes distinct PANs as fast as the vault allows.
pub(super) async fn run(args: LoadArgs) -> anyhow::Result<()> {
    check_shape(&args.shape)?;
    dev::ensure_certificates(&args.certs)?;
    let baseline = baseline(&args.shape).await?;
    let mut stack = Stack::new()?;
    let uri = stack.vault(&args).await?;
    let clients: Vec<_> = channels(
        &uri,
        &args.certs,
        Role::Tokenizer,
        args.shape.concurrency,
        CALL_TIMEOUT,
    )
    .await?
    .into_iter()
    .map(pb::token_service_client::TokenServiceClient::new)
    .collect();
    // Distinct PANs per request, and distinct across runs against the same vault.
    let sequence = Arc::new(AtomicU64::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64 % 10_000_000_000),
    ));
    let run_id = super::run_id();
    let clients = Arc::new(clients);
    let measured = measure(&args.shape, &stack, "tokenizations", move |worker, n| {
        let mut client = clients[worker % clients.len()].clone();
        let request = tokenize_request(
            format!("bench-{run_id}-{worker}-{n}"),
            sequence.fetch_add(1, Ordering::Relaxed),
        );
        async move { client.tokenize(request).await.is_ok() }
    })
    .await?;
    stack.stop();
    println!("tokenize: {}", args.shape);
    measured.print(baseline.as_ref());
    Ok(())
}

/// Tokenizes `count` distinct sandbox cards without limits (Visa numbers no test card uses)
/// and returns their tokens.
pub(super) async fn tokenize_cards(
    vault_uri: &str,
    certs: &std::path::Path,
    run_id: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let mut tokenizer = pb::token_service_client::TokenServiceClient::new(
        channels(vault_uri, certs, Role::Tokenizer, 1, CALL_TIMEOUT)
            .await?
            .remove(0),
    );
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64 % 10_000_000_000);
    let mut tokens = Vec::with_capacity(count);
    for i in 0..count {
        let card = tokenizer
            .tokenize(tokenize_request(
                format!("bench-{run_id}-card-{i}"),
                seed + i as u64,
            ))
            .await
            .map_err(crate::connect::failure)
            .context("tokenizing the bench cards")?
            .into_inner()
            .card
            .context("tokenize returned no card")?;
        tokens.push(card.token);
    }
    Ok(tokens)
}

/// A tokenization of the generated card `sequence` (see [`visa_pan`]), without dedupe or TTL.
pub(super) fn tokenize_request(request_id: String, sequence: u64) -> pb::TokenizeRequest {
    pb::TokenizeRequest {
        request_id,
        pan: visa_pan(sequence),
        expiry_month: 12,
        expiry_year: 2030,
        holder_name: String::new(),
        reuse_existing: false,
        ttl_seconds: 0,
    }
}

/// A Luhn-valid 16-digit Visa number from a sequence number.
pub(super) fn visa_pan(sequence: u64) -> String {
    let body = format!("4{:014}", sequence % 100_000_000_000_000);
    (0..=9)
        .map(|check| format!("{body}{check}"))
        .find(|pan| tandem_vault::domain::pan::luhn_valid(pan.as_bytes()))
        .expect("exactly one check digit makes a number Luhn-valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generated PANs are distinct Luhn-valid Visa numbers.
    #[test]
    fn generated_pans_are_valid() {
        let mut seen = std::collections::HashSet::new();
        for n in [0, 1, 42, 99_999_999_999_999, 123_456_789] {
            let pan = visa_pan(n);
            assert_eq!(pan.len(), 16);
            assert!(
                tandem_vault::domain::pan::luhn_valid(pan.as_bytes()),
                "{pan}"
            );
            assert!(tandem_vault::domain::Pan::parse(&pan).is_ok(), "{pan}");
            assert!(seen.insert(pan));
        }
    }
}
