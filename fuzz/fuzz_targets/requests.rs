//! Arbitrary bytes decoded as each request message of the vault and the orchestrator and
//! converted to domain types at their edges: a request is accepted or refused with
//! INVALID_ARGUMENT naming its fields; nothing may panic. The first byte picks the message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tandem_orchestrator::grpc::convert as orchestrator;
use tandem_proto::tandem::orchestrator::v1 as opb;
use tandem_proto::tandem::vault::v1 as vpb;
use tandem_runtime::fields::Violations;
use tandem_vault::error::Error;
use tandem_vault::grpc::{charges as charge, convert as vault};

fn refused_with_fields<T>(result: Result<T, Error>) {
    match result {
        Ok(_) => {}
        Err(Error::InvalidArgument(violations)) => assert!(!violations.is_empty()),
        Err(other) => panic!("refused with {other:?} instead of INVALID_ARGUMENT"),
    }
}

fn refused_as_orchestrator<T>(result: Result<T, tandem_orchestrator::error::Error>) {
    match result {
        Ok(_) => {}
        Err(tandem_orchestrator::error::Error::InvalidArgument(violations)) => {
            assert!(!violations.is_empty())
        }
        Err(other) => panic!("refused with {other:?} instead of INVALID_ARGUMENT"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let today = time::macros::date!(2026 - 11 - 24);
    let max = 1_000_000_000_000;
    let ledger = tandem_orchestrator::config::LedgerSettings::default();
    let reconciliation = tandem_orchestrator::config::ReconciliationSettings::default();
    let webhooks = tandem_orchestrator::config::WebhookSettings {
        allow_hosts: vec!["127.0.0.1".into()],
        ..Default::default()
    };
    match which % 20 {
        0 => {
            if let Ok(m) = vpb::TokenizeRequest::decode(bytes) {
                refused_with_fields(vault::tokenize(m, today, 86_400));
            }
        }
        1 => {
            if let Ok(m) = vpb::UpdateCardRequest::decode(bytes) {
                refused_with_fields(vault::update_card(m, today));
            }
        }
        2 => {
            if let Ok(m) = vpb::RevokeTokenRequest::decode(bytes) {
                refused_with_fields(vault::revoke_token(&m));
            }
        }
        3 => {
            if let Ok(m) = vpb::AuthorizeRequest::decode(bytes) {
                refused_with_fields(charge::authorize(&m, max));
            }
        }
        4 => {
            if let Ok(m) = vpb::CaptureRequest::decode(bytes) {
                refused_with_fields(charge::capture(&m, max));
            }
        }
        5 => {
            if let Ok(m) = vpb::RefundRequest::decode(bytes) {
                refused_with_fields(charge::refund(&m, max));
            }
        }
        6 => {
            if let Ok(m) = vpb::GetChargeRequest::decode(bytes) {
                refused_with_fields(charge::get_charge(&m));
            }
        }
        7 => {
            if let Ok(m) = vpb::ListTokensRequest::decode(bytes) {
                refused_with_fields(vault::list_tokens(&m, 50, 100));
            }
        }
        8 => {
            if let Ok(m) = opb::CreateCardGroupRequest::decode(bytes) {
                let mut v = Violations::default();
                orchestrator::request_id(&mut v, "request_id", &m.request_id);
                if let Some(group) = &m.card_group {
                    orchestrator::groups::group_input(&mut v, group);
                }
            }
        }
        9 => {
            if let Ok(m) = opb::CreatePaymentRequest::decode(bytes) {
                let mut v = Violations::default();
                orchestrator::payments::invoice(&mut v, m.invoice.as_ref(), max);
                orchestrator::resource_id(&mut v, "card_group_id", "cg_", &m.card_group_id);
            }
        }
        10 => {
            if let Ok(m) = opb::ListPaymentsRequest::decode(bytes) {
                let mut v = Violations::default();
                orchestrator::payments::state_filter(&mut v, m.state);
                orchestrator::page_size(&mut v, m.page_size, 100);
                let _ = orchestrator::decode_page_token(&m.page_token, b"scope");
            }
        }
        11 => {
            if let Ok(m) = opb::ListEntriesRequest::decode(bytes) {
                refused_as_orchestrator(orchestrator::ledger::list_entries(&m, &ledger));
            }
        }
        12 => {
            if let Ok(m) = opb::ExportLedgerRequest::decode(bytes) {
                let now = time::OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap();
                refused_as_orchestrator(orchestrator::ledger::export_ledger(&m, &ledger, now, 60_000));
            }
        }
        13 => {
            if let Ok(m) = opb::GetSpendReportRequest::decode(bytes) {
                refused_as_orchestrator(orchestrator::ledger::get_spend_report(&m, &ledger));
                if let Ok(m) = opb::GetBalancesRequest::decode(bytes) {
                    refused_as_orchestrator(orchestrator::ledger::get_balances(&m));
                }
            }
        }
        14 => {
            if let Ok(m) = opb::ListEventsRequest::decode(bytes) {
                refused_as_orchestrator(orchestrator::payments::list_events(&m, 1000));
                if let Ok(m) = opb::AddPaymentNoteRequest::decode(bytes) {
                    refused_as_orchestrator(orchestrator::payments::add_payment_note(&m));
                }
            }
        }
        15 => {
            if let Ok(m) = opb::RunReconciliationRequest::decode(bytes) {
                let now = time::OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap();
                refused_as_orchestrator(orchestrator::reconciliation::run_reconciliation(
                    &m,
                    &reconciliation,
                    now,
                ));
            }
            if let Ok(m) = opb::ListDiscrepanciesRequest::decode(bytes) {
                refused_as_orchestrator(orchestrator::reconciliation::list_discrepancies(
                    &m,
                    &reconciliation,
                ));
            }
            if let Ok(m) = vpb::DownloadSettlementFileRequest::decode(bytes) {
                refused_with_fields(charge::download_settlement_file(&m, "sandbox", today));
            }
        }
        16 => {
            if let Ok(m) = opb::ProposeAdjustmentRequest::decode(bytes) {
                refused_as_orchestrator(orchestrator::reconciliation::propose_adjustment(&m));
            }
            if let Ok(m) = opb::ApproveAdjustmentRequest::decode(bytes) {
                refused_as_orchestrator(orchestrator::reconciliation::approve_adjustment(&m));
            }
            if let Ok(m) = opb::RejectAdjustmentRequest::decode(bytes) {
                refused_as_orchestrator(orchestrator::reconciliation::reject_adjustment(&m));
            }
            if let Ok(m) = vpb::CorruptSettlementRecordRequest::decode(bytes) {
                refused_with_fields(tandem_vault::grpc::sandbox::corrupt_settlement_record(&m));
            }
        }
        17 => {
            if let Ok(m) = opb::CreateWebhookEndpointRequest::decode(bytes) {
                refused_as_orchestrator(orchestrator::webhooks::create_endpoint(&m, &webhooks));
            }
            if let Ok(m) = opb::UpdateWebhookEndpointRequest::decode(bytes) {
                refused_as_orchestrator(orchestrator::webhooks::update_endpoint(&m, &webhooks));
            }
        }
        18 => {
            if let Ok(m) = opb::ListWebhookDeliveriesRequest::decode(bytes) {
                refused_as_orchestrator(orchestrator::webhooks::list_deliveries(&m));
            }
            if let Ok(m) = opb::RedeliverEventsRequest::decode(bytes) {
                refused_as_orchestrator(orchestrator::webhooks::redeliver(&m));
            }
            if let Ok(m) = opb::ListWebhookEndpointsRequest::decode(bytes) {
                refused_as_orchestrator(orchestrator::webhooks::list_endpoints(&m));
            }
        }
        _ => {
            if let Ok(m) = opb::RefundPaymentRequest::decode(bytes) {
                let mut v = Violations::default();
                orchestrator::request_id(&mut v, "request_id", &m.request_id);
                orchestrator::resource_id(&mut v, "payment_id", "pay_", &m.payment_id);
            }
        }
    }
});
