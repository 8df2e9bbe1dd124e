//! Who made a change: the name and role of the caller's certificate, recorded with every
//! payment, refund, note and card group change, and shown in their views and events.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The identity a change is recorded under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The certificate's name (`billing-service`).
    pub name: String,
    /// The role it grants (`payer`).
    pub role: String,
}

impl Actor {
    /// Parses the stored form, `<role>/<name>`.
    pub fn parse(stored: &str) -> Option<Actor> {
        let (role, name) = stored.split_once('/')?;
        (!role.is_empty() && !name.is_empty()).then(|| Actor {
            name: name.to_owned(),
            role: role.to_owned(),
        })
    }
}

/// The stored form, `<role>/<name>`, as certificates name callers.
impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.role, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_form_round_trips() {
        let actor = Actor {
            name: "billing-service".into(),
            role: "payer".into(),
        };
        assert_eq!(actor.to_string(), "payer/billing-service");
        assert_eq!(Actor::parse("payer/billing-service"), Some(actor));
        assert_eq!(Actor::parse("payer"), None);
        assert_eq!(Actor::parse("/x"), None);
    }
}
