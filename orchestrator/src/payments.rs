//! Payments: create (plan and start the saga), read, list, refund, watch, in domain terms: the
//! handlers check each request into a [`crate::commands`] value and turn the stored payment
//! they get back into its wire message. Creating and refunding are idempotent by `request_id`:
//! the id is claimed in the same transaction that records the payment or the refund, so a
//! retry returns the same payment and never a second one.

use std::sync::Arc;
use std::time::Duration;

use tandem_runtime::admission::InFlight;
use tokio::sync::broadcast::error::RecvError;

use crate::commands::{
    EventQuery, NewNote, NewPayment, NewRefund, NewResolution, NewReview, PaymentQuery, Watch,
};
use crate::config::{PaymentSettings, RiskSettings};
use crate::domain::actor::Actor;
use crate::domain::allocation::PolicyError;
use crate::domain::booking;
use crate::domain::group::MemberRules;
use crate::domain::planning;
use crate::domain::record::PaymentRecord;
use crate::domain::record::events::Event;
use crate::domain::record::operator::{Decision, ResolveError};
use crate::domain::record::refunds::{RefundError, RefundState};
use crate::domain::record::review::ReviewError;
use crate::domain::risk;
use crate::domain::saga::{LegState, PaymentState};
use crate::error::Error;
use crate::feeds::{Subscription, Update};
use crate::fx::Fx;
use crate::grpc::convert;
use crate::metrics::Observed;
use crate::storage::risk::{Counts, PaymentFeatures};
use crate::storage::{self, FeedPage, StoredPayment};
use crate::workflow::{Committed, Round, Workflow, booking_context, outbox_rows};
use tandem_runtime::fields::Violations;
use tandem_runtime::time::now_micros as now;

/// The payment operations.
pub struct Payments {
    workflow: Arc<Workflow>,
    fx: Arc<Fx>,
    risk: RiskSettings,
    request_timeout: Duration,
}

/// What a mutating call brings beside its message.
#[derive(Debug)]
pub struct Call {
    /// The caller's deadline (`grpc-timeout`), if any.
    pub deadline: Option<Duration>,
    /// The caller's `x-request-id`, or the one made for the call.
    pub correlation_id: Option<String>,
    /// The call's admission ticket: the work the call starts keeps it until it ends.
    pub admitted: Option<InFlight>,
    /// Who calls, from the client certificate: recorded with what the call changes.
    pub actor: Actor,
}

impl Payments {
    /// Payments driven by `workflow`, converting at `fx`'s rates, assessed and reviewed under
    /// `risk`; waits end before the server's `request_timeout`.
    pub fn new(
        workflow: Arc<Workflow>,
        fx: Arc<Fx>,
        risk: RiskSettings,
        request_timeout: Duration,
    ) -> Self {
        Self {
            workflow,
            fx,
            risk,
            request_timeout,
        }
    }

