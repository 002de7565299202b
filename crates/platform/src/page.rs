//! Keyset pagination: a page token is the opaque, versioned id of the last item returned, so
//! pages stay stable while rows are inserted (ids are UUIDv7: they sort by creation).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use opsconductor_storage::Select;

use crate::validate::Violations;

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 500;

/// A validated page request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// How many items to return.
    pub size: i64,
    /// Return items whose id sorts after this one.
    pub after: Option<String>,
}

impl Page {
    /// Reads `page_size`/`page_token`, recording violations for bad values.
    pub fn parse(page_size: i32, page_token: &str, violations: &mut Violations) -> Page {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => {
                violations.add("page_size", "must not be negative");
                DEFAULT_PAGE_SIZE
            }
            n => i64::from(n).min(MAX_PAGE_SIZE),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            let decoded = decode_token(page_token);
            if decoded.is_none() {
                violations.add("page_token", "is not a token returned by this method");
            }
            decoded
        };
        Page { size, after }
    }

    /// The row count to fetch: one more than the page, to learn whether another page follows.
    pub fn fetch_limit(&self) -> i64 {
        self.size + 1
    }

    /// Ends a listing with this page: rows after the token's id, in id order, one more than
    /// the page (so [`Page::finish`] can tell whether another follows).
    pub fn apply(&self, select: &mut Select, id_column: &str) {
        if let Some(after) = &self.after {
            select.and(&format!("{id_column} > {{}}"), after);
        }
        select
            .push(&format!(" ORDER BY {id_column}"))
            .limit(self.fetch_limit());
    }

    /// Trims a fetched list to the page and returns the next page token ("" on the last page).
    pub fn finish<T>(&self, items: &mut Vec<T>, id: impl Fn(&T) -> &str) -> String {
        if items.len() as i64 > self.size {
            items.truncate(self.size as usize);
            items
                .last()
                .map(|last| encode_token(id(last)))
                .unwrap_or_default()
        } else {
            String::new()
        }
    }
}

fn encode_token(last_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1:{last_id}"))
}

fn decode_token(token: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let id = text.strip_prefix("v1:")?;
    uuid::Uuid::try_parse(id).ok()?;
    Some(id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let id = uuid::Uuid::now_v7().to_string();
        let mut v = Violations::new();
        let page = Page::parse(2, &encode_token(&id), &mut v);
        assert_eq!(page.after.as_deref(), Some(id.as_str()));
        assert!(v.is_empty());
        Page::parse(-1, "garbage", &mut v);
        assert!(v.finish().is_err());
        let mut items = vec!["a", "b", "c"];
        let next = page.finish(&mut items, |s| s);
        assert_eq!(items, ["a", "b"]);
        assert!(!next.is_empty());
    }
}
