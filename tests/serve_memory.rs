//! Uploads and downloads stream: `fusillade serve` takes a 200 MB input
//! file and hands it back, then hands out a 64 MiB output file of 1 MiB
//! answers, while its peak memory (VmHWM) stays far below either size.

mod common;

use bytes::Bytes;
use common::daemon::{config, finished_batch, start};
use common::http::Client;
use common::process::{self, TempDir, database_url};
use common::store;
use fusillade::mock::{MockBehavior, MockReply, MockUpstream};
use fusillade::store::{BatchStore, Owner};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(600);
const MB: u64 = 1 << 20;

/// Lines per generated chunk, and chunks per input file.
const LINES_PER_CHUNK: usize = 1000;
const CHUNKS: usize = 200;

/// Answers of 1 MiB in the output file.
const ANSWERS: usize = 64;

/// How much the server's peak memory may grow over its size at rest while
/// hundreds of megabytes go through it: buffers and pools, not files.
const GROWTH_BOUND: u64 = 64 * MB;

/// Lines `k*1000 ..` of the input file, about 1 KB each: the same bytes
/// every time, so the download can be checked against them.
fn chunk(k: usize) -> Bytes {
    let pad = "x".repeat(900);
    let mut out = String::with_capacity(LINES_PER_CHUNK * 1024);
    for i in k * LINES_PER_CHUNK..(k + 1) * LINES_PER_CHUNK {
        out.push_str(&format!(
            r#"{{"custom_id":"r-{i}","method":"POST","url":"/v1/chat/completions","body":{{"model":"m","messages":[{{"role":"user","content":"{pad}"}}]}}}}"#
        ));
        out.push('\n');
    }
    Bytes::from(out)
}

/// The SHA-256 and length of a download, read as it streams.
async fn digest_of(api: &Client, file_id: &str) -> (Vec<u8>, u64) {
    let mut r = api
        .http
        .get(format!("{}/v1/files/{file_id}/content", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut hash = Sha256::new();
    let mut n = 0u64;
    while let Some(piece) = r.chunk().await.unwrap() {
        n += piece.len() as u64;
        hash.update(&piece);
    }
    (hash.finalize().to_vec(), n)
}

#[sqlx::test]
async fn uploads_and_downloads_stream_in_constant_memory(pool: PgPool) {
    let dir = TempDir::new("memory");
    let config_path = dir.join("config.toml");
    std::fs::write(
        &config_path,
        format!("[api]\nupload_spool_dir = \"{}\"\n", dir.display()),
    )
    .unwrap();
    let mut cmd = process::fusillade();
    cmd.args(["serve", "--api-only", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config_path)
        .args(["--database-url", &database_url(&pool).await]);
    let server = process::serve(cmd, LONG).await;
    let api = Client::new(&server.base, None);
    assert_eq!(api.get("/healthz").await.0, 200);
    let at_rest = server.process.peak_rss();
    let started = std::time::Instant::now();

    // 200 MB in, made as it is sent.
    let chunks = futures_util::stream::iter((0..CHUNKS).map(|k| Ok::<_, std::io::Error>(chunk(k))));
    let file = api.upload(reqwest::Body::wrap_stream(chunks)).await;
    let mut want = Sha256::new();
    let mut size = 0u64;
    for k in 0..CHUNKS {
        let c = chunk(k);
        size += c.len() as u64;
        want.update(&c);
    }
    assert!(size > 200 * 1000 * 1000, "{size}");
    assert_eq!(file["bytes"], size, "{file}");
    let after_upload = server.process.peak_rss();
    println!("uploaded {size} bytes in {:?}", started.elapsed());

    // The same 200 MB out.
    let (got, n) = digest_of(&api, file["id"].as_str().unwrap()).await;
    assert_eq!(n, size);
    assert_eq!(got, want.finalize().to_vec(), "the download differs");
    let after_download = server.process.peak_rss();
    println!("downloaded them by {:?}", started.elapsed());

    // A 64 MiB output file: 64 answers of 1 MiB, run by a daemon of the
    // test's own, read back through the server.
    let mock = MockUpstream::start(MockBehavior::default().respond(|c| {
        let mut answer = MockReply::ok_for(c);
        let mut v: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        v["choices"][0]["message"]["content"] = "y".repeat(MB as usize).into();
        answer.body = v.to_string();
        answer
    }))
    .await;
    let store = store(&pool).await;
    let lines: Vec<String> = (0..ANSWERS)
        .map(|i| {
            common::line_with(
                &format!("o-{i}"),
                common::CHAT,
                &common::chat_body("o", "m"),
            )
        })
        .collect();
    let batch = common::daemon::batch_from_lines(&store, &lines).await;
    // Lenient liveness timers: this test loads the machine, and is not
    // about liveness.
    let daemon = start(
        &store,
        config(
            &mock.url(),
            "concurrency = 4",
            "heartbeat_ms = 1000\nstale_after_ms = 60000",
            "",
        ),
    );
    let b = finished_batch(&store, batch, LONG).await;
    daemon.stop().await;
    if b.request_counts.completed != ANSWERS as i64 {
        let errors =
            common::daemon::json_lines(fusillade::store::RequestStore::error_stream(&store, batch))
                .await;
        panic!("{:?}: {errors:?}", b.request_counts);
    }
    let output = store
        .get_batch(Owner::Any, batch)
        .await
        .unwrap()
        .unwrap()
        .output_file_id
        .expect("an output file");
    let output = fusillade::api::wire::file_id(output);
    let (_, out_bytes) = digest_of(&api, &output).await;
    assert!(out_bytes > ANSWERS as u64 * MB, "{out_bytes}");
    let after_output = server.process.peak_rss();
    println!(
        "downloaded {out_bytes} output bytes by {:?}",
        started.elapsed()
    );

    println!(
        "peak RSS: at rest {} MB, after upload {} MB, after download {} MB, after output {} MB",
        at_rest / MB,
        after_upload / MB,
        after_download / MB,
        after_output / MB
    );
    for (what, peak) in [
        ("the upload", after_upload),
        ("the download", after_download),
        ("the output download", after_output),
    ] {
        assert!(
            peak < at_rest + GROWTH_BOUND,
            "{what} raised the peak from {} MB to {} MB",
            at_rest / MB,
            peak / MB
        );
    }
}
