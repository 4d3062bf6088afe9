//! Bearer-token checks for feeds (writes) and, when required, for reads.

use axum::http::{HeaderMap, StatusCode, header};
use beeld_layers::Collection;

use crate::feeds::FeedIndex;
use crate::problem::Problem;
use crate::state::StateHandle;

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn unauthorized(detail: &str) -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Missing or unknown token",
        detail,
    )
    .with_header(header::WWW_AUTHENTICATE, "Bearer realm=\"beeld\"")
}

/// The feed allowed to write `collection` with the request's token.
pub fn authorize_write(
    state: &StateHandle,
    headers: &HeaderMap,
    collection: Collection,
) -> Result<FeedIndex, Problem> {
    let Some(token) = bearer(headers) else {
        return Err(unauthorized(
            "writes need 'Authorization: Bearer <token>' with the token configured for your feed",
        ));
    };
    let feeds = state.feeds();
    let Some(index) = feeds.by_token(token) else {
        return Err(unauthorized(
            "the bearer token is not configured for any feed",
        ));
    };
    let entry = feeds.entry(index);
    if !entry.collections.contains(&collection) {
        let allowed: Vec<_> = entry.collections.iter().map(|c| c.as_str()).collect();
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Feed may not write this collection",
            format!(
                "feed '{}' may write {} but not {collection}",
                entry.name,
                allowed.join(", ")
            ),
        ));
    }
    Ok(index)
}

/// Checks read access when reads require a token. Browsers cannot set
/// headers on a WebSocket or EventSource request, so an `access_token`
/// query parameter is accepted too.
pub fn authorize_read(
    state: &StateHandle,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<(), Problem> {
    if !state.config().require_read_token {
        return Ok(());
    }
    let from_query = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "access_token")
            .map(|(_, v)| v.into_owned())
    });
    let Some(token) = bearer(headers).map(str::to_owned).or(from_query) else {
        return Err(unauthorized(
            "this server requires 'Authorization: Bearer <token>' for reads",
        ));
    };
    let known =
        state.config().read_tokens.contains(&token) || state.feeds().by_token(&token).is_some();
    if known {
        Ok(())
    } else {
        Err(unauthorized("the bearer token is not a read or feed token"))
    }
}
