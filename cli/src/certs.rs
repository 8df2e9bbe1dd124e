//! `tandemctl certs`: certificates for a deployment.

use std::path::PathBuf;

use anyhow::Context as _;

/// Arguments of `tandemctl certs`.
#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    /// Directory to write into (created if missing; existing files are replaced).
    #[arg(long, default_value = "certs/out")]
    out: PathBuf,
    /// DNS names and IP addresses the servers' certificates are valid for, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
    hosts: Vec<String>,
    /// Name part of every client identity (`<prefix><role>/<name>`).
    #[arg(long, default_value = "default")]
    name: String,
    /// Validity of every certificate, in days.
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// SAN URI prefix of identities; must match the servers' `tls.identity_uri_prefix`.
    #[arg(long, default_value = tandem_tls::identity::DEFAULT_URI_PREFIX)]
    uri_prefix: String,
}

/// Writes the set and lists the files.
pub fn run(args: &CertsArgs) -> anyhow::Result<()> {
    tandem_tls::identity::parse_identity(&format!("reader/{}", args.name))
        .map_err(|_| anyhow::anyhow!("--name must be 1-64 characters of a-z 0-9 . _ -"))?;
    anyhow::ensure!((1..=3650).contains(&args.days), "--days must be 1 to 3650");
    let hosts: Vec<&str> = args.hosts.iter().map(String::as_str).collect();
    let written =
        tandem_tls::issue::write_set(&args.out, &args.uri_prefix, &hosts, &args.name, args.days)
            .with_context(|| format!("writing certificates to {}", args.out.display()))?;
    println!("wrote {} files to {}:", written.len(), args.out.display());
    for path in written {
        println!("  {}", path.display());
    }
    println!(
        "ca.pem is the trust anchor of every server and client; each <role>.key is that role's \
         secret: hand it only to the service that acts in that role."
    );
    Ok(())
}
