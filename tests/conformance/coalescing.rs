//! Request coalescing: claims in prefix-group order (deadlines first),
//! replica affinity, and what it does to a prefix cache's hit rate.

use super::*;
use crate::common::daemon::*;
use crate::common::{CHAT, jsonl, line_with, new_batch};
use fusillade::mock::{CacheModel, MockBehavior, MockReply, MockUpstream};
use fusillade::store::ModelDemand;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

/// A chat line whose system prompt is `system` and question `q`.
fn chat_line(custom_id: &str, model: &str, system: &str, q: &str) -> String {
    let body = json!({"model": model, "temperature": 0, "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": q}]});
    line_with(custom_id, CHAT, &body.to_string())
}

/// `prompts` system prompts (of `words` words each) × `questions`, in an
/// interleaved order: the file never has two lines of one prompt in a row.
fn interleaved(prompts: usize, questions: usize, words: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for q in 0..questions {
        for p in 0..prompts {
            let system: String = (0..words).map(|w| format!("p{p}w{w} ")).collect();
            lines.push(chat_line(
                &format!("p{p}-q{q}"),
                "m",
                &system,
                &format!("question {q}"),
            ));
        }
    }
    lines
}

async fn daemon_id<S: Backend>(store: &S) -> DaemonId {
    store
        .register_daemon(NewDaemon {
            hostname: "test".into(),
            pid: 1,
            version: "0".into(),
            config: json!({}),
        })
        .await
        .unwrap()
        .id
}

fn demand(daemon: DaemonId, want: u32, grouped: bool) -> ClaimRequest {
    ClaimRequest {
        daemon,
        models: vec![ModelDemand {
            model: "m".into(),
            limit: want,
            share: want,
            in_flight: 0,
            waiting: want,
            per_call: 1,
        }],
        default_limit: 1,
        default_share: 1,
        max_total: want,
        scope: None,
        grouped,
        schedule: Default::default(),
    }
}

/// The prompt number of a `p{P}-q{Q}` custom_id.
fn prompt_of(custom_id: &str) -> String {
    custom_id.split('-').next().unwrap().to_owned()
}

/// How many times the sequence changes group: a grouped order of `g`
/// groups changes `g - 1` times.
fn group_changes(ids: &[String]) -> usize {
    ids.windows(2)
        .filter(|w| prompt_of(&w[0]) != prompt_of(&w[1]))
        .count()
}

pub async fn a_claim_takes_requests_of_one_prefix_together<S: Backend>(store: &S) {
    batch_from_lines(store, &interleaved(4, 5, 20)).await;
    let d = daemon_id(store).await;
    let custom_ids = |c: &fusillade::store::Claim| -> Vec<String> {
        c.requests
            .iter()
            .map(|r| r.custom_id.clone().unwrap())
            .collect()
    };
    // Half the queue: two whole groups, though the file interleaves them.
    let first = custom_ids(&store.claim(&demand(d, 10, true)).await.unwrap());
    assert_eq!(first.len(), 10);
    assert_eq!(group_changes(&first), 1, "not two whole groups: {first:?}");
    let rest = custom_ids(&store.claim(&demand(d, 10, true)).await.unwrap());
    assert_eq!(rest.len(), 10);
    assert_eq!(group_changes(&rest), 1, "not two whole groups: {rest:?}");
    // Within a group, line order.
    let all: Vec<String> = first.into_iter().chain(rest).collect();
    for p in 0..4 {
        let mine: Vec<&String> = all
            .iter()
            .filter(|i| prompt_of(i) == format!("p{p}"))
            .collect();
        let want: Vec<String> = (0..5).map(|q| format!("p{p}-q{q}")).collect();
        assert_eq!(mine, want.iter().collect::<Vec<_>>());
    }
}

pub async fn without_grouping_a_claim_takes_line_order<S: Backend>(store: &S) {
    let lines = interleaved(4, 5, 20);
    batch_from_lines(store, &lines).await;
    let d = daemon_id(store).await;
    let claim = store.claim(&demand(d, 20, false)).await.unwrap();
    let mut ids: Vec<_> = claim.requests.iter().map(|r| r.id).collect();
    let claimed = ids.clone();
    ids.sort();
    assert_eq!(claimed.len(), 20);
    let by_line: Vec<String> = {
        let mut rs = claim.requests.clone();
        rs.sort_by_key(|r| r.id);
        rs.into_iter().map(|r| r.custom_id.unwrap()).collect()
    };
    assert_eq!(
        group_changes(&by_line),
        19,
        "the file interleaves the groups"
    );
}

