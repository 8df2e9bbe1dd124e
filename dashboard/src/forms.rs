//! Forms that change something (propose or approve an adjustment, decide a review), protected
//! against cross-site requests: each form carries a token, an HMAC (under a key made when the
//! dashboard starts) of the person's certificate fingerprint and the form's action, so a page
//! of another site cannot make one; a POST must also come from the dashboard's own origin.
//! Each form also carries its own AIP-155 request id, so a form posted twice changes nothing
//! twice.

use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};
use tandem_tls::identity::Caller;

use crate::api::ApiError;
use crate::html::escape;

/// The largest form body read, in bytes.
pub const BODY_BYTES_MAX: usize = 16 * 1024;

/// The key form tokens are made with: random, made when the dashboard starts (a restart only
/// makes people reload the page they had open).
pub struct FormKey([u8; 32]);

impl std::fmt::Debug for FormKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FormKey(..)")
    }
}

impl Drop for FormKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl FormKey {
    /// A new random key.
    pub fn generate() -> Result<FormKey, getrandom::Error> {
        let mut key = [0; 32];
        getrandom::getrandom(&mut key)?;
        Ok(FormKey(key))
    }

    fn mac(&self, fingerprint: &[u8; 32], action: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256>>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(fingerprint);
        mac.update(&[0]);
        mac.update(action.as_bytes());
        mac
    }
}

/// One person's visit: who they are (from their certificate) and the forms they may post.
#[derive(Debug, Clone, Copy)]
pub struct Visit<'a> {
    /// The person, from the client certificate.
    pub person: &'a Caller,
    /// SHA-256 of the person's certificate (DER).
    fingerprint: &'a [u8; 32],
    key: &'a FormKey,
}

impl<'a> Visit<'a> {
    /// The visit of `person`, whose certificate has `fingerprint`.
    pub fn new(person: &'a Caller, fingerprint: &'a [u8; 32], key: &'a FormKey) -> Visit<'a> {
        Visit {
            person,
            fingerprint,
            key,
        }
    }

    /// The token a form posting to `action` carries.
    pub fn token(&self, action: &str) -> String {
        hex::encode(
            self.key
                .mac(self.fingerprint, action)
                .finalize()
                .into_bytes(),
        )
    }

    /// The hidden fields every form posting to `action` carries: its token and a request id.
    pub fn hidden_fields(&self, action: &str) -> String {
        format!(
            "<input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <input type=\"hidden\" name=\"request_id\" value=\"{}\">",
            self.token(action),
            escape(&crate::api::request_id()),
        )
    }

    /// Whether `token` is the one this person's forms posting to `action` carry (compared in
    /// constant time).
    pub fn token_is_valid(&self, action: &str, token: &str) -> bool {
        hex::decode(token).is_ok_and(|bytes| {
            self.key
                .mac(self.fingerprint, action)
                .verify_slice(&bytes)
                .is_ok()
        })
    }
}

/// SHA-256 of a certificate's DER.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// The fields of a posted form.
#[derive(Debug, Default)]
pub struct Posted {
    fields: Vec<(String, String)>,
}

impl Posted {
    /// The fields of an `application/x-www-form-urlencoded` body.
    pub fn parse(body: &[u8]) -> Posted {
        Posted {
            fields: url::form_urlencoded::parse(body).into_owned().collect(),
        }
    }

    /// The value of `name`, trimmed, or empty.
    pub fn get(&self, name: &str) -> &str {
        self.fields
            .iter()
            .find(|(key, _)| key == name)
            .map_or("", |(_, value)| value.trim())
    }

    /// The value of `name`, refused when empty or longer than `max` bytes.
    pub fn required(&self, name: &str, max: usize) -> Result<&str, ApiError> {
        match self.get(name) {
            "" => Err(ApiError::Invalid(format!("{name} is required"))),
            value if value.len() > max => {
                Err(ApiError::Invalid(format!("{name} is over {max} bytes")))
            }
            value => Ok(value),
        }
    }