    /// The settings payments are checked and driven by.
    pub fn settings(&self) -> &PaymentSettings {
        self.workflow.settings()
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

    /// `CreatePayment`: records the payment with its plan and starts it; with `wait`, returns
    /// once it is terminal or the wait is over.
    pub async fn create(&self, payment: NewPayment, call: Call) -> Result<StoredPayment, Error> {
        let Call {
            deadline,
            correlation_id,
            admitted,
            actor,
        } = call;
        let id = tandem_runtime::ids::random_id("pay_");
        let mut tx = self.workflow.pool().begin().await?;
        if let Some(earlier) = storage::claim_request_id(
            &mut tx,
            &payment.request_id,
            "CreatePayment",
            &payment.request_hash,
            &id,
            self.settings().request_id_wait_ms,
        )
        .await?
        {
            tx.rollback().await?;
            let resource = earlier.resource_of("CreatePayment", &payment.request_hash)?;
            return self
                .answer(resource, payment.wait, payment.wait_ms, deadline)
                .await;
        }
        let (wait, wait_ms, request_id) =
            (payment.wait, payment.wait_ms, payment.request_id.clone());
        let (mut stored, mut events, features) =
            self.prepare(&mut tx, payment, id.clone(), actor).await?;
        stored.record.correlation_id = correlation_id;
        let now = stored.update_time;
        let accounts = self.workflow.unknown_accounts(
            booking::accounts(&booking_context(&stored), &stored.record.saga)
                .map_err(|e| Error::Corrupt(format!("ledger id: {e}")))?,
        );
        if !accounts.is_empty() {
            tandem_ledger::ledger::create_accounts(&mut tx, &accounts).await?;
        }
        // The first round's intents commit with the payment.
        let (steps, refunds) = self
            .workflow
            .plan_round(&mut tx, &mut stored, &mut events, now)
            .await?;
        let rows = outbox_rows(&mut stored, &events, now)?;
        storage::insert_payment(&mut tx, &stored, &request_id, &rows, &features).await?;
        tx.commit().await?;
        Observed::of(&stored.record, &stored.card_group_id, &events).record();
        self.workflow.remember_accounts(accounts);
        self.workflow
            .announce(&id, stored.record.saga.state.is_at_rest());
        let first = Round::of(steps, refunds, stored.record.clone());
        self.workflow.spawn_from(id.clone(), admitted, Some(first));
        // The payment as just committed: no read unless the wait needs one.
        if !wait || stored.record.saga.state.is_at_rest() {
            return Ok(stored);
        }
        self.wait(&id, wait_ms, deadline).await
    }

    /// The new payment by `creator`, planned from its card group (read in `tx`) and the spend
    /// of the group's cards this month, assessed under its billing account's risk policy,
    /// leased to this instance; with its `payment.created` event, its note's event when it has
    /// one, and its `payment.risk_assessed` event; and what it adds to the risk features.
    async fn prepare(
        &self,
        tx: &mut sqlx::PgConnection,
        payment: NewPayment,
        id: String,
        creator: Actor,
    ) -> Result<(StoredPayment, Vec<Event>, PaymentFeatures), Error> {
        let stored = storage::group(&mut *tx, &payment.card_group_id, false)
            .await?
            .ok_or(Error::CardGroupNotFound)?;
        if stored.archived {
            return Err(Error::CardGroupArchived);
        }
        let group = convert::groups::group_data(&stored)?;
        let members = group.rules();
        let mut v = Violations::default();
        let currency = payment.invoice.amount.currency;
        let (policy, prefix, policy_bytes) = match payment.policy_override {
            Some(given) => {
                let (policy, violations) = (given.check)(&members, currency);
                v.extend(violations);
                (policy, "policy_override", given.encoded)
            }
            None => (
                Some(group.policy.clone()),
                "card_group.default_policy",
                group.policy_given.clone(),
            ),
        };
        let policy = v
            .finish::<_, Error>(policy)?
            .ok_or_else(|| Error::invalid(prefix, "is invalid"))?;
        let now = now();
        let tokens: Vec<String> = members.iter().map(|m| m.token.clone()).collect();
        // What planning and risk read, in one statement: this month's spend of the group's
        // cards, the account's risk policy and the features it is assessed against.
        let (spent, risk_policy, features) = storage::risk::payment_reads(
            &mut *tx,
            &tokens,
            storage::month_of(now),
            &group.billing_account_id,
            &payment.card_group_id,
            currency,
            now,
        )
        .await?;
        let month_to_date = |rules: &MemberRules| {
            let key = (rules.token.clone(), rules.currency.code().to_owned());
            spent.get(&key).copied().unwrap_or(0)
        };
        let invoice = &payment.invoice;
        // The rates the payment may convert at, fixed now (a single-currency payment reads
        // none). A member without a fresh rate takes no part; the payment is refused for the
        // rate only when the others cannot pay it in full.
        let needed = planning::conversions_needed(&members, &policy, invoice);
        let picked = self.fx.quotes(&mut *tx, currency, &needed, now).await?;
        let planned = planning::plan(
            &members,
            &policy,
            invoice,
            month_to_date,
            now,
            picked.quotes,
        );
        if let Some(problem) = picked.problems.first() {
            let short = match &planned {
                Ok(plan) => !plan.uncovered.is_empty(),
                Err(errors) => errors.iter().any(PolicyError::is_unpayable),
            };
            if short {
                return Err(crate::fx::rate_error(problem));
            }
        }
        let plan = planned.map_err(|errors| {
            convert::payments::plan_violations(errors, prefix == "policy_override")
        })?;
        let snapshots =
            planning::snapshots(&members, &policy.windows, now, |token| group.last4(token));
        let (mut record, created) = PaymentRecord::new(
            id,
            invoice.id.clone(),
            invoice.cost_center.clone(),
            plan.saga,
            snapshots,
            creator.clone(),
            now,
        );
        let mut events = vec![created];
        if let Some(note) = payment.note {
            let (_, added) = record
                .add_note(note, creator, now)
                .ok_or(Error::NoteLimitReached)?;
            events.push(added);
        }
        // Risk, before any step, from the features read before planning; the payment's own
        // counts ride its insert.
        let subject = record.risk_subject(&group.billing_account_id, &payment.card_group_id, now);
        let tokens: Vec<String> = subject.cards.iter().map(|c| c.token.clone()).collect();
        let assessment = risk::assess(&risk_policy, &features, &subject);
        let blocked = assessment.action == risk::Action::Block;
        events.extend(record.assess(assessment, self.risk.review_timeout_s, now));
        // A blocked payment counts in the velocity features, but neither sets the account's
        // usual amount nor makes its cards known: a refused attempt must not ease the next.
        let mut cards = if blocked { Vec::new() } else { tokens };
        cards.sort_unstable();
        let features = PaymentFeatures {
            counts: Counts::of(&risk::payment_counts(&subject)),
            history: (!blocked).then_some((currency, invoice.amount.minor_units)),
            cards,
        };
        let stored = StoredPayment {
            record,
            request: payment.request,
            policy: Some(policy_bytes),
            card_group_id: payment.card_group_id,
            billing_account_id: group.billing_account_id,
            events: 0,
            lease_owner: Some(self.workflow.owner().to_owned()),
            lease_until: self.workflow.lease_until(now),
            update_time: now,
        };
        Ok((stored, events, features))
    }

    /// The payment `id`, after waiting for its end when asked.
    async fn answer(
        &self,
        id: &str,
        wait: bool,
        wait_ms: u64,
        deadline: Option<Duration>,
    ) -> Result<StoredPayment, Error> {
        let payment = self.get(id).await?;
        if !wait || payment.record.saga.state.is_at_rest() {
            return Ok(payment);
        }
        self.wait(id, wait_ms, deadline).await
    }

    /// The payment `id` once it is terminal, or as it is when the wait is over. While this
    /// instance drives it, the drive's commits say when it ends and nothing is read before;
    /// otherwise (another instance drives it) it is read every `watch_poll_ms`.
    async fn wait(
        &self,
        id: &str,
        wait_ms: u64,
        deadline: Option<Duration>,
    ) -> Result<StoredPayment, Error> {
        let limit = self.wait_limit(Duration::from_millis(wait_ms), deadline);
        let until = tokio::time::Instant::now() + limit;
        let mut committed = self.workflow.subscribe();
        let poll_every = Duration::from_millis(self.settings().watch_poll_ms);
        loop {
            // Only a commit that left the payment terminal is worth a read before the end of
            // the wait; the answer at the end is read then.
            tokio::select! {
                () = tokio::time::sleep_until(until) => return self.get(id).await,
                () = wait_for(&mut committed, id, true) => {}
                () = tokio::time::sleep(poll_every) => {
                    if self.workflow.is_driving(id) {
                        continue;
                    }
                }
            }
            let payment = self.get(id).await?;
            if payment.record.saga.state.is_at_rest() {
                return Ok(payment);
            }
        }
    }

    /// `GetPayment`.
    pub async fn get(&self, id: &str) -> Result<StoredPayment, Error> {
        storage::payment(self.workflow.pool(), id, false)
            .await?
            .ok_or(Error::PaymentNotFound)
    }

    /// `ListPayments`, newest first: a page of payments with their creation times, and whether
    /// more follow.
    pub async fn list(
        &self,
        query: &PaymentQuery,
    ) -> Result<(Vec<(StoredPayment, time::OffsetDateTime)>, bool), Error> {
        let mut rows = storage::list_payments(
            self.workflow.pool(),
            &query.filter,
            query.after.as_ref(),
            i64::from(query.size) + 1,
        )
        .await?;
        let size = query.size as usize;
        let more = rows.len() > size;
        rows.truncate(size);
        Ok((rows, more))
    }

    /// `RefundPayment`: records the refund spread over the captured legs, drives it, and
    /// answers once it is done or the deadline nears, with the refund's id.
    pub async fn refund(
        &self,
        refund: NewRefund,
        call: Call,
    ) -> Result<(StoredPayment, String), Error> {
        let Call {
            deadline,
            admitted,
            actor,
            ..
        } = call;
        let refund_id = self.record_refund(&refund, admitted, actor).await?;
        let id = refund.payment_id;
        let limit = self.wait_limit(Duration::from_secs(30), deadline);
        let until = tokio::time::Instant::now() + limit;
        let mut committed = self.workflow.subscribe();
        loop {
            let payment = self.get(&id).await?;
            let done = payment.refund(&refund_id)?.state != RefundState::Pending;
            if done || tokio::time::Instant::now() >= until {
                return Ok((payment, refund_id));
            }
            let poll = tokio::time::sleep(Duration::from_millis(self.settings().watch_poll_ms));
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                () = wait_for(&mut committed, &id, false) => {}
                () = poll => {}
            }
        }
    }

