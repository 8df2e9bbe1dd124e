//! Card numbers and expiry dates as a tokenizing client sends them: any text and any month and
//! year must be refused with INVALID_ARGUMENT naming the field, or accepted with a valid card,
//! never a panic; an accepted PAN is never echoed in an error.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_proto::tandem::vault::v1 as pb;
use tandem_vault::domain::Pan;
use tandem_vault::error::Error;

fuzz_target!(|data: &[u8]| {
    let (numbers, text) = data.split_at(data.len().min(8));
    let int = |i: usize| {
        numbers
            .get(i * 4..i * 4 + 4)
            .map_or(0, |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let text = String::from_utf8_lossy(text);
    let _ = Pan::parse(&text);
    let request = pb::TokenizeRequest {
        request_id: "fuzz-1".into(),
        pan: text.clone().into_owned(),
        expiry_month: int(0),
        expiry_year: int(1),
        holder_name: "Fuzz".into(),
        reuse_existing: false,
        ttl_seconds: 0,
    };
    let today = time::macros::date!(2026 - 11 - 24);
    match tandem_vault::grpc::convert::tokenize(request, today, 86_400) {
        Ok(_) => {}
        Err(Error::InvalidArgument(violations)) => {
            assert!(!violations.is_empty());
            for violation in violations {
                let digits: String = text.chars().filter(char::is_ascii_digit).collect();
                assert!(
                    digits.len() < 12 || !violation.description.contains(&digits),
                    "a violation echoes the card number"
                );
            }
        }
        Err(other) => panic!("tokenize input refused with {other:?}"),
    }
});
