//! Webhooks (`WebhookService`, DESIGN section 11): the treasury's endpoints, and
//! ([`delivery`]) the worker that fans the event feed out to them and delivers each event,
//! signed to the Standard Webhooks specification.
//!
//! An endpoint's signing secret is made here, shown once (in the response of the request that
//! made it, and of a replay of that request while it is still current) and stored sealed
//! ([`secrets`]); the request-id store keeps responses without it. Every mutation is idempotent
//! by `request_id`.

pub mod delivery;
pub mod destination;
pub mod http;
pub mod secrets;

use std::sync::Arc;

use sqlx::PgPool;
use time::OffsetDateTime;

use crate::commands::{DeliveryQuery, EndpointChange, EndpointUpdate, NewEndpoint, Redelivery};
use crate::config::WebhookSettings;
use crate::domain::actor::Actor;
use crate::domain::webhooks::{DisabledReason, EndpointState};
use crate::error::Error;
use crate::grpc::convert;
use crate::storage::{self, webhooks as store};
use secrets::{SealingKey, Secret};
use tandem_runtime::time::now_micros as now;

pub use store::{StoredDelivery, StoredEndpoint};

/// A mutation's stored response and, for a creation or rotation, the secret to show with it.
pub type Answered = (Vec<u8>, Option<Secret>);

/// A mutation's start: its transaction, with the request id claimed, or the earlier request
/// that holds the id.
enum Opened {
    New(sqlx::Transaction<'static, sqlx::Postgres>),
    Replay(storage::StoredRequest),
}

/// A page of at most `size` rows read as `size + 1`, and whether more follow.
fn split_page<T>(mut rows: Vec<T>, size: i32) -> (Vec<T>, bool) {
    let size = usize::try_from(size).unwrap_or(0);
    let more = rows.len() > size;
    rows.truncate(size);
    (rows, more)
}

/// The webhook operations.
pub struct Webhooks {
    pool: PgPool,
    settings: WebhookSettings,
    key: Option<Arc<SealingKey>>,
    request_id_wait_ms: u64,
}

impl Webhooks {
    /// The operations over `pool`; webhooks are off when `webhook.secret_key` is empty.
    pub fn new(pool: PgPool, settings: WebhookSettings, request_id_wait_ms: u64) -> Self {
        let key = SealingKey::from_config(settings.secret_key.expose()).map(Arc::new);
        Self {
            pool,
            settings,
            key,
            request_id_wait_ms,
        }
    }

    /// The settings requests are checked by.
    pub fn settings(&self) -> &WebhookSettings {
        &self.settings
    }

    /// The sealing key, when webhooks are on.
    pub fn sealing_key(&self) -> Option<Arc<SealingKey>> {
        self.key.clone()
    }

    fn key(&self) -> Result<&SealingKey, Error> {
        self.key.as_deref().ok_or(Error::WebhooksNotConfigured)
    }

    /// `CreateWebhookEndpoint`: the stored response and the new secret.
    pub async fn create(&self, command: NewEndpoint, actor: Actor) -> Result<Answered, Error> {
        let key = self.key()?;
        let method = "CreateWebhookEndpoint";
        let id = tandem_runtime::ids::random_id("whe_");
        let mut tx = match self
            .open(method, &command.request_id, &command.request_hash, &id)
            .await?
        {
            Opened::New(tx) => tx,
            Opened::Replay(earlier) => {
                let endpoint_id = earlier.resource_id.clone();
                let response = earlier.replay(method, &command.request_hash)?;
                let secret = self.current_secret(&endpoint_id, 1, &actor).await?;
                return Ok((response, secret));
            }
        };
        if store::count_endpoints_locked(&mut tx).await? >= self.settings.endpoints_max {
            return Err(Error::WebhookEndpointsExhausted);
        }
        // Its start is the fan-out's position, read under the fan-out's lock (after the step in
        // progress commits), so it receives exactly the events no step has fanned out yet.
        let start = store::lock_fanout(&mut tx, true)
            .await?
            .ok_or_else(|| Error::Corrupt("no webhook fan-out position".into()))?;
        let secret = secrets::new_secret()?;
        let time = now();
        let endpoint = StoredEndpoint {
            secret_sealed: key.seal(&id, 1, &secret)?,
            id,
            url: command.destination.url.to_string(),
            description: command.description,
            event_types: command.event_types,
            state: EndpointState::Enabled,
            secret_version: 1,
            previous_secret: None,
            failing_since: None,
            start,
            creator: actor.to_string(),
            updater: None,
            create_time: time,
            update_time: time,
            pending: 0,
        };
        store::insert_endpoint(&mut tx, &endpoint).await?;
        let response = convert::webhooks::created(&endpoint);
        storage::store_response(&mut tx, &command.request_id, &response).await?;
        tx.commit().await?;
        tracing::info!(endpoint_id = %endpoint.id, caller = %actor, "webhook endpoint created");
        Ok((response, Some(secret)))
    }

