#![no_main]
//! Catalog and tag-list pages as they arrive from the network, through the listing path:
//! the page's names (`listing_page`), its `Link` header (`next_page`), the names a
//! directory may show (`listable_repository`, `listable_tag`) and the listing `readdir`
//! walks (`Listing`).
//!
//! The input is a `Link` header value, a newline, and a page body.
//!
//! Property: nothing panics; every name a listing holds is a file name the kernel takes
//! (not empty, not `.` or `..`, no `/` or NUL, at most 255 bytes); the listing is sorted
//! without duplicates and finds each of its names where it holds it.

use libfuzzer_sys::fuzz_target;
use reposure_fs::filesystem::NodeKind;
use reposure_fs::listing::Listing;
use reposure_fs::namespace::{self, NAME_MAX};
use reposure_registry::store::http::{listing_page, next_page};

fuzz_target!(|data: &[u8]| {
    let (link, body) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b""[..], data),
    };
    let current = reqwest::Url::parse("http://127.0.0.1:5000/v2/a/b/tags/list?n=1000").unwrap();
    if let Ok(link) = http::HeaderValue::from_bytes(link) {
        let _ = next_page(&current, Some(&link));
    }
    let repositories = listing_page(body, "repositories").unwrap_or_default();
    let tags = listing_page(body, "tags").unwrap_or_default();
    let mut entries = Vec::new();
    for repository in repositories
        .iter()
        .filter(|r| namespace::listable_repository(r))
    {
        let (dir, _) = reposure_registry::names::parent_and_base(repository);
        if dir.is_empty() {
            entries.push((repository.clone(), 1, NodeKind::Directory));
        }
    }
    for tag in tags.iter().filter(|t| namespace::listable_tag("a/b", t)) {
        entries.push((namespace::listed_name("a/b", tag, false), 2, NodeKind::File));
    }
    let listing = Listing::from_entries(entries);
    let mut previous: Option<String> = None;
    for (index, (name, ..)) in listing.from(0).enumerate() {
        assert!(!name.is_empty() && name != "." && name != "..", "{name:?}");
        assert!(!name.contains(['/', '\0']), "{name:?}");
        assert!(name.len() <= NAME_MAX, "{} bytes", name.len());
        assert!(previous.as_deref().is_none_or(|p| p < name), "unsorted at {name:?}");
        assert_eq!(listing.position(name), Some(index));
        previous = Some(name.to_owned());
    }
});
