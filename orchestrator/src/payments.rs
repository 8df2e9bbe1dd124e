//! Payments: create (allocate and start the saga), read, list, refund, watch. Creating and
//! refunding are idempotent by `request_id`: the id is claimed in the same transaction that
//! records the payment or the refund, so a retry returns the same payment and never a second
//! one.

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_runtime::admission::InFlight;
use tokio::sync::broadcast::error::RecvError;

use crate::domain::booking::{self, BookingContext};
use crate::domain::group::MemberRules;
use crate::domain::planning;
use crate::domain::record::PaymentRecord;
use crate::domain::record::refunds::{RefundError, RefundState};
use crate::error::Error;
use crate::feeds::{Subscription, Update};
use crate::grpc::convert::{self, Violations};
use crate::storage::{self, StoredPayment, now};
use crate::workflow::{Committed, Workflow};

/// The payment operations.
pub struct Payments {
    workflow: Arc<Workflow>,
    request_timeout: Duration,
}

/// What a mutating call brings beside its message.
#[derive(Debug, Default)]
pub struct Call {
    /// The caller's deadline (`grpc-timeout`), if any.
    pub deadline: Option<Duration>,
    /// The caller's `x-request-id`, or the one made for the call.
    pub correlation_id: Option<String>,
    /// The call's admission ticket: the work the call starts keeps it until it ends.
    pub admitted: Option<InFlight>,
}

impl Payments {
    /// Payments driven by `workflow`; waits end before the server's `request_timeout`.
    pub fn new(workflow: Arc<Workflow>, request_timeout: Duration) -> Self {
        Self {
            workflow,
            request_timeout,
        }
    }

    /// How long a call may wait: its own `wanted`, within the caller's deadline and the
    /// server's request timeout, leaving the answer time to travel.
    fn wait_limit(&self, wanted: Duration, deadline: Option<Duration>) -> Duration {
        let margin = Duration::from_millis(100);
        let mut limit = wanted.min(self.request_timeout.saturating_sub(margin));
        if let Some(deadline) = deadline {
            limit = limit.min(deadline.saturating_sub(margin));
        }
        limit
    }

