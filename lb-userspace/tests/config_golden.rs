//! Golden files for the configuration: each `configs/bad/X.toml` must be rejected with exactly
//! the problems in `configs/bad/X.err`; each `configs/good/X.toml` must be accepted. Set
//! `LB_BLESS=1` to (re)write the `.err` files after a deliberate change, then review the diff.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::path::{Path, PathBuf};

use lb::config::Config;

fn files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/configs")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no golden files in {}", dir.display());
    files
}

fn parse(path: &Path) -> Result<Config, lb::config::ConfigError> {
    let text = std::fs::read_to_string(path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy();
    Config::parse(&text, &name)
}

#[test]
fn bad_configurations_are_rejected_with_the_field_and_the_reason() {
    for path in files("bad") {
        let error = parse(&path).expect_err(&format!("{} was accepted", path.display()));
        let got = format!("{error}\n");
        let golden = path.with_extension("err");
        if std::env::var_os("LB_BLESS").is_some() {
            std::fs::write(&golden, &got).unwrap();
        }
        let want = std::fs::read_to_string(&golden)
            .unwrap_or_else(|_| panic!("{} is missing (LB_BLESS=1 writes it)", golden.display()));
        assert_eq!(got, want, "{}", path.display());
    }
}

#[test]
fn good_configurations_are_accepted() {
    for path in files("good") {
        if let Err(error) = parse(&path) {
            panic!("{} was rejected:\n{error}", path.display());
        }
    }
}
