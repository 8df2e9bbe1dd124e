//! Bad input, field by field: what `INVALID_ARGUMENT` carries in its `google.rpc.BadRequest`.
//! Each server checks a request once at its edge, collects every violated field in
//! [`Violations`], and answers with all of them at once.

use std::borrow::Cow;

/// One violated field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path in the request, e.g. `pan` or `card_group.members[2].priority`.
    pub field: Cow<'static, str>,
    /// What is wrong, never echoing the value.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<Cow<'static, str>>, description: impl ToString) -> Self {
        Self {
            field: field.into(),
            description: description.to_string(),
        }
    }
}

/// The violations found while checking one request.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// Records a violation of `field`.
    pub fn add(&mut self, field: impl Into<Cow<'static, str>>, description: impl ToString) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// True if nothing was violated yet.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` if nothing was violated, else every violation.
    pub fn finish<T>(self, value: T) -> Result<T, Vec<FieldViolation>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }
}

/// The `BadRequest` detail of `violations`, for `tonic_types::StatusExt::with_error_details`.
pub fn bad_request(violations: &[FieldViolation]) -> tonic_types::BadRequest {
    tonic_types::BadRequest::new(
        violations
            .iter()
            .map(|v| tonic_types::FieldViolation::new(v.field.clone(), v.description.clone()))
            .collect::<Vec<_>>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No violation passes the value through; any violation returns all of them, in order,
    /// each naming its field.
    #[test]
    fn violations_collect_every_field() {
        assert_eq!(Violations::default().finish(7), Ok(7));
        let mut v = Violations::default();
        v.add("pan", "must be 12-19 digits");
        v.add(format!("members[{}].priority", 2), "must be positive");
        assert!(!v.is_empty());
        let violations = v.finish(()).unwrap_err();
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_ref()).collect();
        assert_eq!(fields, ["pan", "members[2].priority"]);
        let detail = bad_request(&violations);
        assert_eq!(detail.field_violations[1].field, "members[2].priority");
        assert_eq!(detail.field_violations[1].description, "must be positive");
    }
}
