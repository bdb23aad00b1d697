//! `GET /_stats` of the plain (not cache-modelling) mock: what it saw, as
//! JSON, so that a test or a user can count calls of a mock running as
//! its own process (`fusillade mock`).

use super::*;

/// The counters and the calls per `custom_id` (a count, not the times).
pub(super) fn json(shared: &Shared) -> String {
    let s = shared.counters();
    let per_id: BTreeMap<String, usize> = shared
        .by_custom_id
        .lock()
        .expect("not poisoned")
        .iter()
        .map(|(id, times)| (id.clone(), times.len()))
        .collect();
    serde_json::json!({
        "total_calls": s.total_calls,
        "in_flight": s.in_flight,
        "max_in_flight": s.max_in_flight,
        "calls_per_model": s.calls_per_model,
        "max_in_flight_per_model": s.max_in_flight_per_model,
        "calls_per_custom_id": per_id,
    })
    .to_string()
}
