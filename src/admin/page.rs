//! `GET /`: the live status page, one self-contained HTML document (inline
//! CSS and JavaScript, no external assets) that polls `/api/v1/status` and
//! `/api/v1/queues` every 2 s. When the API wants a token the page asks
//! for it once (or takes it from `#token=...` in the URL) and keeps it in
//! the tab's sessionStorage. The page holds no data itself, so it is
//! served without a token.

/// The page (see `page.html` beside this file).
pub const PAGE: &str = include_str!("page.html");

#[cfg(test)]
mod tests {
    use super::PAGE;

    #[test]
    fn page_loads_nothing_from_elsewhere() {
        for needle in ["src=", "href=", "@import", "url("] {
            assert!(!PAGE.contains(needle), "page references {needle}");
        }
        assert!(PAGE.contains("/api/v1/status") && PAGE.contains("/api/v1/queues"));
        assert!(PAGE.contains("name=\"viewport\""));
    }
}
