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

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let today = time::macros::date!(2026 - 11 - 24);
    let max = 1_000_000_000_000;
    match which % 12 {
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
        _ => {
            if let Ok(m) = opb::RefundPaymentRequest::decode(bytes) {
                let mut v = Violations::default();
                orchestrator::request_id(&mut v, "request_id", &m.request_id);
                orchestrator::resource_id(&mut v, "payment_id", "pay_", &m.payment_id);
            }
        }
    }
});
