//! The dashboard (one page of plain HTML, CSS and JavaScript, embedded in the binary: no CDN,
//! works offline) and the OpenAPI document of the API.

use axum::http::{header, HeaderName};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");
/// The OpenAPI 3 document of every route (a test checks it against [`super::routes`]).
pub const OPENAPI: &str = include_str!("openapi.json");

/// Only the node's own scripts, styles and API: nothing a meter or peer name could inject runs.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                      img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers: [(HeaderName, &'static str); 4] = [
        (header::CONTENT_TYPE, content_type),
        // Assets change with the binary: always revalidate (they are tiny).
        (header::CACHE_CONTROL, "no-cache"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CONTENT_SECURITY_POLICY, POLICY),
    ];
    (headers, body).into_response()
}

/// `GET /`: the dashboard.
pub(super) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// `GET /app.js`.
pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /style.css`.
pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// `GET /api/v1/openapi.json`.
pub(super) async fn openapi() -> Response {
    asset("application/json", OPENAPI)
}
