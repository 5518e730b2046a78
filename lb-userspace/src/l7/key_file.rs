//! The format of lb's own key files (the cookie keys, the session-ticket keys): one key a line,
//! 64 hex digits (32 bytes), blank lines and lines starting with '#' skipped, surrounding
//! whitespace trimmed; 1 to [`MAX_KEYS`] keys, none twice, the first the one that seals, all of
//! which open.
//!
//! [`read_keys`] reads such a file with the rules of [`files::read_own_keys`] (private to its
//! owner, never through a symbolic link) and parses it; [`generate_line`] makes a new line for
//! `lb sticky-key` and `lb ticket-key`. Errors name the file and the line number, never a
//! line's content: a key never reaches an error message or a log.

use std::path::Path;

use ring::rand::{SecureRandom as _, SystemRandom};

use super::files::{self, FileError};

/// The length of a key, in bytes.
pub const KEY_LEN: usize = 32;
/// The most keys a key file may hold.
pub const MAX_KEYS: usize = 16;

/// The keys of the key file at `path`, in the file's order: at least one, at most
/// [`MAX_KEYS`], no key twice. `command` is the command that prints a key line
/// (`lb sticky-key`), named in the errors.
pub fn read_keys(path: &Path, command: &str) -> Result<Vec<[u8; KEY_LEN]>, FileError> {
    let content = files::read_own_keys(path)?;
    // Each key with its line number.
    let mut keys = Vec::new();
    for (index, line) in content.split(|b| *b == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() || line.starts_with(b"#") {
            continue;
        }
        let Some(key) = parse_key(line) else {
            return Err(FileError::new(
                path,
                format!(
                    "line {}: not a key: a key is 64 hex digits on a line of its own \
                     (`{command}` prints one)",
                    index + 1
                ),
            ));
        };
        keys.push((key, index + 1));
    }
    if keys.is_empty() {
        return Err(FileError::new(
            path,
            format!("no key: a key file needs at least one (`{command}` prints one)"),
        ));
    }
    if keys.len() > MAX_KEYS {
        return Err(FileError::new(
            path,
            format!(
                "{} keys: a key file holds at most {MAX_KEYS}; remove the retired ones",
                keys.len()
            ),
        ));
    }
    for (at, (key, line)) in keys.iter().enumerate() {
        if let Some((_, first)) = keys[..at].iter().find(|(other, _)| other == key) {
            return Err(FileError::new(
                path,
                format!("line {line}: the same key as line {first}: remove one"),
            ));
        }
    }
    Ok(keys.into_iter().map(|(key, _)| key).collect())
}

/// A new random key as a key-file line (64 lowercase hex digits); `None` if the system's random
/// number generator failed.
pub fn generate_line() -> Option<String> {
    let mut key = [0; KEY_LEN];
    SystemRandom::new().fill(&mut key).ok()?;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut line = String::with_capacity(2 * KEY_LEN);
    for byte in key {
        line.push(char::from(HEX[usize::from(byte >> 4)]));
        line.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    Some(line)
}

/// 64 hex digits (either case) as a key.
fn parse_key(text: &[u8]) -> Option<[u8; KEY_LEN]> {
    if text.len() != 2 * KEY_LEN {
        return None;
    }
    let mut key = [0; KEY_LEN];
    for (byte, pair) in key.iter_mut().zip(text.chunks_exact(2)) {
        let &[high, low] = pair else {
            return None;
        };
        *byte = (hex_digit(high)? << 4) | hex_digit(low)?;
    }
    Some(key)
}

fn hex_digit(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt as _, path::PathBuf};

    use super::*;

    /// A directory of its own under the system's temporary one, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("lb-key-file-{}-{test}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, name: &str, content: &str, mode: u32) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, content).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            if let Err(error) = std::fs::remove_dir_all(&self.0) {
                eprintln!("cannot remove {}: {error}", self.0.display());
            }
        }
    }

    #[test]
    fn keys_are_read_in_order_past_comments_and_blank_lines() {
        let dir = TempDir::new("good");
        let path = dir.write(
            "keys",
            &format!(
                "# keys\n\n   {}  \r\n# retired next week:\n{}\n",
                "a1".repeat(32),
                "B2".repeat(32)
            ),
            0o600,
        );
        let keys = read_keys(&path, "lb ticket-key").unwrap();
        assert_eq!(keys, [[0xa1; KEY_LEN], [0xb2; KEY_LEN]]);
    }

    #[test]
    fn a_bad_line_is_named_with_the_command_but_not_shown() {
        let dir = TempDir::new("bad");
        let secret = format!("{}SECRETzz", "a".repeat(56));
        let path = dir.write("keys", &format!("{}\n\n{secret}\n", "a".repeat(64)), 0o600);
        let error = read_keys(&path, "lb ticket-key").unwrap_err().to_string();
        assert!(
            error.contains("keys: line 3: not a key") && error.contains("`lb ticket-key`"),
            "{error}"
        );
        assert!(
            !error.contains("SECRET") && !error.contains("aaaa"),
            "{error}"
        );
        for short in [
            "a".repeat(62),
            "a".repeat(66),
            format!("{} x", "a".repeat(62)),
        ] {
            let path = dir.write("short", &short, 0o600);
            let error = read_keys(&path, "lb ticket-key").unwrap_err().to_string();
            assert!(error.contains("line 1: not a key"), "{error}");
        }
    }

    #[test]
    fn a_key_twice_is_refused_naming_both_lines() {
        let dir = TempDir::new("twice");
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let path = dir.write(
            "keys",
            &format!(
                "{a}
{b}
# again:
{}
",
                a.to_uppercase()
            ),
            0o600,
        );
        let error = read_keys(&path, "lb ticket-key").unwrap_err().to_string();
        assert!(
            error.contains("keys: line 4: the same key as line 1"),
            "{error}"
        );
        assert!(
            !error.contains("aaaa") && !error.contains("AAAA"),
            "{error}"
        );
    }

    #[test]
    fn an_empty_or_overfull_file_is_refused() {
        let dir = TempDir::new("count");
        let empty = dir.write("empty", "# nothing yet\n\n", 0o600);
        let error = read_keys(&empty, "lb ticket-key").unwrap_err().to_string();
        assert!(error.contains("empty: no key"), "{error}");
        let lines: Vec<String> = (0..=MAX_KEYS).map(|i| format!("{i:064x}\n")).collect();
        let full = dir.write("full", &lines[..MAX_KEYS].concat(), 0o600);
        assert_eq!(read_keys(&full, "lb ticket-key").unwrap().len(), MAX_KEYS);
        let over = dir.write("over", &lines.concat(), 0o600);
        let error = read_keys(&over, "lb ticket-key").unwrap_err().to_string();
        assert!(
            error.contains("17 keys") && error.contains("at most 16"),
            "{error}"
        );
    }

    #[test]
    fn a_file_others_may_read_or_a_link_is_refused() {
        let dir = TempDir::new("rules");
        let path = dir.write("keys", &"a".repeat(64), 0o640);
        let error = read_keys(&path, "lb ticket-key").unwrap_err().to_string();
        assert!(
            error.contains("0640") && error.contains("chmod 600"),
            "{error}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.0.join("keys.link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let error = read_keys(&link, "lb ticket-key").unwrap_err().to_string();
        assert!(error.contains("symbolic link"), "{error}");
    }

    #[test]
    fn generated_lines_parse_and_differ() {
        let first = generate_line().unwrap();
        let second = generate_line().unwrap();
        assert_ne!(first, second);
        assert_eq!(first.len(), 2 * KEY_LEN);
        assert!(parse_key(first.as_bytes()).is_some());
    }
}
