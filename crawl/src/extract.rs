//! Links, title and text of an HTML page, with a real HTML parser (`scraper`, on
//! html5ever), which reads malformed HTML as browsers do.

use ego_tree::iter::Edge;
use scraper::{Html, Node, Selector};
use std::sync::LazyLock;

use url::Url;

use crate::normalize;

/// Text kept of one page at most, in bytes (the rest is left out).
pub const MAX_TEXT_BYTES: usize = 1 << 20;

/// What a page holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extracted {
    /// Its `<title>`.
    pub title: String,
    /// Its text: text nodes outside `script`, `style`, `noscript` and `template`, joined by
    /// spaces, at most [`MAX_TEXT_BYTES`].
    pub text: String,
    /// Its `a[href]` links, normalized against the page (or its `<base href>`), in order,
    /// without repeats.
    pub links: Vec<String>,
}

/// The selectors `extract` uses, parsed once.
static BASE: LazyLock<Option<Selector>> = LazyLock::new(|| Selector::parse("base[href]").ok());
static TITLE: LazyLock<Option<Selector>> = LazyLock::new(|| Selector::parse("title").ok());
static ANCHORS: LazyLock<Option<Selector>> = LazyLock::new(|| Selector::parse("a[href]").ok());

/// Parses `html`, the page at `page`.
pub fn extract(page: &Url, html: &str) -> Extracted {
    let document = Html::parse_document(html);
    let base = BASE
        .as_ref()
        .and_then(|s| document.select(s).next())
        .and_then(|e| e.value().attr("href"))
        .and_then(|href| page.join(href).ok())
        .unwrap_or_else(|| page.clone());
    let title = TITLE
        .as_ref()
        .and_then(|s| document.select(s).next())
        .map(|e| e.text().collect::<String>().trim().to_owned())
        .unwrap_or_default();
    let mut links = Vec::new();
    let mut seen = std::collections::HashSet::new();
    if let Some(anchors) = ANCHORS.as_ref() {
        for anchor in document.select(anchors) {
            if let Some(url) = anchor
                .value()
                .attr("href")
                .and_then(|h| normalize(&base, h))
            {
                let url = String::from(url);
                if seen.insert(url.clone()) {
                    links.push(url);
                }
            }
        }
    }
    // One walk over the tree, counting the hidden elements it is inside: linear in the
    // document, however deep it nests.
    let mut text = String::new();
    let mut hidden = 0usize;
    let is_hidden = |node: &Node| {
        node.as_element().is_some_and(|e| {
            matches!(
                e.name(),
                "script" | "style" | "noscript" | "template" | "title"
            )
        })
    };
    for edge in document.tree.root().traverse() {
        match edge {
            Edge::Open(node) if is_hidden(node.value()) => hidden += 1,
            Edge::Close(node) if is_hidden(node.value()) => hidden = hidden.saturating_sub(1),
            Edge::Open(node) if hidden == 0 => {
                if let Node::Text(t) = node.value() {
                    let words = t.trim();
                    if !words.is_empty() && text.len() < MAX_TEXT_BYTES {
                        if !text.is_empty() {
                            text.push(' ');
                        }
                        text.push_str(words);
                    }
                }
            }
            _ => {}
        }
    }
    if text.len() > MAX_TEXT_BYTES {
        let mut end = MAX_TEXT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    Extracted { title, text, links }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_resolved_deduplicated_and_scripts_are_not_text() {
        let page = Url::parse("http://a.test/dir/page.html").expect("url");
        let html = r#"<html><head><title> Hi </title><script>var x = "hidden";</script></head>
            <body><p>Hello <b>world</b></p><a href="other.html#frag">o</a>
            <a href="/top">t</a><a href="other.html">again</a><a href="mailto:x@y">m</a>
            <a href="HTTP://B.test:80/x">b</a><style>p {}</style><p>unclosed <div>tags"#;
        let got = extract(&page, html);
        assert_eq!(got.title, "Hi");
        assert_eq!(
            got.links,
            vec![
                "http://a.test/dir/other.html",
                "http://a.test/top",
                "http://b.test/x"
            ]
        );
        assert_eq!(got.text, "Hello world o t again m b unclosed tags");
    }
}