    /// `CreatePayment`: records the payment with its allocation and starts it; with `wait`,
    /// returns once it is terminal or the wait is over.
    pub async fn create(
        &self,
        request: pb::CreatePaymentRequest,
        call: Call,
    ) -> Result<pb::Payment, Error> {
        let Call {
            deadline,
            correlation_id,
            admitted,
        } = call;
        let settings = self.workflow.settings();
        let mut v = Violations::default();
        convert::request_id(&mut v, "request_id", &request.request_id);
        let group_id = convert::resource_id(&mut v, "card_group_id", "cg_", &request.card_group_id);
        let invoice = convert::invoice(&mut v, request.invoice.as_ref(), settings.amount_minor_max);
        let wait_ms = match request.wait_timeout_ms {
            0 => 30_000,
            ms if (1..=i64::try_from(settings.wait_timeout_ms_max).unwrap_or(i64::MAX))
                .contains(&ms) =>
            {
                ms as u64
            }
            _ => {
                v.add(
                    "wait_timeout_ms",
                    format!("must be 0 or 1-{}", settings.wait_timeout_ms_max),
                );
                0
            }
        };
        let invoice = v
            .finish(invoice)?
            .ok_or_else(|| Error::invalid("invoice", "is invalid"))?;
        // `wait` and its timeout are not part of the request's identity.
        let mut identity = request.clone();
        identity.wait = false;
        identity.wait_timeout_ms = 0;
        let hash = convert::request_hash("CreatePayment", &identity);
        let id = tandem_runtime::ids::random_id("pay_");
        let pool = self.workflow.pool();
        let mut tx = pool.begin().await?;
        if let Some(earlier) = storage::claim_request_id(
            &mut tx,
            &request.request_id,
            "CreatePayment",
            &hash,
            &id,
            settings.request_id_wait_ms,
        )
        .await?
        {
            tx.rollback().await?;
            if earlier.method != "CreatePayment" || earlier.request_hash != hash {
                return Err(Error::RequestIdReused);
            }
            return self
                .answer(&earlier.resource_id, request.wait, wait_ms, deadline)
                .await;
        }
        let group = storage::group(&mut *tx, &group_id, false)
            .await?
            .ok_or(Error::CardGroupNotFound)?;
        if group.archived {
            return Err(Error::CardGroupArchived);
        }
        let wire_group = convert::group_to_wire(&group)?;
        let mut v = Violations::default();
        let input = convert::group_input(&mut v, &wire_group)
            .ok_or_else(|| Error::Corrupt(format!("card group {group_id} does not check")))?;
        let (policy, prefix) = match request.policy_override.as_ref() {
            Some(wire) => (
                convert::policy(
                    &mut v,
                    "policy_override",
                    wire,
                    &input.members,
                    Some(invoice.amount.currency),
                ),
                "policy_override",
            ),
            None => (Some(input.policy.clone()), "card_group.default_policy"),
        };
        let policy = v
            .finish(policy)?
            .ok_or_else(|| Error::invalid(prefix, "is invalid"))?;
        let now = now();
        let month = storage::month_of(now);
        let tokens: Vec<String> = input.members.iter().map(|m| m.token.clone()).collect();
        let spent = storage::month_to_date(&mut *tx, &tokens, month).await?;
        let month_to_date = |rules: &MemberRules| {
            let key = (rules.token.clone(), rules.currency.code().to_owned());
            spent.get(&key).copied().unwrap_or(0)
        };
        let plan = match planning::plan(&input.members, &policy, &invoice, month_to_date, now) {
            Ok(plan) => plan,
            Err(errors) => {
                let mut v = Violations::default();
                if request.policy_override.is_some() {
                    v.add_policy(errors, "policy_override");
                } else {
                    for error in errors {
                        if error.field.starts_with("policy") {
                            v.add(
                                "card_group_id",
                                format!("the group's default policy: {}", error.description),
                            );
                        } else {
                            v.add(error.field, error.description);
                        }
                    }
                }
                return v.finish(()).map(|()| pb::Payment::default());
            }
        };
        let last4 = |token: &str| {
            wire_group
                .members
                .iter()
                .find(|m| m.token == token)
                .map(|m| m.last4.clone())
                .unwrap_or_default()
        };
        let snapshots = planning::snapshots(&input.members, &policy.windows, now, last4);
        let (mut record, created) = PaymentRecord::new(
            id.clone(),
            invoice.id.clone(),
            invoice.cost_center.clone(),
            plan.saga,
            snapshots,
            now,
        );
        record.correlation_id = correlation_id;
        let context = BookingContext {
            payment_id: id.clone(),
            invoice_id: invoice.id.clone(),
            billing_account: input.billing_account_id.clone(),
            cost_center: invoice.cost_center.clone(),
        };
        let accounts = self.workflow.unknown_accounts(
            booking::accounts(&context, &record.saga)
                .map_err(|e| Error::Corrupt(format!("ledger id: {e}")))?,
        );
        if !accounts.is_empty() {
            tandem_ledger::ledger::create_accounts(&mut tx, &accounts).await?;
        }
        let mut stored = StoredPayment {
            record,
            request: identity.encode_to_vec(),
            policy: Some(
                request
                    .policy_override
                    .as_ref()
                    .or(wire_group.default_policy.as_ref())
                    .map(prost::Message::encode_to_vec)
                    .unwrap_or_default(),
            ),
            card_group_id: group_id,
            billing_account_id: input.billing_account_id,
            events: 0,
            lease_owner: Some(self.workflow.owner().to_owned()),
            lease_until: self.workflow.lease_until(now),
            update_time: now,
        };
        storage::insert_payment(&mut tx, &stored, &request.request_id).await?;
        self.workflow
            .save(&mut tx, &mut stored, &[created], now)
            .await?;
        tx.commit().await?;
        self.workflow.remember_accounts(accounts);
        self.workflow
            .announce(&id, stored.record.saga.state.is_terminal());
        self.workflow.spawn(id.clone(), admitted);
        self.answer(&id, request.wait, wait_ms, deadline).await
    }

