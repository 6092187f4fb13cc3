//! Bearer tokens: 401 cases, the `[[api.token]]` configuration and its errors, minting.

mod common;

use common::*;
use opha_api::{ApiConfig, RequestParts, Role, Tokens, mint, token_sha256};
use opha_common::wire::TenantId;

fn with_auth(w: &World, target: &str, header: Option<&str>) -> opha_api::Reply {
    let mut req = RequestParts::get(target, None);
    req.authorization = header.map(str::to_string);
    w.api.handle(&req)
}

#[test]
fn missing_malformed_and_unknown_tokens_are_401() {
    let w = world();
    let good = format!("Bearer {}", w.operator);
    let unknown = format!("Bearer opha_{}", "0".repeat(64));
    let cases: Vec<Option<&str>> = vec![
        None,
        Some(""),
        Some("Bearer"),
        Some("Bearer "),
        Some("Basic bm9jOnNlY3JldA=="),
        Some(unknown.as_str()),
        Some("Bearer opha_short"),
        Some(w.operator.as_str()),
    ];
    for (i, h) in cases.iter().enumerate() {
        for target in [
            "/api/v1/events",
            "/api/v1/tenants/1/usage",
            "/api/v1/no-such",
        ] {
            let r = with_auth(&w, target, *h);
            assert_eq!(r.status, 401, "{h:?} {target}: {}", r.body);
            assert_eq!(r.body["error"], "unauthorized");
            assert!(r.body.get("items").is_none());
        }
        assert_eq!(w.api.metrics().unauthorized_total(), 3 * (i as u64 + 1));
    }
    // The scheme is case-insensitive; surrounding blanks are ignored.
    for h in [
        good.clone(),
        format!("bearer {}", w.operator),
        format!("  BEARER {}  ", w.operator),
    ] {
        assert_eq!(with_auth(&w, "/api/v1/events", Some(&h)).status, 200, "{h}");
    }
    // Authenticated, unknown endpoint: 404.
    assert_eq!(with_auth(&w, "/api/v1/no-such", Some(&good)).status, 404);
    assert_eq!(w.api.metrics().forbidden_total(), 0);
}

#[test]
fn minted_tokens_round_trip_through_the_config_file() {
    let op = mint("noc", None).unwrap();
    let t7 = mint("acme portal", Some(TenantId(7))).unwrap();
    assert!(op.token.starts_with("opha_") && op.token.len() == 5 + 64);
    assert_ne!(op.token, t7.token);
    assert_eq!(op.entry.sha256, token_sha256(&op.token));
    let text = format!(
        "[other]\nx = 1\n\n[api]\nmax_page = 50\n\n{}\n{}",
        op.to_toml(),
        t7.to_toml()
    );
    let cfg = ApiConfig::from_toml(&text).unwrap();
    assert_eq!(cfg.max_page, 50);
    assert_eq!(cfg.tokens, vec![op.entry.clone(), t7.entry.clone()]);
    assert_eq!(cfg.tokens[1].role, Role::Tenant);
    let tokens = Tokens::new(&cfg.tokens).unwrap();
    let p = tokens
        .authenticate(Some(&format!("Bearer {}", t7.token)))
        .unwrap();
    assert_eq!(p.name, "acme portal");
    assert_eq!(p.scope, opha_api::PrincipalScope::Tenant(TenantId(7)));
    let p = tokens
        .authenticate(Some(&format!("Bearer {}", op.token)))
        .unwrap();
    assert_eq!(p.scope, opha_api::PrincipalScope::Operator);
    // Logs show names, never hashes or tokens.
    let dbg = format!("{tokens:?}");
    assert!(dbg.contains("noc") && !dbg.contains(&op.entry.sha256[..16]));
    // The config file never holds the token.
    assert!(!text.contains(&op.token) && !text.contains(&t7.token));
}

#[test]
fn config_errors_name_the_key() {
    let sha = token_sha256("opha_x");
    let cases = [
        (
            format!("[[api.token]]\nname = \"a\"\nrole = \"tenant\"\nsha256 = \"{sha}\"\n"),
            "api.token[0].tenant",
        ),
        (
            format!(
                "[[api.token]]\nname = \"a\"\nrole = \"operator\"\ntenant = 3\nsha256 = \"{sha}\"\n"
            ),
            "api.token[0].tenant",
        ),
        (
            "[[api.token]]\nname = \"a\"\nrole = \"operator\"\nsha256 = \"abc\"\n".to_string(),
            "api.token[0].sha256",
        ),
        (
            format!(
                "[[api.token]]\nname = \"a\"\nrole = \"operator\"\nsha256 = \"{sha}\"\n\
                 [[api.token]]\nname = \"a\"\nrole = \"operator\"\nsha256 = \"{}\"\n",
                token_sha256("opha_y")
            ),
            "api.token[1].name",
        ),
        (
            format!(
                "[[api.token]]\nname = \"a\"\nrole = \"operator\"\nsha256 = \"{sha}\"\n\
                 [[api.token]]\nname = \"b\"\nrole = \"tenant\"\ntenant = 1\nsha256 = \"{sha}\"\n"
            ),
            "api.token[1].sha256",
        ),
        (
            format!("[[api.token]]\nname = \"\"\nrole = \"operator\"\nsha256 = \"{sha}\"\n"),
            "api.token[0].name",
        ),
        ("[api]\nmax_page = 0\n".to_string(), "api.max_page"),
    ];
    for (text, key) in cases {
        let e = ApiConfig::from_toml(&text).unwrap_err();
        assert_eq!(e.key, key, "{text}: {e}");
    }
    // Unknown keys and roles are refused with serde's message naming them.
    let e = ApiConfig::from_toml("[[api.token]]\nname = \"a\"\nrole = \"root\"\nsha256 = \"x\"\n")
        .unwrap_err();
    assert!(e.message.contains("root"), "{e}");
    let e = ApiConfig::from_toml(&format!(
        "[[api.token]]\nname = \"a\"\nrole = \"operator\"\nsha256 = \"{sha}\"\nsecret = \"x\"\n"
    ))
    .unwrap_err();
    assert!(e.message.contains("secret"), "{e}");
}

#[test]
fn the_documented_config_block_is_valid() {
    let doc = include_str!("../../docs/api.md");
    let block = doc
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a toml block in docs/api.md");
    let cfg = ApiConfig::from_toml(block).unwrap();
    let defaults = ApiConfig {
        tokens: cfg.tokens.clone(),
        ..ApiConfig::default()
    };
    assert_eq!(cfg, defaults, "the documented defaults are the defaults");
    let tokens = Tokens::new(&cfg.tokens).unwrap();
    let a = format!("Bearer opha_{}", "a".repeat(64));
    let b = format!("Bearer opha_{}", "b".repeat(64));
    assert_eq!(tokens.authenticate(Some(&a)).unwrap().name, "noc");
    assert_eq!(
        tokens.authenticate(Some(&b)).unwrap().scope,
        opha_api::PrincipalScope::Tenant(TenantId(7))
    );
}