pub async fn a_tight_window_batch_goes_before_a_large_day_long_one<S: Backend>(store: &S) {
    // The day-long batch comes first and has many groups.
    batch_from_lines(store, &interleaved(10, 10, 10)).await;
    let urgent: Vec<String> = (0..5)
        .map(|i| {
            chat_line(
                &format!("urgent-{i}"),
                "m",
                &format!("urgent prompt {i}"),
                "q",
            )
        })
        .collect();
    let file = upload(store, "", &jsonl(&urgent)).await;
    let mut nb = new_batch("", file.id, CHAT);
    nb.completion_window = "10m";
    store.create_batch(nb).await.unwrap();
    let d = daemon_id(store).await;
    let claim = store.claim(&demand(d, 8, true)).await.unwrap();
    let ids: Vec<String> = claim
        .requests
        .iter()
        .map(|r| r.custom_id.clone().unwrap())
        .collect();
    assert_eq!(ids.len(), 8);
    assert!(
        ids[..5].iter().all(|i| i.starts_with("urgent-")),
        "the 10-minute batch must be claimed first: {ids:?}"
    );
}

/// A mock that records which system prompts it was sent.
async fn recording_mock(seen: Arc<Mutex<Vec<String>>>) -> MockUpstream {
    MockUpstream::start(MockBehavior::default().respond(move |call| {
        let system = call.body["messages"][0]["content"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        seen.lock().unwrap().push(system);
        MockReply::ok_for(call)
    }))
    .await
}

/// Runs 6 prompts × 6 questions of model `m` on two replicas; returns what
/// each replica was sent.
async fn run_on_two_replicas<S: Backend>(store: &S, grouping: bool) -> (Vec<String>, Vec<String>) {
    run_on_replicas(store, grouping, Where::Upstream).await.0
}

/// Where the replicas' `urls` are configured.
enum Where {
    /// `[upstream] urls`, the route of every model.
    Upstream,
    /// `[models."m"] urls`, while `[upstream]` names a third server.
    Model,
}

/// [`run_on_two_replicas`], with the `urls` where `at` says; also returns
/// what the `[upstream]` server was sent when it is not a replica.
async fn run_on_replicas<S: Backend>(
    store: &S,
    grouping: bool,
    at: Where,
) -> ((Vec<String>, Vec<String>), Vec<String>) {
    let batch = batch_from_lines(store, &interleaved(6, 6, 8)).await;
    let (a_seen, b_seen, c_seen) = (Arc::default(), Arc::default(), Arc::default());
    let a = recording_mock(Arc::clone(&a_seen)).await;
    let b = recording_mock(Arc::clone(&b_seen)).await;
    let c = recording_mock(Arc::clone(&c_seen)).await;
    let urls = format!(
        "urls = [\"{}\", \"{}\"]\nconcurrency = 64",
        a.url(),
        b.url()
    );
    let grouping = format!("prefix_grouping = {grouping}");
    let cfg = match at {
        Where::Upstream => config(&a.url(), &urls, &grouping, ""),
        Where::Model => config(&c.url(), "", &grouping, &format!("[models.\"m\"]\n{urls}")),
    };
    let daemon = start(store, cfg);
    let done = finished_batch(store, batch, LONG).await;
    daemon.stop().await;
    assert_eq!(done.request_counts.completed, 36);
    let a_seen = a_seen.lock().unwrap().clone();
    let b_seen = b_seen.lock().unwrap().clone();
    let c_seen = c_seen.lock().unwrap().clone();
    ((a_seen, b_seen), c_seen)
}

pub async fn a_prefix_group_sticks_to_one_replica<S: Backend>(store: &S) {
    let (a, b) = run_on_two_replicas(store, true).await;
    assert_eq!(a.len() + b.len(), 36);
    let a: HashSet<String> = a.into_iter().collect();
    let b: HashSet<String> = b.into_iter().collect();
    assert!(
        a.is_disjoint(&b),
        "a system prompt was sent to both replicas"
    );
}

pub async fn without_grouping_calls_are_dealt_to_the_replicas_in_turn<S: Backend>(store: &S) {
    let (a, b) = run_on_two_replicas(store, false).await;
    assert_eq!(a.len(), 18);
    assert_eq!(b.len(), 18);
}

pub async fn a_models_own_urls_replace_the_upstream_route<S: Backend>(store: &S) {
    let ((a, b), upstream) = run_on_replicas(store, false, Where::Model).await;
    assert!(
        upstream.is_empty(),
        "the [upstream] server was sent {} calls",
        upstream.len()
    );
    assert_eq!(a.len(), 18);
    assert_eq!(b.len(), 18);
}

/// Runs 8 prompts × 8 questions, interleaved, through a daemon against the
/// cache-modelling mock (cache room for 2 prompts); returns the hit rate.
async fn hit_rate<S: Backend>(store: &S, grouping: bool) -> f64 {
    let lines = interleaved(8, 8, 95);
    let batch = batch_from_lines(store, &lines).await;
    let mock = MockUpstream::start(MockBehavior::with_cache(CacheModel {
        capacity_blocks: 14,
        decode: Duration::from_millis(5),
        ..CacheModel::default()
    }))
    .await;
    let cfg = config(
        &mock.url(),
        "concurrency = 4",
        &format!("prefix_grouping = {grouping}"),
        "",
    );
    let daemon = start(store, cfg);
    let done = finished_batch(store, batch, LONG).await;
    daemon.stop().await;
    assert_eq!(done.request_counts.completed, 64);
    // Every line got the answer to its own prompt.
    let out = json_lines(store.output_stream(batch)).await;
    let bodies: HashMap<String, Value> = lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["custom_id"].as_str().unwrap().to_owned(),
                v["body"].clone(),
            )
        })
        .collect();
    assert_eq!(out.len(), 64);
    for o in &out {
        let id = o["custom_id"].as_str().unwrap();
        assert_eq!(
            o["response"]["body"]["choices"][0]["message"]["content"],
            fusillade::mock::answer_for(&bodies[id])
        );
    }
    mock.cache_stats().unwrap().hit_rate()
}

