//! The orchestrator's domain: pure, deterministic decision code.

pub mod actor;
pub mod allocation;
pub mod booking;
pub mod fx;
pub mod group;
pub mod planning;
pub mod reconciliation;
pub mod record;
pub mod risk;
pub mod saga;
pub mod webhooks;
