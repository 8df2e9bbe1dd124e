//! tandem-dashboard: the treasury's, finance's and risk's view of Tandem in a browser (DESIGN
//! section 13; the plan in docs/architecture.md). A client of the orchestrator's and the
//! vault's public gRPC APIs with its own identity (role `dashboard`), acting for the person
//! whose client certificate it verified: every call names that person
//! (`x-tandem-on-behalf-of`), so the services check the person's role, never the dashboard's.
//! It has no database and never sees a card number (tokens and last four digits only).
//!
//! # Layout
//!
//! - [`config`]: its settings (`TANDEM_DASHBOARD__...` overrides).
//! - [`server`]: HTTPS with client certificates, the person read from the certificate, routes.
//! - [`pages`]: what each page reads and shows; [`html`]: escaping and the layout.
//! - [`api`]: the services' clients, calling on behalf of the person.
//!
//! Pages so far: payments (filters in the query string, a page at a time), a payment (its
//! invoice, the split by card, every attempt, the risk decision), card groups, and a card group
//! (its cards with their limits and this month's spend, its policy).

pub mod api;
pub mod config;
pub mod forms;
pub mod html;
pub mod live;
pub mod pages;
pub mod server;

pub use server::run;
