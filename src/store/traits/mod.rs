//! The traits of the daemon, the dashboard and the response steps, each
//! with the types it takes and returns: what every backend implements
//! (`postgres/`, `sqlite/`) and the rest of the crate calls. The API's
//! traits (files, batches, requests, health, daemons) are in `store`'s root.

pub(crate) mod dashboard;
pub(crate) mod escalation;
pub(crate) mod maintenance;
pub(crate) mod notify;
pub(crate) mod queue;
pub(crate) mod response_steps;
pub(crate) mod routes;