    /// Claims the refund's request id and records the refund (PENDING), unless the id was
    /// used for it before; returns the refund's id.
    async fn record_refund(
        &self,
        refund: &NewRefund,
        admitted: Option<InFlight>,
        requester: Actor,
    ) -> Result<String, Error> {
        let refund_id = tandem_runtime::ids::random_id("prf_");
        let mut tx = self.workflow.pool().begin().await?;
        if let Some(earlier) = storage::claim_request_id(
            &mut tx,
            &refund.request_id,
            "RefundPayment",
            &refund.request_hash,
            &refund_id,
            self.settings().request_id_wait_ms,
        )
        .await?
        {
            tx.rollback().await?;
            return Ok(earlier
                .resource_of("RefundPayment", &refund.request_hash)?
                .to_owned());
        }
        let id = &refund.payment_id;
        let mut stored = storage::payment(&mut *tx, id, true)
            .await?
            .ok_or(Error::PaymentNotFound)?;
        if let Some(amount) = refund.amount
            && amount.currency != stored.record.currency()
        {
            return Err(Error::CurrencyMismatch);
        }
        let now = now();
        let (_, events) = stored
            .record
            .plan_refund(
                refund_id.clone(),
                refund.request_id.clone(),
                refund.amount.map(|a| a.minor_units),
                refund.reason.clone(),
                requester,
                now,
            )
            .map_err(|e| match e {
                RefundError::NotRefundable => Error::PaymentNotRefundable,
                RefundError::AmountExceedsRefundable => Error::AmountExceedsRefundable,
                RefundError::LimitReached => Error::RefundLimitReached,
            })?;
        // The refund is driven by whoever holds the payment's lease; a settled payment is
        // leased to this instance now.
        let take = stored.lease_owner.is_none() || stored.lease_until <= now;
        if take {
            stored.lease_owner = Some(self.workflow.owner().to_owned());
            stored.lease_until = self.workflow.lease_until(now);
        }
        let observed = self
            .workflow
            .save(&mut tx, &mut stored, &events, now)
            .await?;
        tx.commit().await?;
        observed.record();
        self.workflow
            .announce(id, stored.record.saga.state.is_at_rest());
        if take {
            self.workflow.spawn(id.clone(), admitted);
        }
        Ok(refund_id)
    }

