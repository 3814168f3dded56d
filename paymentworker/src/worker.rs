//! The message handler: what the payment worker does with each event of the `ORDERS` stream.

use anyhow::anyhow;
use order_domain::{Money, OrderEvent, OrderStatus, caused_event_id, event_type, payment_id};
use pipeline_runtime::consumer::{Delivery, Failure};
use pipeline_runtime::eventstore::{ClientError, EventStoreClient};
use pipeline_runtime::stream::EventEnvelope;
use sqlx::PgPool;
use uuid::Uuid;

use crate::ledger::{self, Decision, LedgerError, Refund};
use pipeline_runtime::orders::{self, History};

/// Everything a message needs; shared by the messages in hand.
pub struct Worker {
    pub store: EventStoreClient,
    pub pool: PgPool,
    pub initial_credit: Money,
}

impl Worker {
    pub async fn handle(&self, delivery: Delivery) -> Result<(), Failure> {
        let envelope = &delivery.envelope;
        match envelope.event_type.as_str() {
            event_type::CREATED => {
                orders::decode_message(envelope)?;
                self.on_created(envelope).await
            }
            event_type::REJECTED | event_type::CANCELLED => {
                orders::decode_message(envelope)?;
                self.on_rejected_or_cancelled(envelope).await
            }
            _ => Ok(()),
        }
    }

    /// Pays a Pending order: the debit (or the failure) is recorded in the payments database first,
    /// then appended; a redelivery reuses the record, so the wallet changes once.
    #[tracing::instrument(skip_all, fields(order.id = %envelope.aggregate_id))]
    async fn on_created(&self, envelope: &EventEnvelope) -> Result<(), Failure> {
        let history = History::load(&self.store, &envelope.aggregate_id).await?;
        let order = &history.order;
        if order.status != OrderStatus::Pending {
            // Decided already, or cancelled before we got to it.
            return self.void_unseen_debit(&history).await;
        }
        let created_id = history
            .last_of(&[event_type::CREATED])
            .ok_or_else(|| Failure::dead_letter(anyhow!("order without a created event")))?;
        let debit_event_id = caused_event_id(created_id, event_type::PAYMENT_DEBITED);
        let decision = ledger::settle(&self.pool, order, self.initial_credit, debit_event_id)
            .await
            .map_err(ledger_failure)?;
        let payment = payment_id(order.order_id);
        let event = match decision {
            Decision::Voided => return Ok(()),
            Decision::Debited => order.settle_payment(payment, Some(order.amount)),
            Decision::Failed => order.settle_payment(payment, None),
        }
        .map_err(Failure::retry)?;
        let event_id = caused_event_id(created_id, event.event_type());
        match self.append(envelope, event_id, &event, order.version).await {
            Ok(()) => Ok(()),
            Err(ClientError::Conflict(message)) => {
                // The order moved on while we decided (the customer cancelled): if it never saw our
                // debit, the debit is undone here; there is no event to append.
                let history = History::load(&self.store, &envelope.aggregate_id).await?;
                if history.order.status == OrderStatus::Pending {
                    return Err(Failure::retry(anyhow!(
                        "version conflict on a Pending order: {message}"
                    )));
                }
                tracing::info!(
                    status = %history.order.status,
                    "the order moved on before the payment was appended"
                );
                self.void_unseen_debit(&history).await
            }
            Err(err) => Err(orders::store_failure(err)),
        }
    }

    /// Refunds a debited order that was rejected or cancelled, once.
    #[tracing::instrument(skip_all, fields(order.id = %envelope.aggregate_id))]
    async fn on_rejected_or_cancelled(&self, envelope: &EventEnvelope) -> Result<(), Failure> {
        let history = History::load(&self.store, &envelope.aggregate_id).await?;
        let order = &history.order;
        if !order.needs_refund() {
            // Never debited (cancelled while Pending: undo a debit that lost the race), or
            // already refunded.
            return if order.payment_id.is_none() {
                self.void_unseen_debit(&history).await
            } else {
                Ok(())
            };
        }
        let cause = history
            .last_of(&[event_type::REJECTED, event_type::CANCELLED])
            .ok_or_else(|| {
                Failure::dead_letter(anyhow!("a {} order without its event", order.status))
            })?;
        let event = order.refund().map_err(Failure::retry)?;
        let event_id = caused_event_id(cause, event_type::PAYMENT_REFUNDED);
        let refund = ledger::refund(&self.pool, order.order_id, event_id)
            .await
            .map_err(ledger_failure)?;
        if refund == Refund::Credited {
            tracing::info!(amount = %order.amount, "payment refunded to the wallet");
        }
        // Appended even when the wallet was credited by an earlier delivery: that one may have
        // stopped before its append.
        self.append(envelope, event_id, &event, order.version)
            .await
            .map_err(orders::store_failure)
    }

    /// Undoes a payment decision the order's history does not hold: the order was cancelled before
    /// the `paymentdebited` (or `paymentfailed`) could be appended, and it never can be now (either
    /// follows `created` directly, at version 1). A debit's amount goes back to the wallet; a
    /// failure's row is marked voided too, so paymentsdb agrees with the order.
    async fn void_unseen_debit(&self, history: &History) -> Result<(), Failure> {
        if history.order.payment_id.is_some() {
            return Ok(());
        }
        // Without a payment id the order is PaymentFailed (it saw our failure: keep it) or
        // Cancelled from Pending (it saw no decision of ours).
        let cancelled = history.order.status == OrderStatus::Cancelled;
        let voided = ledger::void(&self.pool, history.order.order_id, cancelled)
            .await
            .map_err(ledger_failure)?;
        match voided {
            ledger::Voided::Debit => tracing::info!(
                amount = %history.order.amount,
                "debit voided: the order never saw it, the amount went back to the wallet"
            ),
            ledger::Voided::Failure => {
                tracing::info!("payment failure voided: the order was cancelled before it saw it");
            }
            ledger::Voided::Nothing => {}
        }
        Ok(())
    }

    async fn append(
        &self,
        cause: &EventEnvelope,
        event_id: Uuid,
        event: &OrderEvent,
        expected_version: i64,
    ) -> Result<(), ClientError> {
        let appended = self
            .store
            .append(
                orders::caused_event(cause, event_id, event),
                expected_version,
            )
            .await?;
        tracing::info!(
            event.type = event.event_type(),
            version = appended.version,
            duplicate = appended.duplicate,
            "appended"
        );
        Ok(())
    }
}

fn ledger_failure(err: LedgerError) -> Failure {
    match err {
        LedgerError::Sql(err) => Failure::retry(err),
        LedgerError::Inconsistent(message) => Failure::dead_letter(anyhow!(message)),
    }
}
