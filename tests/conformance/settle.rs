//! Poison isolation (`fusillade::store::Settlement`) on every backend: a
//! row the database refuses is split off and failed alone, the rest of its
//! write lands. No valid result is refused by either schema for its data
//! alone (SQLite takes a NUL in text, PostgreSQL's own refusals are in
//! `store_settle.rs`), so the refusal is planted: a trigger that refuses
//! chosen rows as a broken constraint would ([`Backend::refuse_results_where`]).

use super::{Backend, batch, claim_all, outcome};
use crate::common::collect;
use fusillade::domain::request::RequestState;
use fusillade::store::{RefusedEnd, Settlement, WriteKind};
use std::collections::HashMap;

/// The error file of a batch, by custom_id.
async fn errors_by_id<S: Backend>(
    store: &S,
    batch: fusillade::domain::ids::BatchId,
) -> HashMap<String, serde_json::Value> {
    let bytes = collect(store.error_stream(batch)).await;
    String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["custom_id"].as_str().unwrap().to_owned(), v)
        })
        .collect()
}

pub async fn a_refused_result_is_failed_alone_and_the_rest_of_its_write_lands<S: Backend>(
    store: &S,
) {
    let b = super::batch_of(store, 12).await;
    let got = claim_all(store, b.id).await;
    store
        .refuse_results_where("NEW.upstream_request_id = 'poison'")
        .await;
    let mut finishes: Vec<_> = got
        .iter()
        .map(|c| outcome(c, RequestState::Completed))
        .collect();
    finishes[5].upstream_request_id = Some("poison".into());

    let mut settlement = Settlement::new(finishes, Vec::new());
    settlement.resume(store).await.unwrap();
    assert!(settlement.is_done());
    let settled = settlement.into_settled();
    let states: HashMap<_, _> = settled.finished.iter().copied().collect();
    assert_eq!(states.len(), 12);
    for (i, c) in got.iter().enumerate() {
        let want = if i == 5 {
            RequestState::Failed
        } else {
            RequestState::Completed
        };
        assert_eq!(states.get(&c.id), Some(&want), "{:?}", c.custom_id);
    }
    assert_eq!(settled.refused.len(), 1);
    let r = &settled.refused[0];
    assert_eq!(
        (r.id, r.write, r.end),
        (got[5].id, WriteKind::Finish, RefusedEnd::FailedInstead)
    );
    assert!(r.reason.contains("planted refusal"), "{}", r.reason);

    let errors = errors_by_id(store, b.id).await;
    assert_eq!(errors.len(), 1);
    let e = &errors[got[5].custom_id.as_deref().unwrap()]["error"];
    assert_eq!(e["code"], "storage_refused");
    assert!(
        e["message"].as_str().unwrap().contains("planted refusal"),
        "{e}"
    );
    let counts = batch(store, b.id).await.request_counts;
    assert_eq!((counts.completed, counts.failed), (11, 1));
}

pub async fn a_row_whose_failure_is_refused_too_is_given_up<S: Backend>(store: &S) {
    let b = super::batch_of(store, 6).await;
    let got = claim_all(store, b.id).await;
    // Every result of r2 is refused, the failure written instead too.
    store.refuse_results_where("NEW.custom_id = 'r2'").await;
    let finishes = got
        .iter()
        .map(|c| outcome(c, RequestState::Completed))
        .collect();
    let mut settlement = Settlement::new(finishes, Vec::new());
    settlement.resume(store).await.unwrap();
    let settled = settlement.into_settled();
    assert_eq!(settled.finished.len(), 5);
    assert_eq!(settled.refused.len(), 1);
    let r = &settled.refused[0];
    assert_eq!(got[2].custom_id.as_deref(), Some("r2"));
    assert_eq!((r.id, r.end), (got[2].id, RefusedEnd::GivenUp));
    assert!(
        r.reason.contains("failing it was refused too"),
        "{}",
        r.reason
    );
    let b = store
        .get_batch(fusillade::store::Owner::Any, b.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (b.request_counts.completed, b.request_counts.failed),
        (5, 0)
    );
}
