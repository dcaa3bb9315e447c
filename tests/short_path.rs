//! README's short path is `examples/short_path.rs` word for word, and it runs on the first try in an empty
//! directory with nothing configured (development: its secrets are written beside the new database).

use std::path::PathBuf;
use std::process::Command;

fn readme_block() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("## As a library: the short path").unwrap()..];
    let start = section.find("```rust,no_run\n").unwrap() + "```rust,no_run\n".len();
    let end = start + section[start..].find("```\n").unwrap();
    section[start..end].to_owned()
}

#[test]
fn readme_shows_the_example_as_it_is() {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/short_path.rs"
    ))
    .unwrap();
    let body = &example[example.find("use keymeter::").unwrap()..];
    assert_eq!(
        readme_block(),
        body,
        "README's short path and examples/short_path.rs differ"
    );
}

/// The example binary cargo built beside this test (`target/<profile>/examples`), if it did.
fn example() -> Option<PathBuf> {
    let deps = std::env::current_exe().ok()?.parent()?.to_owned();
    let path = deps.parent()?.join("examples").join("short_path");
    path.exists().then_some(path)
}

#[test]
fn the_short_path_runs_in_an_empty_directory() {
    let Some(binary) = example() else {
        eprintln!("skipping: the short_path example was not built (it needs the sqlite feature)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(&binary);
    command.current_dir(dir.path());
    for (name, _) in std::env::vars() {
        if name.starts_with("KEYMETER_") || name == "DEBUG" || name == "DEPLOY_ENV" {
            command.env_remove(name);
        }
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("this request: 0.0087 USD"), "{stdout}");
    assert!(stdout.contains("by day: 0.0087"), "{stdout}");
    // The host installed no tracing subscriber: development mode is said on standard error all the same.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("keymeter: warning: development mode (nothing set"),
        "{stderr}"
    );
    // Twice: a second run on the same directory works too (its secrets are read back, not rewritten).
    let again = command.output().unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}
