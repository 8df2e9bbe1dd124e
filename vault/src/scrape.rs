//! The vault's metrics endpoint: the families of [`crate::metrics`], with the gauges read at
//! each scrape (the seal, the connector's circuit breaker, the data keys and the rewrap).
//! Serving is [`tandem_runtime::metrics`]'s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_runtime::metrics::{Endpoint, Refresh};

use crate::charges::Charges;
use crate::connector::breaker::BreakerState;
use crate::keys::admin::KeyAdmin;
use crate::metrics as names;

/// How long the key gauges (which count card rows) are kept before a scrape reads them again,
/// so frequent scrapes do not keep counting the cards table.
const KEY_GAUGES_TTL: Duration = Duration::from_secs(5);

/// The vault's endpoint over `charges` and `keys`.
pub fn endpoint(charges: Arc<Charges>, keys: Arc<KeyAdmin>) -> Endpoint {
    names::describe();
    let read_at: Arc<tokio::sync::Mutex<Option<Instant>>> = Arc::default();
    let refresh: Refresh = Arc::new(move || {
        let (charges, keys, read_at) = (charges.clone(), keys.clone(), read_at.clone());
        Box::pin(async move { refresh(&charges, &keys, &read_at).await })
    });
    Endpoint {
        prefix: "tandem_vault_",
        refresh: Some(refresh),
    }
}

async fn refresh(
    charges: &Charges,
    keys: &KeyAdmin,
    read_at: &tokio::sync::Mutex<Option<Instant>>,
) {
    metrics::gauge!(names::SEALED).set(f64::from(u8::from(charges.vault().is_sealed())));
    let connector = charges.connector();
    let state = match connector.breaker_state() {
        BreakerState::Closed => 0.0,
        BreakerState::HalfOpen => 1.0,
        BreakerState::Open => 2.0,
    };
    metrics::gauge!(names::BREAKER_STATE, "connector" => connector.name()).set(state);
    metrics::counter!(names::BREAKER_OPENED, "connector" => connector.name())
        .absolute(connector.breaker_opened_total());
    let mut read_at = read_at.lock().await;
    if read_at.is_some_and(|at| at.elapsed() < KEY_GAUGES_TTL) {
        return;
    }
    match keys.status().await {
        Ok(status) => {
            for key in &status.data_keys {
                let version = key.version.to_string();
                metrics::gauge!(names::DATA_KEY_ROWS, "version" => version.clone())
                    .set(key.rows as f64);
                metrics::gauge!(names::DATA_KEY_ENCRYPTIONS, "version" => version.clone())
                    .set(key.encryptions as f64);
                metrics::gauge!(names::DATA_KEY_ACTIVE, "version" => version)
                    .set(f64::from(u8::from(key.state == "active")));
            }
            let rewrap = &status.rewrap;
            metrics::gauge!(names::REWRAP_ROWS_REMAINING).set(rewrap.rows_remaining as f64);
            metrics::gauge!(names::REWRAP_ROWS_DONE).set(rewrap.rows_done as f64);
            metrics::gauge!(names::REWRAP_ROWS_PER_SECOND).set(rewrap.rows_per_s);
            *read_at = Some(Instant::now());
        }
        Err(error) => tracing::warn!(%error, "key status unavailable for metrics"),
    }
}