    /// `ReviewPayment`: records the reviewer's verdict on a payment in review (once per request
    /// id) with the intents of its captures or voids, and drives it on; the payment as the
    /// verdict left it. Four eyes: the payment's creator may not review it.
    pub async fn review(&self, review: NewReview, call: Call) -> Result<StoredPayment, Error> {
        let Call {
            admitted, actor, ..
        } = call;
        let method = "ReviewPayment";
        let mut tx = self.workflow.pool().begin().await?;
        if let Some(earlier) = storage::claim_request_id(
            &mut tx,
            &review.request_id,
            method,
            &review.request_hash,
            &review.payment_id,
            self.settings().request_id_wait_ms,
        )
        .await?
        {
            tx.rollback().await?;
            return self
                .get(earlier.resource_of(method, &review.request_hash)?)
                .await;
        }
        let id = &review.payment_id;
        let mut stored = storage::payment(&mut *tx, id, true)
            .await?
            .ok_or(Error::PaymentNotFound)?;
        let now = now();
        let events = stored
            .record
            .decide_review(review.verdict, Some(actor.clone()), review.note, now)
            .map_err(|e| match e {
                ReviewError::NotInReview => Error::PaymentNotInReview,
                ReviewError::SameIdentity => Error::SameIdentity,
            })?;
        // The payment waits leased to nobody; the reviewer's instance drives it on, its
        // captures' or voids' intents committed with the verdict.
        let stored = self
            .commit_and_drive(tx, stored, events, now, admitted)
            .await?;
        tracing::info!(
            payment_id = %id,
            verdict = ?review.verdict,
            reviewer = %actor,
            "payment reviewed"
        );
        Ok(stored)
    }

