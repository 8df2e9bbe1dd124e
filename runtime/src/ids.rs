//! Random ids: a prefix (`tok_`, `ch_`, `cg_`, `pay_`, ...) followed by 26 lower-case base32
//! characters of 128 bits from the operating system's CSPRNG. Ids are never derived from
//! their content, so an id reveals nothing.

use std::sync::LazyLock;

/// Characters after the prefix.
pub const BODY_CHARS: usize = 26;

static BASE32_LOWER: LazyLock<data_encoding::Encoding> = LazyLock::new(|| {
    let mut spec = data_encoding::Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    // A constant specification that data-encoding accepts; every id test exercises it.
    spec.encoding().expect("valid base32 specification")
});

/// A new random id: `prefix` followed by 26 lower-case base32 characters of 128 bits.
pub fn random_id(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    // The OS random source failing is unrecoverable for a payments system: no id may be
    // guessable.
    getrandom::getrandom(&mut bytes).expect("the operating system's random source works");
    let body = BASE32_LOWER.encode(&bytes);
    debug_assert_eq!(body.len(), BODY_CHARS);
    format!("{prefix}{body}")
}

/// A random fraction in [0, 1), for jittering waits (not for secrets).
pub fn random_fraction() -> f64 {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).expect("the operating system's random source works");
    // 53 bits: every value is exact in an f64 and below 1.
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// True if `text` is `prefix` followed by the canonical base32 form of 128 bits.
pub fn is_random_id(prefix: &str, text: &str) -> bool {
    let Some(body) = text.strip_prefix(prefix) else {
        return false;
    };
    // Decoding checks the alphabet; the round trip rejects non-canonical trailing bits.
    body.len() == BODY_CHARS
        && BASE32_LOWER
            .decode(body.as_bytes())
            .is_ok_and(|bytes| bytes.len() == 16 && BASE32_LOWER.encode(&bytes) == body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_and_canonical() {
        let fractions: Vec<f64> = (0..100).map(|_| random_fraction()).collect();
        assert!(fractions.iter().all(|f| (0.0..1.0).contains(f)));
        assert!(fractions.windows(2).any(|w| w[0] != w[1]));
        let a = random_id("pay_");
        let b = random_id("pay_");
        assert_ne!(a, b);
        assert!(is_random_id("pay_", &a));
        assert!(!is_random_id("cg_", &a));
        assert!(!is_random_id("pay_", &a.to_uppercase()));
        // The last character carries 3 unused bits: only canonical forms are accepted.
        let mut bad = a.clone();
        bad.pop();
        bad.push('7');
        assert!(a.ends_with('7') || !is_random_id("pay_", &bad));
        assert!(!is_random_id("pay_", "pay_short"));
    }
}