    /// The form's request id: `dash-` and a UUID, as [`Visit::hidden_fields`] renders it.
    pub fn request_id(&self) -> Result<&str, ApiError> {
        let id = self.required("request_id", 64)?;
        id.strip_prefix("dash-")
            .and_then(|uuid| uuid::Uuid::parse_str(uuid).ok())
            .map(|_| id)
            .ok_or_else(|| ApiError::Invalid("request_id is not one of this dashboard's".into()))
    }
}

/// Why a POST was refused before it was read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// It came from another origin (or named none).
    #[error("this form must be posted from the dashboard's own pages")]
    Origin,
    /// Its token is missing or not this person's for this action.
    #[error(
        "this form is not yours, or is from before the dashboard restarted: reload the page \
         and try again"
    )]
    Token,
}

/// Whether a POST with these headers comes from the dashboard's own pages: its `Origin` is
/// `https://` and the `Host` it was sent to, and, when the browser says, `Sec-Fetch-Site` is
/// `same-origin`.
pub fn same_origin(headers: &http::HeaderMap) -> Result<(), Refused> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(origin), Some(host)) = (header("origin"), header("host")) else {
        return Err(Refused::Origin);
    };
    let site_ok = header("sec-fetch-site").is_none_or(|site| site == "same-origin");
    if origin.strip_prefix("https://") == Some(host) && site_ok {
        Ok(())
    } else {
        Err(Refused::Origin)
    }
}

/// Checks a posted form's token for `action`.
pub fn check_token(visit: &Visit<'_>, action: &str, posted: &Posted) -> Result<(), Refused> {
    if visit.token_is_valid(action, posted.get("csrf")) {
        Ok(())
    } else {
        Err(Refused::Token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_tls::identity::Role;

    /// A token is bound to the person's certificate, the action and the key; it is checked
    /// in full.
    #[test]
    fn tokens_are_bound_to_person_action_and_key() {
        let key = FormKey::generate().expect("key");
        let person = Caller {
            role: Role::Approver,
            name: "ana".into(),
        };
        let print = fingerprint(b"ana's certificate");
        let visit = Visit::new(&person, &print, &key);
        let token = visit.token("/reconciliation/adjustments/adj_1/approve");
        assert!(visit.token_is_valid("/reconciliation/adjustments/adj_1/approve", &token));
        assert!(!visit.token_is_valid("/reconciliation/adjustments/adj_2/approve", &token));
        assert!(!visit.token_is_valid("/reconciliation/adjustments/adj_1/approve", ""));
        assert!(!visit.token_is_valid(
            "/reconciliation/adjustments/adj_1/approve",
            &token[..token.len() - 2]
        ));
        let other_print = fingerprint(b"bo's certificate");
        let other = Visit::new(&person, &other_print, &key);
        assert!(!other.token_is_valid("/reconciliation/adjustments/adj_1/approve", &token));
        let restarted = FormKey::generate().expect("key");
        let after_restart = Visit::new(&person, &print, &restarted);
        assert!(!after_restart.token_is_valid("/reconciliation/adjustments/adj_1/approve", &token));
        let hidden = visit.hidden_fields("/review/pay_1");
        assert!(hidden.contains(&visit.token("/review/pay_1")));
        let id = hidden
            .split("name=\"request_id\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("request id");
        let posted = Posted::parse(format!("request_id={id}&csrf=x").as_bytes());
        assert_eq!(posted.request_id().expect("ours"), id);
        assert!(Posted::parse(b"request_id=mine").request_id().is_err());
    }

    /// Only a POST from the dashboard's own origin passes.
    #[test]
    fn origin_must_be_the_dashboards() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = http::HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, http::HeaderValue::from_static(value));
            }
            map
        };
        let host = ("host", "127.0.0.1:50053");
        assert_eq!(
            same_origin(&headers(&[host, ("origin", "https://127.0.0.1:50053")])),
            Ok(())
        );
        for refused in [
            headers(&[host]),
            headers(&[host, ("origin", "https://evil.example")]),
            headers(&[host, ("origin", "http://127.0.0.1:50053")]),
            headers(&[host, ("origin", "null")]),
            headers(&[
                host,
                ("origin", "https://127.0.0.1:50053"),
                ("sec-fetch-site", "cross-site"),
            ]),
        ] {
            assert_eq!(same_origin(&refused), Err(Refused::Origin));
        }
    }
}
