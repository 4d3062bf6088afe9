//! RFC 9457 `application/problem+json` errors: the one error shape of every
//! HTTP entry point.
//!
//! Messages are written for the person who runs a feed: they say what was
//! wrong, where, and what to do. 4xx problems are not logged as errors (they
//! are the client's); 5xx problems are.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Most per-feature errors listed in one response.
pub const MAX_LISTED_ERRORS: usize = 100;

/// An error response. Boxed: it travels in every handler's `Err` and is
/// large, while the `Ok` path should stay small.
#[derive(Debug, Clone)]
pub struct Problem(Box<ProblemBody>);

/// The fields of a [`Problem`].
#[derive(Debug, Clone)]
pub struct ProblemBody {
    /// HTTP status.
    pub status: StatusCode,
    /// Short machine-readable kind, the last part of the `type` URI.
    pub kind: &'static str,
    /// Short human summary.
    pub title: String,
    /// What happened and what to do.
    pub detail: String,
    /// Per-feature problems, for rejected batches.
    pub errors: Vec<Value>,
    /// How many per-feature problems were not listed.
    pub errors_not_listed: usize,
    /// Extra headers (WWW-Authenticate, Retry-After, Allow).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl Problem {
    /// A problem without per-feature errors.
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: impl Into<String>,
        detail: impl Into<String>,
    ) -> Problem {
        Problem(Box::new(ProblemBody {
            status,
            kind,
            title: title.into(),
            detail: detail.into(),
            errors: Vec::new(),
            errors_not_listed: 0,
            headers: Vec::new(),
        }))
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: header::HeaderName, value: &'static str) -> Problem {
        self.headers.push((name, HeaderValue::from_static(value)));
        self
    }

    /// 400 for a request that cannot be understood.
    pub fn bad_request(kind: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, kind, "Bad request", detail)
    }

    /// 404 for an unknown collection.
    pub fn unknown_collection(name: &str) -> Problem {
        Problem::new(
            StatusCode::NOT_FOUND,
            "unknown-collection",
            "Unknown collection",
            format!(
                "there is no collection '{name}'; the collections are regions, municipalities, incidents, units and hazards (see /collections)"
            ),
        )
    }

    /// 404 for an unknown feature.
    pub fn unknown_feature(collection: &str, id: &str) -> Problem {
        Problem::new(
            StatusCode::NOT_FOUND,
            "unknown-feature",
            "Unknown feature",
            format!(
                "collection '{collection}' has no feature '{id}'; it may have been deleted or expired"
            ),
        )
    }

    /// 500 with an opaque message; the cause is logged, not sent.
    pub fn internal(cause: &dyn std::fmt::Display) -> Problem {
        tracing::error!(error = %cause, "internal error");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
            "the server failed to handle the request; nothing was written; it has been logged",
        )
    }
}

impl std::ops::Deref for Problem {
    type Target = ProblemBody;
    fn deref(&self) -> &ProblemBody {
        &self.0
    }
}

impl std::ops::DerefMut for Problem {
    fn deref_mut(&mut self) -> &mut ProblemBody {
        &mut self.0
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let problem = *self.0;
        let mut body = json!({
            "type": format!("urn:beeld:problem:{}", problem.kind),
            "title": problem.title,
            "status": problem.status.as_u16(),
            "detail": problem.detail,
        });
        if !problem.errors.is_empty() {
            body["errors"] = Value::Array(problem.errors);
            if problem.errors_not_listed > 0 {
                body["errors_not_listed"] = json!(problem.errors_not_listed);
            }
        }
        let mut response = (problem.status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        for (name, value) in problem.headers {
            headers.insert(name, value);
        }
        response
    }
}