    /// `GetWebhookEndpoint`.
    pub async fn get(&self, id: &str) -> Result<StoredEndpoint, Error> {
        store::endpoint(&self.pool, id, false)
            .await?
            .ok_or(Error::WebhookEndpointNotFound)
    }

    /// `ListWebhookEndpoints`: a page, oldest first, and whether more follow.
    pub async fn list(
        &self,
        after: Option<(OffsetDateTime, String)>,
        size: i32,
    ) -> Result<(Vec<StoredEndpoint>, bool), Error> {
        let limit = i64::from(size);
        let page = store::list_endpoints(
            &self.pool,
            after.as_ref().map(|(time, id)| (*time, id.as_str())),
            limit + 1,
        )
        .await?;
        Ok(split_page(page, size))
    }

    /// `UpdateWebhookEndpoint`. Enabling a disabled endpoint makes its kept events due at once,
    /// with the schedule from its start.
    pub async fn update(&self, command: EndpointUpdate, actor: Actor) -> Result<Vec<u8>, Error> {
        self.key()?;
        let method = "UpdateWebhookEndpoint";
        let mut tx = match self
            .open(
                method,
                &command.request_id,
                &command.request_hash,
                &command.endpoint_id,
            )
            .await?
        {
            Opened::New(tx) => tx,
            Opened::Replay(earlier) => return earlier.replay(method, &command.request_hash),
        };
        let mut endpoint = store::endpoint(&mut *tx, &command.endpoint_id, true)
            .await?
            .ok_or(Error::WebhookEndpointNotFound)?;
        if let Some(destination) = command.destination {
            endpoint.url = destination.url.to_string();
        }
        if let Some(description) = command.description {
            endpoint.description = description;
        }
        if let Some(types) = command.event_types {
            endpoint.event_types = types;
        }
        let enabled_again = match command.enable {
            Some(true) => {
                let was = endpoint.state;
                endpoint.state = EndpointState::Enabled;
                endpoint.failing_since = None;
                was != EndpointState::Enabled
            }
            Some(false) => {
                endpoint.state = EndpointState::Disabled(DisabledReason::Operator);
                store::park_lanes(&mut tx, &endpoint.id).await?;
                false
            }
            None => false,
        };
        endpoint.updater = Some(actor.to_string());
        endpoint.update_time = now();
        store::update_endpoint(&mut tx, &endpoint).await?;
        if enabled_again {
            store::restart_pending(&mut tx, &endpoint.id).await?;
        }
        let response = convert::webhooks::updated(&endpoint);
        storage::store_response(&mut tx, &command.request_id, &response).await?;
        tx.commit().await?;
        tracing::info!(endpoint_id = %endpoint.id, caller = %actor, "webhook endpoint updated");
        Ok(response)
    }

    /// `DeleteWebhookEndpoint`: its undelivered events are dropped.
    pub async fn delete(&self, command: EndpointChange, actor: Actor) -> Result<Vec<u8>, Error> {
        let method = "DeleteWebhookEndpoint";
        let mut tx = match self
            .open(
                method,
                &command.request_id,
                &command.request_hash,
                &command.endpoint_id,
            )
            .await?
        {
            Opened::New(tx) => tx,
            Opened::Replay(earlier) => return earlier.replay(method, &command.request_hash),
        };
        let mut endpoint = store::endpoint(&mut *tx, &command.endpoint_id, true)
            .await?
            .ok_or(Error::WebhookEndpointNotFound)?;
        endpoint.state = EndpointState::Deleted;
        endpoint.updater = Some(actor.to_string());
        endpoint.update_time = now();
        store::update_endpoint(&mut tx, &endpoint).await?;
        let dropped = store::cancel_pending(&mut tx, &endpoint.id).await?;
        let response = convert::webhooks::deleted(dropped);
        storage::store_response(&mut tx, &command.request_id, &response).await?;
        tx.commit().await?;
        tracing::info!(endpoint_id = %endpoint.id, caller = %actor, dropped, "webhook endpoint deleted");
        Ok(response)
    }