pub async fn grouping_raises_the_prefix_cache_hit_rate<S: Backend>(store: &S) {
    let off = hit_rate(store, false).await;
    // A second batch on the same database: the first one's rows are gone
    // from the queue, and the cache is a fresh mock's.
    let on = hit_rate(store, true).await;
    assert!(
        on >= 0.75 && on > off + 0.2,
        "hit rate grouped {on:.2}, in file order {off:.2}"
    );
}

pub async fn a_replica_that_refuses_connections_is_left_out<S: Backend>(store: &S) {
    let batch = batch_from_lines(store, &interleaved(6, 6, 8)).await;
    let seen = Arc::default();
    let up = recording_mock(Arc::clone(&seen)).await;
    // A port nobody listens on: connections are refused.
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let cfg = config(
        &up.url(),
        &format!("urls = [\"{gone}\", \"{}\"]\nconcurrency = 64", up.url()),
        "",
        "",
    );
    let daemon = start(store, cfg);
    let done = finished_batch(store, batch, LONG).await;
    daemon.stop().await;
    assert_eq!(done.request_counts.completed, 36);
    assert_eq!(seen.lock().unwrap().len(), 36);
}

pub async fn a_scoped_claim_of_a_private_batch_takes_whole_prefix_groups<S: Backend>(store: &S) {
    // `fusillade run`'s daemon, scoped to its own private batch.
    let file = upload(store, "", &jsonl(&interleaved(4, 5, 20))).await;
    let mut nb = new_batch("", file.id, CHAT);
    nb.private = true;
    let batch = store.create_batch(nb).await.unwrap().id;
    let d = daemon_id(store).await;
    let mut req = demand(d, 10, true);
    req.scope = Some(batch);
    let ids: Vec<String> = store
        .claim(&req)
        .await
        .unwrap()
        .requests
        .iter()
        .map(|r| r.custom_id.clone().unwrap())
        .collect();
    assert_eq!(ids.len(), 10);
    assert_eq!(group_changes(&ids), 1, "not two whole groups: {ids:?}");
}
