//! The dashboard: a static app (plain HTML, CSS and JavaScript, no build
//! step) compiled into the binary and served at `/`. It reads and writes
//! only through the `/v1` API with the key the user enters, so it has no
//! authorization path of its own; the pages themselves hold no data.

use super::{ApiBackend, ApiState};
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

const INDEX: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

/// Scripts and styles only from this origin; the pages may not be framed.
const CSP: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'";

fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(kind)),
            // Revalidated on each load: a new binary serves new pages at once.
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                HeaderName::from_static("content-security-policy"),
                HeaderValue::from_static(CSP),
            ),
            (
                HeaderName::from_static("x-content-type-options"),
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset(INDEX, "text/html; charset=utf-8")
}

async fn app_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

async fn app_css() -> Response {
    asset(APP_CSS, "text/css; charset=utf-8")
}

/// `GET /ui/config.json`: whether keys are asked for, so the page knows
/// before its first API call (a 401 would be logged as a console error).
async fn config<S: ApiBackend>(State(state): State<ApiState<S>>) -> Json<Value> {
    Json(json!({"auth": state.config().auth.is_some()}))
}

/// The dashboard's routes (no key needed: they hold no data).
pub fn routes<S: ApiBackend>() -> Router<ApiState<S>> {
    Router::new()
        .route("/", get(index))
        .route("/ui/config.json", get(config::<S>))
        .route("/ui/app.js", get(app_js))
        .route("/ui/app.css", get(app_css))
}