    /// The payment `id`, after waiting for its end when asked.
    async fn answer(
        &self,
        id: &str,
        wait: bool,
        wait_ms: u64,
        deadline: Option<Duration>,
    ) -> Result<pb::Payment, Error> {
        if !wait {
            return self.read(id).await;
        }
        let limit = self.wait_limit(Duration::from_millis(wait_ms), deadline);
        let until = tokio::time::Instant::now() + limit;
        let mut committed = self.workflow.subscribe();
        loop {
            let payment = self.load(id).await?;
            if payment.record.saga.state.is_terminal() {
                return Ok(convert::payment_to_wire(&payment, payment.update_time));
            }
            let poll = tokio::time::sleep(Duration::from_millis(
                self.workflow.settings().watch_poll_ms,
            ));
            // Only a commit that left the payment terminal is worth a read before the end of
            // the wait; the answer at the end is read then, not the snapshot above.
            tokio::select! {
                () = tokio::time::sleep_until(until) => return self.read(id).await,
                () = wait_for(&mut committed, id, true) => {}
                () = poll => {}
            }
        }
    }

    async fn load(&self, id: &str) -> Result<StoredPayment, Error> {
        storage::payment(self.workflow.pool(), id, false)
            .await?
            .ok_or(Error::PaymentNotFound)
    }

    async fn read(&self, id: &str) -> Result<pb::Payment, Error> {
        let payment = self.load(id).await?;
        Ok(convert::payment_to_wire(&payment, payment.update_time))
    }

    /// `GetPayment`.
    pub async fn get(&self, request: pb::GetPaymentRequest) -> Result<pb::Payment, Error> {
        let mut v = Violations::default();
        let id = convert::resource_id(&mut v, "payment_id", "pay_", &request.payment_id);
        v.finish(())?;
        self.read(&id).await
    }

    /// `ListPayments`, newest first.
    pub async fn list(
        &self,
        request: pb::ListPaymentsRequest,
    ) -> Result<pb::ListPaymentsResponse, Error> {
        let mut v = Violations::default();
        let size = convert::page_size(
            &mut v,
            request.page_size,
            self.workflow.settings().page_size_max,
        );
        if !request.card_group_id.is_empty() {
            convert::resource_id(&mut v, "card_group_id", "cg_", &request.card_group_id);
        }
        let state = convert::state_filter(&mut v, request.state);
        let mut filter = storage::PaymentFilter {
            card_group_id: Some(request.card_group_id.clone()).filter(|s| !s.is_empty()),
            state,
            invoice_id: Some(request.invoice_id.clone()).filter(|s| !s.is_empty()),
            billing_account_id: Some(request.billing_account_id.clone()).filter(|s| !s.is_empty()),
        };
        let scope = format!(
            "{}|{}|{}|{}",
            request.card_group_id, request.state, request.invoice_id, request.billing_account_id
        );
        let after = if request.page_token.is_empty() {
            None
        } else {
            let cursor = convert::decode_page_token(&request.page_token, scope.as_bytes());
            if cursor.is_none() {
                v.add(
                    "page_token",
                    "is not a page token of this list with these filters",
                );
            }
            cursor
        };
        v.finish(())?;
        filter.state = state;
        let mut rows = storage::list_payments(
            self.workflow.pool(),
            &filter,
            after.as_ref(),
            i64::from(size) + 1,
        )
        .await?;
        let more = rows.len() > size as usize;
        rows.truncate(size as usize);
        let next_page_token = match (more, rows.last()) {
            (true, Some((last, create_time))) => convert::encode_page_token(
                &storage::Cursor {
                    create_time: *create_time,
                    id: last.record.id.clone(),
                },
                scope.as_bytes(),
            ),
            _ => String::new(),
        };
        Ok(pb::ListPaymentsResponse {
            payments: rows
                .iter()
                .map(|(p, _)| convert::payment_to_wire(p, p.update_time))
                .collect(),
            next_page_token,
        })
    }