    /// Leases a payment a person moved on (a verdict, a resolution) to this instance, commits
    /// `tx` with the change, its `events` and the intents of its next round, and drives it from
    /// that round.
    async fn commit_and_drive(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
        mut stored: StoredPayment,
        mut events: Vec<Event>,
        now: time::OffsetDateTime,
        admitted: Option<InFlight>,
    ) -> Result<StoredPayment, Error> {
        stored.lease_owner = Some(self.workflow.owner().to_owned());
        stored.lease_until = self.workflow.lease_until(now);
        let (steps, refunds) = self
            .workflow
            .plan_round(&mut tx, &mut stored, &mut events, now)
            .await?;
        let observed = self
            .workflow
            .save(&mut tx, &mut stored, &events, now)
            .await?;
        tx.commit().await?;
        observed.record();
        let id = stored.record.id.clone();
        self.workflow
            .announce(&id, stored.record.saga.state.is_at_rest());
        let first = Round::of(steps, refunds, stored.record.clone());
        self.workflow.spawn_from(id, admitted, Some(first));
        stored.update_time = now;
        Ok(stored)
    }

    /// `ResolvePayment`: records a treasury operator's decision on a payment that needs one
    /// (once per request id), with what it books (a confirmed capture or void) and the intents
    /// of what it sends again, and drives the payment on; the payment as the decision left it.
    pub async fn resolve(
        &self,
        resolution: NewResolution,
        call: Call,
    ) -> Result<StoredPayment, Error> {
        let Call {
            admitted, actor, ..
        } = call;
        let method = "ResolvePayment";
        if resolution.decision == Decision::Confirm {
            self.check_confirmed(&resolution.payment_id).await?;
        }
        let mut tx = self.workflow.pool().begin().await?;
        if let Some(earlier) = storage::claim_request_id(
            &mut tx,
            &resolution.request_id,
            method,
            &resolution.request_hash,
            &resolution.payment_id,
            self.settings().request_id_wait_ms,
        )
        .await?
        {
            tx.rollback().await?;
            return self
                .get(earlier.resource_of(method, &resolution.request_hash)?)
                .await;
        }
        let id = &resolution.payment_id;
        let mut stored = storage::payment(&mut *tx, id, true)
            .await?
            .ok_or(Error::PaymentNotFound)?;
        let now = now();
        let (events, confirmed) = stored
            .record
            .resolve(resolution.decision, actor.clone(), resolution.note, now)
            .map_err(|e| match e {
                ResolveError::NotNeedingOperator => Error::PaymentNotNeedingOperator,
                ResolveError::Saga(e) => Error::Corrupt(format!("saga: {e}")),
            })?;
        self.workflow
            .record_confirmed(&mut tx, &stored, &confirmed)
            .await?;
        let stored = self
            .commit_and_drive(tx, stored, events, now, admitted)
            .await?;
        tracing::info!(
            payment_id = %id,
            decision = ?resolution.decision,
            operator = %actor,
            "payment resolved"
        );
        Ok(stored)
    }

    /// Refuses an operator's confirmation of a payment's refused captures or voids unless the
    /// vault shows each of them done: the ledger books only what the vault holds. (A payment
    /// that no longer needs an operator is left to the resolution's own checks: a replay
    /// answers, anything else is refused there.)
    async fn check_confirmed(&self, payment_id: &str) -> Result<(), Error> {
        let Some(stored) = storage::payment(self.workflow.pool(), payment_id, false).await? else {
            return Err(Error::PaymentNotFound);
        };
        let record = &stored.record;
        if record.saga.state != PaymentState::NeedsOperator {
            return Ok(());
        }
        for leg in record.refused_legs() {
            let charge_id = record.legs[leg].charge_id.clone().unwrap_or_default();
            let capture = record.saga.legs[leg].state == LegState::Capturing;
            let done = self
                .workflow
                .vault()
                .shows_settled(&charge_id, capture)
                .await
                .map_err(|_| Error::VaultUnavailable)?;
            if !done {
                return Err(Error::ChargeNotSettled { charge_id });
            }
        }
        Ok(())
    }

