//! A client that reads one batch in a loop on a connection of its own, with
//! as little work of its own per read as HTTP/1.1 allows: the request's
//! head is built once, and there is no pool to check out of.
//!
//! The benchmark's clients share the server's two cores, which real clients
//! polling from elsewhere do not. Through the shared `reqwest` client each
//! read cost the benchmark process about as much CPU as it cost the server
//! (measured with `perf` during `api-load --scenario poll`: 10% of the
//! machine against the server's 8%), and that was counted against the
//! batch as if the server had spent it.

use super::client::{Tally, key};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use std::sync::Arc;

/// The route as counted in the tally.
const ROUTE: &str = "GET /v1/batches/{id}";

/// One polling client of batch `id`.
pub struct Poller {
    /// `host:port` of the server.
    addr: String,
    request: hyper::Request<Empty<Bytes>>,
    conn: Option<SendRequest<Empty<Bytes>>>,
    tally: Arc<Tally>,
}

impl Poller {
    /// A client of the server at `base` (`http://host:port`) reading batch
    /// `id` as owner `k`; it connects on its first read.
    pub fn new(base: &str, k: usize, id: &str, tally: Arc<Tally>) -> Self {
        let addr = base.trim_start_matches("http://").to_owned();
        let request = hyper::Request::get(format!("/v1/batches/{id}"))
            .header(hyper::header::HOST, &addr)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {}", key(k)))
            .body(Empty::new())
            .expect("a valid request");
        Self {
            addr,
            request,
            conn: None,
            tally,
        }
    }

    /// Reads the batch once; its status, decoded as the SDKs do (a typed
    /// field). A failed read is counted, and the next one reconnects.
    pub async fn read(&mut self) -> Option<String> {
        let status = self.send().await;
        if status.is_none() {
            self.conn = None;
        }
        status
    }

    async fn send(&mut self) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Status<'a> {
            status: &'a str,
        }
        if self.conn.is_none() {
            self.conn = self.connect().await;
        }
        let Some(conn) = self.conn.as_mut() else {
            self.tally.record(ROUTE, 0);
            return None;
        };
        let mut request = hyper::Request::new(Empty::new());
        *request.uri_mut() = self.request.uri().clone();
        *request.headers_mut() = self.request.headers().clone();
        let answer = match conn.send_request(request).await {
            Ok(a) => a,
            Err(_) => {
                self.tally.record(ROUTE, 0);
                return None;
            }
        };
        let code = answer.status().as_u16();
        self.tally.record(ROUTE, code);
        let body = answer.into_body().collect().await.ok()?.to_bytes();
        if !(200..300).contains(&code) {
            return None;
        }
        let status = serde_json::from_slice::<Status>(&body).ok();
        if status.is_none() {
            self.tally.record(ROUTE, 0);
        }
        status.map(|s| s.status.to_owned())
    }

    async fn connect(&self) -> Option<SendRequest<Empty<Bytes>>> {
        let stream = tokio::net::TcpStream::connect(&self.addr).await.ok()?;
        stream.set_nodelay(true).ok()?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (send, conn) = hyper::client::conn::http1::handshake(io).await.ok()?;
        // The connection's own task ends when `send` is dropped.
        tokio::spawn(conn);
        Some(send)
    }
}