    /// `RefundPayment`: records the refund spread over the captured legs, drives it, and
    /// answers once it is done or the deadline nears.
    pub async fn refund(
        &self,
        request: pb::RefundPaymentRequest,
        call: Call,
    ) -> Result<pb::RefundPaymentResponse, Error> {
        let Call {
            deadline, admitted, ..
        } = call;
        let mut v = Violations::default();
        convert::request_id(&mut v, "request_id", &request.request_id);
        let id = convert::resource_id(&mut v, "payment_id", "pay_", &request.payment_id);
        if request.reason.chars().count() > 200 || request.reason.chars().any(char::is_control) {
            v.add(
                "reason",
                "must be at most 200 characters without control characters",
            );
        }
        if let Some(amount) = &request.amount {
            if tandem_money::Currency::parse(&amount.currency_code).is_err() {
                v.add(
                    "amount.currency_code",
                    "must be a known ISO 4217 currency code",
                );
            }
            if amount.minor_units <= 0 {
                v.add("amount.minor_units", "must be positive");
            }
        }
        v.finish(())?;
        let hash = convert::request_hash("RefundPayment", &request);
        let refund_id = tandem_runtime::ids::random_id("prf_");
        let mut tx = self.workflow.pool().begin().await?;
        let refund_id = match storage::claim_request_id(
            &mut tx,
            &request.request_id,
            "RefundPayment",
            &hash,
            &refund_id,
            self.workflow.settings().request_id_wait_ms,
        )
        .await?
        {
            Some(earlier) => {
                tx.rollback().await?;
                if earlier.method != "RefundPayment" || earlier.request_hash != hash {
                    return Err(Error::RequestIdReused);
                }
                earlier.resource_id
            }
            None => {
                let mut stored = storage::payment(&mut *tx, &id, true)
                    .await?
                    .ok_or(Error::PaymentNotFound)?;
                if let Some(amount) = &request.amount
                    && amount.currency_code != stored.record.currency().code()
                {
                    return Err(Error::CurrencyMismatch);
                }
                let now = now();
                let (_, events) = stored
                    .record
                    .plan_refund(
                        refund_id.clone(),
                        request.request_id.clone(),
                        request.amount.as_ref().map(|a| a.minor_units),
                        request.reason.clone(),
                        now,
                    )
                    .map_err(|e| match e {
                        RefundError::NotRefundable => Error::PaymentNotRefundable,
                        RefundError::AmountExceedsRefundable => Error::AmountExceedsRefundable,
                        RefundError::LimitReached => Error::RefundLimitReached,
                    })?;
                // The refund is driven by whoever holds the payment's lease; a settled payment
                // is leased to this instance now.
                let take = stored.lease_owner.is_none() || stored.lease_until <= now;
                if take {
                    stored.lease_owner = Some(self.workflow.owner().to_owned());
                    stored.lease_until = self.workflow.lease_until(now);
                }
                self.workflow
                    .save(&mut tx, &mut stored, &events, now)
                    .await?;
                tx.commit().await?;
                self.workflow
                    .announce(&id, stored.record.saga.state.is_terminal());
                if take {
                    self.workflow.spawn(id.clone(), admitted);
                }
                refund_id
            }
        };
        let limit = self.wait_limit(Duration::from_secs(30), deadline);
        let until = tokio::time::Instant::now() + limit;
        let mut committed = self.workflow.subscribe();
        loop {
            let payment = self.load(&id).await?;
            let refund = payment
                .record
                .refunds
                .iter()
                .find(|r| r.id == refund_id)
                .ok_or_else(|| Error::Corrupt(format!("refund {refund_id} missing")))?;
            let done = refund.state != RefundState::Pending;
            if done || tokio::time::Instant::now() >= until {
                return Ok(pb::RefundPaymentResponse {
                    refund: Some(convert::refund_to_wire(&payment.record, refund)),
                    payment: Some(convert::payment_to_wire(&payment, payment.update_time)),
                });
            }
            let poll = tokio::time::sleep(Duration::from_millis(
                self.workflow.settings().watch_poll_ms,
            ));
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                () = wait_for(&mut committed, &id, false) => {}
                () = poll => {}
            }
        }
    }

    /// `WatchPayment`: the events after `after_sequence`, then new ones as they commit, until
    /// the payment is settled and every event was sent, or `watch_ms_max`.
    pub async fn watch(
        &self,
        request: pb::WatchPaymentRequest,
    ) -> Result<impl futures::Stream<Item = Result<pb::PaymentEvent, Error>> + use<>, Error> {
        let mut v = Violations::default();
        let id = convert::resource_id(&mut v, "payment_id", "pay_", &request.payment_id);
        if request.after_sequence < 0 {
            v.add("after_sequence", "must not be negative");
        }
        v.finish(())?;
        // An unknown payment is an error of the call, not of the stream.
        self.load(&id).await?;
        let workflow = self.workflow.clone();
        let after = request.after_sequence;
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let until = tokio::time::Instant::now()
                + Duration::from_millis(workflow.settings().watch_ms_max);
            let stream = Watcher {
                pool: workflow.pool().clone(),
                id,
                after,
                sender,
            };
            // Subscribed before the first catch-up, so that nothing committed in between is
            // missed: it is either read by the catch-up or comes on the feed.
            let subscription = workflow.feeds().subscribe(&stream.id);
            let client = stream.sender.clone();
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                () = client.closed() => {}
                () = stream.run(subscription) => {}
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(receiver))
    }
}

