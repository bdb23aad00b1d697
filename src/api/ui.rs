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

fn asset(body: impl Into<axum::body::Body>, kind: &'static str) -> Response {
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
        body.into(),
    )
        .into_response()
}

/// The page, with whether keys are asked for written into it, so the app
/// starts without a round trip to ask.
async fn index<S: ApiBackend>(State(state): State<ApiState<S>>) -> Response {
    let auth = if state.config().auth.is_some() {
        "true"
    } else {
        "false"
    };
    asset(INDEX.replace("{{AUTH}}", auth), "text/html; charset=utf-8")
}

async fn app_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

async fn app_css() -> Response {
    asset(APP_CSS, "text/css; charset=utf-8")
}

/// `GET /ui/config.json`: whether keys are asked for (also written into the
/// page), for tools; asking through a 401 would log a console error.
async fn config<S: ApiBackend>(State(state): State<ApiState<S>>) -> Json<Value> {
    Json(json!({"auth": state.config().auth.is_some()}))
}

/// The dashboard's routes (no key needed: they hold no data).
pub fn routes<S: ApiBackend>() -> Router<ApiState<S>> {
    Router::new()
        .route("/", get(index::<S>))
        .route("/ui/config.json", get(config::<S>))
        .route("/ui/app.js", get(app_js))
        .route("/ui/app.css", get(app_css))
}
