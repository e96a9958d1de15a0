//! [`Page`], the one shape of every list endpoint, and the `?offset=&limit=` query.

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::error::ApiError;

/// Largest page of a list endpoint.
pub const MAX_PAGE: usize = 500;
/// Page size of a list endpoint without `limit`.
pub const DEFAULT_PAGE: usize = 50;

/// One page of a list endpoint (`GET /api/v1/peers`, `/reputation`, `/tasks`, `/channels`,
/// each with `?offset=&limit=`): `{"total": 57, "offset": 0, "items": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// Entries in the whole list.
    pub total: usize,
    /// Where this page starts in the list.
    pub offset: usize,
    /// The entries of this page, in the list's order.
    pub items: Vec<T>,
}

impl<T> Page<T> {
    /// The page of `all` that starts at `offset` and holds at most `limit` entries.
    pub fn of(all: Vec<T>, offset: usize, limit: usize) -> Self {
        let total = all.len();
        let items = all.into_iter().skip(offset).take(limit).collect();
        Self {
            total,
            offset,
            items,
        }
    }

    /// How many entries of the list come after this page.
    pub fn remaining(&self) -> usize {
        self.total
            .saturating_sub(self.offset.saturating_add(self.items.len()))
    }
}

/// `?offset=&limit=` of a list endpoint.
#[derive(Debug, Clone, Copy, Deserialize)]
pub(super) struct PageQuery {
    #[serde(default)]
    pub(super) offset: usize,
    #[serde(default = "default_limit")]
    pub(super) limit: usize,
}

fn default_limit() -> usize {
    DEFAULT_PAGE
}

/// The page a list request asks for: 400 for a query that does not parse or a `limit`
/// outside `1..=MAX_PAGE`.
pub(super) fn page(query: Result<Query<PageQuery>, QueryRejection>) -> Result<PageQuery, ApiError> {
    let Query(q) = query?;
    if q.limit == 0 || q.limit > MAX_PAGE {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`limit` must be 1..={MAX_PAGE}"),
        ));
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_a_window_of_the_list_and_knows_what_follows() {
        let p = Page::of((0..7).collect(), 2, 3);
        assert_eq!(
            p,
            Page {
                total: 7,
                offset: 2,
                items: vec![2, 3, 4]
            }
        );
        assert_eq!(p.remaining(), 2);
        let past = Page::of((0..7).collect::<Vec<_>>(), 10, 3);
        assert!(past.items.is_empty());
        assert_eq!((past.total, past.remaining()), (7, 0));
        let json = serde_json::to_value(Page::of(vec!["a"], 0, 50)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"total": 1, "offset": 0, "items": ["a"]})
        );
    }

    #[test]
    fn limits_outside_the_bounds_are_refused() {
        let ask = |q: &str| {
            let uri: axum::http::Uri = format!("/x?{q}").parse().unwrap();
            page(Query::try_from_uri(&uri))
        };
        let q = ask("").unwrap();
        assert_eq!((q.offset, q.limit), (0, DEFAULT_PAGE));
        let q = ask("offset=5&limit=500").unwrap();
        assert_eq!((q.offset, q.limit), (5, 500));
        for bad in ["limit=0", "limit=501", "limit=x", "offset=-1"] {
            let e = axum::response::IntoResponse::into_response(ask(bad).unwrap_err());
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
