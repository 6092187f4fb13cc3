//! The page and its assets, embedded in the binary. They hold no data and need no token:
//! the page asks for the token and sends it with every API request.

/// One embedded file.
#[derive(Clone, Copy, Debug)]
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

pub const HTML: &str = include_str!("../../assets/home.html");
pub const CSS: &str = include_str!("../../assets/home.css");
pub const JS: &str = include_str!("../../assets/home.js");

/// Every file served, by path (`/` and `/home` are the page).
pub const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: HTML,
    },
    Asset {
        path: "/home",
        content_type: "text/html; charset=utf-8",
        body: HTML,
    },
    Asset {
        path: "/assets/home.css",
        content_type: "text/css; charset=utf-8",
        body: CSS,
    },
    Asset {
        path: "/assets/home.js",
        content_type: "text/javascript; charset=utf-8",
        body: JS,
    },
];

/// Scripts and styles only from this origin, no inline script, requests only to this origin.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

pub fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}
