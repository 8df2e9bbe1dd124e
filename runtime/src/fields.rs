//! Bad input, field by field: what `INVALID_ARGUMENT` carries in its `google.rpc.BadRequest`.
//! Each server checks a request once at its edge, collects every violated field in
//! [`Violations`], and answers with all of them at once.

/// One violated field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path in the request, e.g. `pan` or `card_group.members[2].priority`.
    pub field: String,
    /// What is wrong, never echoing the value.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl ToString) -> Self {
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
    pub fn add(&mut self, field: impl Into<String>, description: impl ToString) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Records violations found elsewhere.
    pub fn extend(&mut self, violations: Vec<FieldViolation>) {
        self.0.extend(violations);
    }

    /// Records violations found in a nested message, each under `prefix`: a violation of
    /// `amount` under `requests[2]` is recorded as `requests[2].amount`.
    pub fn extend_under(&mut self, prefix: &str, violations: Vec<FieldViolation>) {
        self.0
            .extend(violations.into_iter().map(|violation| FieldViolation {
                field: format!("{prefix}.{}", violation.field),
                description: violation.description,
            }));
    }

    /// Keeps `result`'s value, or records its error against `field`.
    pub fn check<T, E: ToString>(
        &mut self,
        field: &'static str,
        result: Result<T, E>,
    ) -> Option<T> {
        result.map_err(|e| self.add(field, e)).ok()
    }

    /// Every violation recorded, none may be.
    pub fn into_inner(self) -> Vec<FieldViolation> {
        self.0
    }

    /// True if nothing was violated yet.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` if nothing was violated, else every violation in the server's error type.
    pub fn finish<T, E: From<Vec<FieldViolation>>>(self, value: T) -> Result<T, E> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(E::from(self.0))
        }
    }

    /// As [`Violations::finish`], for a value built from the fields [`Violations::check`]
    /// kept: each is `Some` when nothing was violated.
    pub fn finish_with<T, E: From<Vec<FieldViolation>>>(
        self,
        value: impl FnOnce() -> Option<T>,
    ) -> Result<T, E> {
        if self.0.is_empty() {
            // Every checked field was kept when none was violated; a caller that forgot one
            // answers INVALID_ARGUMENT without a field rather than panicking in a handler.
            value().ok_or_else(|| E::from(Vec::new()))
        } else {
            Err(E::from(self.0))
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
        assert_eq!(Violations::default().finish::<_, Vec<_>>(7), Ok(7));
        let mut v = Violations::default();
        assert_eq!(v.check("month", Ok::<_, String>(12)), Some(12));
        assert!(v.is_empty());
        v.add("pan", "must be 12-19 digits");
        v.add(format!("members[{}].priority", 2), "must be positive");
        assert_eq!(v.check("year", Err::<i32, _>("must be 2000 to 2099")), None);
        v.extend_under(
            "requests[1]",
            vec![FieldViolation::new("amount", "is required")],
        );
        assert!(!v.is_empty());
        let violations: Vec<FieldViolation> = v.finish_with(|| Some(())).unwrap_err();
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            ["pan", "members[2].priority", "year", "requests[1].amount"]
        );
        let detail = bad_request(&violations);
        assert_eq!(detail.field_violations[1].field, "members[2].priority");
        assert_eq!(detail.field_violations[1].description, "must be positive");
    }
}