    /// `AddPaymentNote`: appends the note (once per request id) and publishes its event; the
    /// payment with it, and the note's index among the payment's notes.
    pub async fn add_note(
        &self,
        note: NewNote,
        actor: Actor,
    ) -> Result<(StoredPayment, usize), Error> {
        let method = "AddPaymentNote";
        let mut tx = self.workflow.pool().begin().await?;
        if let Some(earlier) = storage::claim_request_id(
            &mut tx,
            &note.request_id,
            method,
            &note.request_hash,
            &note.payment_id,
            self.settings().request_id_wait_ms,
        )
        .await?
        {
            tx.rollback().await?;
            let resource = earlier.resource_of(method, &note.request_hash)?;
            let index = earlier
                .response
                .as_deref()
                .and_then(|r| std::str::from_utf8(r).ok()?.parse().ok())
                .ok_or_else(|| Error::Corrupt("note request without its note".into()))?;
            return Ok((self.get(resource).await?, index));
        }
        let mut stored = storage::payment(&mut *tx, &note.payment_id, true)
            .await?
            .ok_or(Error::PaymentNotFound)?;
        let now = now();
        let (index, event) = stored
            .record
            .add_note(note.text, actor, now)
            .ok_or(Error::NoteLimitReached)?;
        let observed = self
            .workflow
            .save(&mut tx, &mut stored, &[event], now)
            .await?;
        storage::store_response(&mut tx, &note.request_id, index.to_string().as_bytes()).await?;
        tx.commit().await?;
        observed.record();
        self.workflow
            .announce(&note.payment_id, stored.record.saga.state.is_at_rest());
        stored.update_time = now;
        Ok((stored, index))
    }

    /// Publishes `payment.delayed` for each payment not terminal `pending_after` after it was
    /// created (once per payment), each in its own transaction under the payment's row lock,
    /// as a note's event is written. Returns how many it marked.
    pub async fn mark_delayed(&self, pending_after: time::Duration) -> Result<usize, Error> {
        const BATCH: i64 = 100;
        let ids =
            storage::delayed_payments(self.workflow.pool(), now() - pending_after, BATCH).await?;
        let mut marked = 0;
        for id in ids {
            let mut tx = self.workflow.pool().begin().await?;
            let Some(mut stored) = storage::payment(&mut *tx, &id, true).await? else {
                continue;
            };
            let now = now();
            let Some(event) = stored.record.mark_delayed(now) else {
                continue;
            };
            let observed = self
                .workflow
                .save(&mut tx, &mut stored, &[event], now)
                .await?;
            tx.commit().await?;
            observed.record();
            self.workflow.announce(&id, false);
            tracing::warn!(payment_id = %id, "payment delayed: not terminal in time");
            marked += 1;
        }
        Ok(marked)
    }

    /// Runs [`Payments::mark_delayed`] every `settings.interval_ms` until `stop`.
    pub async fn delay_loop(
        self: Arc<Self>,
        settings: crate::config::NotifySettings,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let pending_after =
            time::Duration::seconds(i64::try_from(settings.pending_after_s).unwrap_or(i64::MAX));
        let mut ticker = tokio::time::interval(Duration::from_millis(settings.interval_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
            if let Err(error) = self.mark_delayed(pending_after).await {
                tracing::warn!(%error, "looking for delayed payments failed");
            }
        }
    }

    /// `ListEvents`: a page of the feed of every payment's and card group's events.
    pub async fn events(&self, query: &EventQuery) -> Result<FeedPage, Error> {
        storage::feed_after(
            self.workflow.pool(),
            &query.after,
            &query.types,
            i64::from(query.size),
        )
        .await
    }

    /// `WatchPayment`: the events after `after_sequence` (each an encoded `PaymentEvent`),
    /// then new ones as they commit, until the payment is settled and every event was sent,
    /// or `watch_ms_max`.
    pub async fn watch(
        &self,
        watch: Watch,
    ) -> Result<impl futures::Stream<Item = Result<Vec<u8>, Error>> + use<>, Error> {
        // An unknown payment is an error of the call, not of the stream.
        self.get(&watch.payment_id).await?;
        let workflow = self.workflow.clone();
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let until = tokio::time::Instant::now()
                + Duration::from_millis(workflow.settings().watch_ms_max);
            let stream = Watcher {
                pool: workflow.pool().clone(),
                id: watch.payment_id,
                after: watch.after_sequence,
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
    sender: tokio::sync::mpsc::Sender<Result<Vec<u8>, Error>>,
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
        if self.sender.send(Ok(body.to_vec())).await.is_err() {
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
