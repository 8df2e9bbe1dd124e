//! Where a webhook may go. An endpoint's URL is https, without user info or fragment; plain
//! http and destinations in private, loopback, link-local or other non-public ranges are
//! refused unless `webhook.allow_hosts` names the host (development and tests). The check is
//! made when the URL is given (an address written in it) and again at every attempt on the
//! addresses its name resolves to, and the connection goes to a checked address, so a name
//! that later resolves inward is refused too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::{Host, Url};

/// Most characters of an endpoint's URL.
pub const URL_CHARS_MAX: usize = 2048;

/// A checked destination.
#[derive(Debug, Clone)]
pub struct Destination {
    /// The URL as given.
    pub url: Url,
    /// The host, as the URL spells it (for TLS's server name and the `Host` header).
    pub host: String,
    /// The port (the scheme's default if none is given).
    pub port: u16,
    /// True for https.
    pub tls: bool,
    /// True if `webhook.allow_hosts` names the host.
    pub allowed: bool,
}

/// Checks an endpoint's URL; the error says why, for the `url` field.
pub fn check_url(text: &str, allow_hosts: &[String]) -> Result<Destination, String> {
    if text.is_empty() {
        return Err("is required".into());
    }
    if text.chars().count() > URL_CHARS_MAX {
        return Err(format!("must be at most {URL_CHARS_MAX} characters"));
    }
    let url = Url::parse(text).map_err(|e| format!("is not a URL: {e}"))?;
    // The stored form (percent-encoded, punycode) may be longer than what was given.
    if url.as_str().len() > URL_CHARS_MAX {
        return Err(format!(
            "must be at most {URL_CHARS_MAX} characters once encoded"
        ));
    }
    let host = match url.host() {
        Some(Host::Domain(name)) => name.to_ascii_lowercase(),
        Some(Host::Ipv4(ip)) => ip.to_string(),
        Some(Host::Ipv6(ip)) => format!("[{ip}]"),
        None => return Err("must name a host".into()),
    };
    let allowed = allow_hosts.iter().any(|a| a.eq_ignore_ascii_case(&host));
    let tls = match url.scheme() {
        "https" => true,
        "http" if allowed => false,
        "http" => {
            return Err(
                "must be https (plain http only for a host webhook.allow_hosts names)".into(),
            );
        }
        _ => return Err("must be an https URL".into()),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry user info (the signature authenticates Tandem)".into());
    }
    if url.fragment().is_some() {
        return Err("must not have a fragment".into());
    }
    if !allowed {
        let inward = match url.host() {
            Some(Host::Ipv4(ip)) => !is_public(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => !is_public(IpAddr::V6(ip)),
            Some(Host::Domain(name)) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                name == "localhost" || name.ends_with(".localhost") || !name.contains('.')
            }
            None => true,
        };
        if inward {
            return Err(
                "is in a private, loopback or link-local range (or a local name), \
                        which webhook.allow_hosts does not name"
                    .into(),
            );
        }
    }
    let port = url
        .port_or_known_default()
        .ok_or_else(|| "must have a port".to_string())?;
    Ok(Destination {
        url,
        host,
        port,
        tls,
        allowed,
    })
}

impl Destination {
    /// The addresses to connect to: every address the host resolves to, each public unless the
    /// host is allowed. A name resolving to any non-public address is refused whole.
    pub async fn resolve(&self) -> Result<Vec<SocketAddr>, String> {
        let name = match self.url.host() {
            Some(Host::Ipv6(ip)) => ip.to_string(),
            _ => self.host.clone(),
        };
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), self.port))
            .await
            .map_err(|e| format!("resolving {}: {e}", self.host))?
            .collect();
        if addresses.is_empty() {
            return Err(format!("{} resolves to no address", self.host));
        }
        if !self.allowed && addresses.iter().any(|a| !is_public(a.ip())) {
            return Err(format!(
                "{} resolves to a private, loopback or link-local address",
                self.host
            ));
        }
        Ok(addresses)
    }
}

/// True if `ip` is a public unicast address: not loopback, private, link-local, shared
/// (100.64/10), documentation, benchmarking, multicast, broadcast, unspecified or reserved,
/// and for IPv6 not unique-local, link-local, or an IPv4-mapped non-public address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => {
            if let Some(v4) = ip.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            is_public_v6(ip)
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 192 && b == 88 && c == 99)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let [first, second, third, ..] = ip.segments();
    let ipv4_compatible = ip.segments()[..6].iter().all(|s| *s == 0);
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ipv4_compatible
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first & 0xffc0) == 0xfec0
        || (first == 0x0100 && second == 0 && third == 0)
        || first == 0x2002
        || (first == 0x2001 && (second == 0 || second == 0x0db8 || second == 0x0002))
        || (first == 0x0064 && second == 0xff9b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str) -> Result<Destination, String> {
        check_url(url, &[])
    }

    #[test]
    fn https_urls_to_public_hosts_pass() {
        let d = check("https://hooks.example.com/tandem?x=1").unwrap();
        assert_eq!(
            (d.host.as_str(), d.port, d.tls),
            ("hooks.example.com", 443, true)
        );
        let d = check("https://93.184.216.34:8443/h").unwrap();
        assert_eq!(d.port, 8443);
    }

    #[test]
    fn plain_http_user_info_and_fragments_are_refused() {
        assert!(
            check("http://hooks.example.com/")
                .unwrap_err()
                .contains("https")
        );
        assert!(check("ftp://hooks.example.com/").is_err());
        assert!(check("https://user:pw@hooks.example.com/").is_err());
        assert!(check("https://hooks.example.com/#x").is_err());
        assert!(check("not a url").is_err());
        assert!(check("").unwrap_err().contains("required"));
        let long = format!("https://hooks.example.com/{}", "a".repeat(URL_CHARS_MAX));
        assert!(check(&long).unwrap_err().contains("2048"));
        let encoded = format!("https://hooks.example.com/{}", "é".repeat(1000));
        assert!(check(&encoded).unwrap_err().contains("encoded"));
    }

    #[test]
    fn inward_destinations_are_refused_unless_allowed() {
        for url in [
            "https://127.0.0.1/",
            "https://10.1.2.3/",
            "https://192.168.0.1/",
            "https://172.16.0.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
            "https://[::1]/",
            "https://[fd00::1]/",
            "https://[fe80::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://localhost/",
            "https://api.localhost/",
            "https://intranet/",
        ] {
            assert!(check(url).is_err(), "{url}");
        }
        let allow = ["127.0.0.1".to_owned()];
        let d = check_url("http://127.0.0.1:8080/hook", &allow).unwrap();
        assert!(!d.tls && d.allowed);
        assert!(check_url("http://127.0.0.2:8080/hook", &allow).is_err());
    }

    #[test]
    fn public_addresses_are_told_from_the_rest() {
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "192.88.99.1",
            "fc00::1",
            "::",
            "::127.0.0.1",
            "2002:7f00:1::1",
            "2001::1",
            "2001:2::1",
            "fec0::1",
            "100::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn a_name_resolving_inward_is_refused_at_send() {
        let d = Destination {
            url: Url::parse("https://localhost/").unwrap(),
            host: "localhost".into(),
            port: 443,
            tls: true,
            allowed: false,
        };
        assert!(d.resolve().await.unwrap_err().contains("private"));
        let allowed = Destination { allowed: true, ..d };
        assert!(!allowed.resolve().await.unwrap().is_empty());
    }
}
