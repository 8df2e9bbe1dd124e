//! Rebuilds the crate when a migration is added: `sqlx::migrate!` embeds `migrations/` at
//! compile time, and without this Cargo reruns it only when a Rust source or an already
//! embedded migration changes, so a new migration file alone would leave `MIGRATOR` stale
//! (the build script sqlx recommends).

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