/// One `WatchPayment` stream: the events after `after`, from the database until it caught up,
/// then from the payment's feed.
struct Watcher {
    pool: sqlx::PgPool,
    id: String,
    after: i64,
    sender: tokio::sync::mpsc::Sender<Result<pb::PaymentEvent, Error>>,
}

/// Whether a stream goes on.
enum Flow {
    Continue,
    End,
}

impl Watcher {
    /// Sends events until the payment is settled and every event was sent.
    async fn run(mut self, mut subscription: Subscription) {
        if let Flow::End = self.catch_up().await {
            return;
        }
        loop {
            let flow = match subscription.updates.recv().await {
                Ok(update) => self.apply(&update).await,
                Err(RecvError::Lagged(_)) => self.catch_up().await,
                // The feed lives as long as a subscription does.
                Err(RecvError::Closed) => Flow::End,
            };
            if let Flow::End = flow {
                return;
            }
        }
    }

    /// Reads and sends every event after `after` from the database.
    async fn catch_up(&mut self) -> Flow {
        const PAGE: i64 = 100;
        let progress = match storage::progress(&self.pool, &self.id).await {
            Ok(Some(progress)) => progress,
            Ok(None) => return self.fail(Error::PaymentNotFound).await,
            Err(error) => return self.fail(error).await,
        };
        loop {
            let events = match storage::events_after(&self.pool, &self.id, self.after, PAGE).await {
                Ok(events) => events,
                Err(error) => return self.fail(error).await,
            };
            let last_page = events.len() < PAGE as usize;
            for (sequence, body) in events {
                if let Flow::End = self.send(sequence, &body).await {
                    return Flow::End;
                }
            }
            if last_page {
                break;
            }
        }
        let (total, settled) = progress;
        if settled && self.after >= total {
            Flow::End
        } else {
            Flow::Continue
        }
    }

    /// Sends what `update` brings that this stream has not sent; catches up from the database
    /// if the update shows events this stream never saw.
    async fn apply(&mut self, update: &Update) -> Flow {
        for (sequence, body) in &update.events {
            if *sequence <= self.after {
                continue;
            }
            if *sequence != self.after + 1 {
                return self.catch_up().await;
            }
            if let Flow::End = self.send(*sequence, body).await {
                return Flow::End;
            }
        }
        if self.after < update.total {
            return self.catch_up().await;
        }
        if update.settled {
            Flow::End
        } else {
            Flow::Continue
        }
    }

    async fn send(&mut self, sequence: i64, body: &[u8]) -> Flow {
        let event =
            pb::PaymentEvent::decode(body).map_err(|e| Error::Corrupt(format!("event: {e}")));
        if self.sender.send(event).await.is_err() {
            return Flow::End;
        }
        self.after = sequence;
        Flow::Continue
    }

    async fn fail(&self, error: Error) -> Flow {
        let _ = self.sender.send(Err(error)).await;
        Flow::End
    }
}

/// Returns once a commit of payment `id` is announced (with `terminal_only`, one that left it
/// terminal), or announcements were missed.
async fn wait_for(
    committed: &mut tokio::sync::broadcast::Receiver<Committed>,
    id: &str,
    terminal_only: bool,
) {
    loop {
        match committed.recv().await {
            Ok(change) if change.payment_id == id && (change.terminal || !terminal_only) => {
                return;
            }
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => return,
            Err(RecvError::Closed) => {
                std::future::pending::<()>().await;
            }
        }
    }
}
