//! `docs/http-api.md` describes what the gateway serves: every route with each of its methods, and every error
//! code the gateway or the adapter can answer, so the document cannot fall behind the code unnoticed.

use keymeter::Dependency;
use keymeter::keys::VerdictCode;

fn read(path: &str) -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    std::fs::read_to_string(format!("{root}/{path}")).unwrap()
}

/// `(METHOD, path)` of each `.route(…)` in the gateway's router.
fn routes() -> Vec<(String, String)> {
    let source = read("gateway/src/lib.rs");
    let start = source.find("pub fn router(").expect("the router function");
    let end = start
        + source[start..]
            .find(".fallback(")
            .expect("the router's fallback");
    let mut routes = Vec::new();
    for call in source[start..end].split(".route(").skip(1) {
        let path = call.split('"').nth(1).expect("a route path");
        for method in ["get", "post", "patch", "delete", "put"] {
            if call.contains(&format!("{method}(")) {
                routes.push((method.to_uppercase(), path.to_owned()));
            }
        }
    }
    routes
}

/// The `.rs` files under `dir` (relative to the workspace), at every depth.
fn rust_files(dir: &str) -> Vec<String> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(format!("{root}/{dir}")).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let path = format!("{dir}/{name}");
            if name.ends_with(".rs") {
                out.push(path);
            } else if !name.contains('.') {
                dirs.push(path);
            }
        }
    }
    out
}

/// Every quoted UPPER_SNAKE string in `files` that is not an environment variable's name.
/// The method labels of `/metrics` (documented with it).
const HTTP_METHODS: [&str; 5] = ["POST", "PATCH", "DELETE", "HEAD", "OPTIONS"];

fn codes_in(files: &[&str]) -> Vec<String> {
    let mut codes = Vec::new();
    for file in files {
        for (i, piece) in read(file).split('"').enumerate() {
            let code = i % 2 == 1
                && piece.len() > 3
                && piece.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                && !piece.starts_with("KEYMETER_")
                && piece != "RUST_LOG"
                // HTTP methods as metrics labels, not error codes.
                && !HTTP_METHODS.contains(&piece);
            if code {
                codes.push(piece.to_owned());
            }
        }
    }
    codes
}

#[test]
fn every_route_is_documented() {
    let doc = read("docs/http-api.md");
    let routes = routes();
    assert!(routes.len() >= 15, "{routes:?}");
    for (method, path) in routes {
        let row = format!("`{method} {path}");
        let found = doc
            .match_indices(&row)
            .any(|(at, _)| matches!(doc[at + row.len()..].chars().next(), Some('`' | '?')));
        assert!(found, "docs/http-api.md lacks {method} {path}");
    }
}

#[test]
fn every_error_code_is_documented() {
    let doc = read("docs/http-api.md");
    let errors = &doc[doc.find("## Errors").expect("an Errors section")..];
    let mut files = rust_files("gateway/src");
    files.push("adapters/axum/src/error.rs".into());
    assert!(files.len() >= 10, "{files:?}");
    let mut codes = codes_in(&files.iter().map(String::as_str).collect::<Vec<_>>());
    codes.extend(
        VerdictCode::ALL
            .iter()
            .filter(|c| **c != VerdictCode::Valid)
            .map(|c| c.as_str().to_owned()),
    );
    codes.extend(Dependency::ALL.iter().map(|d| d.code().to_owned()));
    codes.sort();
    codes.dedup();
    let missing: Vec<_> = codes
        .iter()
        .filter(|c| !errors.contains(&format!("`{c}`")))
        .collect();
    assert!(missing.is_empty(), "docs/http-api.md lacks {missing:?}");
}