    /// `RotateWebhookSecret`: the stored response and the new secret. The previous secret
    /// signs beside it for `webhook.rotation_overlap_s`.
    pub async fn rotate(&self, command: EndpointChange, actor: Actor) -> Result<Answered, Error> {
        let key = self.key()?;
        let method = "RotateWebhookSecret";
        let mut tx = self.pool.begin().await?;
        let mut endpoint = store::endpoint(&mut *tx, &command.endpoint_id, true)
            .await?
            .ok_or(Error::WebhookEndpointNotFound)?;
        let version = endpoint.secret_version + 1;
        let resource = format!("{}/{version}", endpoint.id);
        // The request id is claimed after the endpoint's lock: its resource names the version.
        let wait_ms = self.request_id_wait_ms;
        let request = (&command.request_id, &command.request_hash);
        if let Some(earlier) =
            storage::claim_request_id(&mut tx, request.0, method, request.1, &resource, wait_ms)
                .await?
        {
            tx.rollback().await?;
            let resource = earlier.resource_id.clone();
            let response = earlier.replay(method, &command.request_hash)?;
            let (id, version) = resource
                .rsplit_once('/')
                .and_then(|(id, v)| Some((id.to_owned(), v.parse::<i64>().ok()?)))
                .ok_or_else(|| Error::Corrupt("a rotation's request without its version".into()))?;
            let secret = self.current_secret(&id, version, &actor).await?;
            return Ok((response, secret));
        }
        let secret = secrets::new_secret()?;
        let time = now();
        let overlap = time::Duration::seconds(
            i64::try_from(self.settings.rotation_overlap_s).unwrap_or(i64::MAX),
        );
        // The previous secret, re-sealed under its own version, signs until the overlap ends.
        endpoint.previous_secret = (overlap > time::Duration::ZERO)
            .then(|| (endpoint.secret_sealed.clone(), time + overlap));
        endpoint.secret_sealed = key.seal(&endpoint.id, version, &secret)?;
        endpoint.secret_version = version;
        endpoint.updater = Some(actor.to_string());
        endpoint.update_time = time;
        store::update_endpoint(&mut tx, &endpoint).await?;
        let response = convert::webhooks::rotated(&endpoint);
        storage::store_response(&mut tx, &command.request_id, &response).await?;
        tx.commit().await?;
        tracing::info!(endpoint_id = %endpoint.id, caller = %actor, version, "webhook secret rotated");
        Ok((response, Some(secret)))
    }

    /// `ListWebhookDeliveries`: a page, newest first, and whether more follow.
    pub async fn deliveries(
        &self,
        query: &DeliveryQuery,
    ) -> Result<(Vec<StoredDelivery>, bool), Error> {
        self.get(&query.endpoint_id).await?;
        let limit = i64::from(query.size);
        let page = store::list_deliveries(
            &self.pool,
            &query.endpoint_id,
            query.state,
            query.event_id.as_deref(),
            query.before,
            limit + 1,
        )
        .await?;
        Ok(split_page(page, query.size))
    }

    /// `RedeliverEvents`: queues again, as new deliveries with the same event ids, the events
    /// of the range the endpoint was sent or is due.
    pub async fn redeliver(&self, command: Redelivery, actor: Actor) -> Result<Vec<u8>, Error> {
        self.key()?;
        let method = "RedeliverEvents";
        let mut tx = match self
            .open(
                method,
                &command.request_id,
                &command.request_hash,
                &command.endpoint_id,
            )
            .await?
        {
            Opened::New(tx) => tx,
            Opened::Replay(earlier) => return earlier.replay(method, &command.request_hash),
        };
        store::endpoint(&mut *tx, &command.endpoint_id, true)
            .await?
            .ok_or(Error::WebhookEndpointNotFound)?;
        // A redelivery's lanes are its own: it goes out now, in order per subject, beside
        // (not behind) an original delivery still waiting for its next attempt.
        let queued = store::redeliver(
            &mut tx,
            &command.endpoint_id,
            command.start,
            command.end,
            self.settings.redeliver_max,
            &command.request_id,
        )
        .await?
        .ok_or(Error::RedeliveryTooLarge)?;
        let response = convert::webhooks::redelivered(queued);
        storage::store_response(&mut tx, &command.request_id, &response).await?;
        tx.commit().await?;
        tracing::info!(endpoint_id = %command.endpoint_id, caller = %actor, queued, "events redelivered");
        Ok(response)
    }

    /// The secret of `endpoint_id` if `version` is still its current one and `caller` made it:
    /// what a replay of the request that made it shows (to anyone else, no secret).
    async fn current_secret(
        &self,
        endpoint_id: &str,
        version: i64,
        caller: &Actor,
    ) -> Result<Option<Secret>, Error> {
        let Some(endpoint) = store::endpoint(&self.pool, endpoint_id, false).await? else {
            return Ok(None);
        };
        let maker = if version == 1 {
            Some(&endpoint.creator)
        } else {
            endpoint.updater.as_ref()
        };
        if endpoint.secret_version != version || maker != Some(&caller.to_string()) {
            return Ok(None);
        }
        self.key()?
            .open(endpoint_id, version, &endpoint.secret_sealed)
            .map(Some)
    }

    /// Opens a mutation's transaction with `request_id` claimed for `resource`, or the earlier
    /// request that holds the id (the transaction rolled back).
    async fn open(
        &self,
        method: &str,
        request_id: &str,
        hash: &[u8],
        resource: &str,
    ) -> Result<Opened, Error> {
        let mut tx = self.pool.begin().await?;
        let wait_ms = self.request_id_wait_ms;
        match storage::claim_request_id(&mut tx, request_id, method, hash, resource, wait_ms)
            .await?
        {
            None => Ok(Opened::New(tx)),
            Some(earlier) => {
                tx.rollback().await?;
                Ok(Opened::Replay(earlier))
            }
        }
    }
}
