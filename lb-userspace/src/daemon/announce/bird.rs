//! What the node's BIRD says about its protocols, read from its control socket (the protocol
//! `birdc` speaks): the daemon shows it in `lb status` and the metrics, so that an operator
//! sees a BGP session down or BIRD unreachable next to what the daemon announces.
//!
//! The conversation: BIRD greets with `0001 BIRD 2.0.12 ready.`; to `show protocols` it
//! answers lines `CODE-text` (more follow) or `CODE text` (the last), and continuation lines
//! that start with a space. Codes 8000 and up are errors. [`Watch`] asks every
//! [`POLL`] in a thread of its own, so a BIRD that hangs never delays the daemon.

use std::{
    io::{self, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    thread,
    time::{Duration, Instant, SystemTime},
};

use crate::control::{BirdView, RoutingProtocol};
use tracing::{info, warn};

/// How often the watch asks.
pub const POLL: Duration = Duration::from_secs(2);
/// How long one read, and one whole question, may take (a busy machine slows BIRD's answer
/// to a few hundred milliseconds; past these it is reported unreachable).
const TIMEOUT: Duration = Duration::from_secs(2);
const DEADLINE: Duration = Duration::from_secs(5);
/// The longest answer read (a node runs a handful of protocols), and the longest line.
const MAX_LINES: usize = 4096;
const MAX_LINE_BYTES: usize = 4096;

/// Asks BIRD at `socket` for its protocols.
pub fn show_protocols(socket: &Path) -> io::Result<Vec<RoutingProtocol>> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let deadline = Instant::now() + DEADLINE;
    let mut reader = BufReader::new(stream.try_clone()?);
    let greeting = read_reply(&mut reader, deadline)?;
    if !greeting.iter().any(|(code, _)| *code == 1) {
        return Err(invalid(format!(
            "not a BIRD control socket (it greeted {greeting:?})"
        )));
    }
    (&stream).write_all(b"show protocols\n")?;
    parse_protocols(&read_reply(&mut reader, deadline)?)
}

/// The lines of one reply, with their codes (a continuation line takes its predecessor's),
/// read by `deadline`.
fn read_reply(reader: &mut impl io::BufRead, deadline: Instant) -> io::Result<Vec<(u16, String)>> {
    let mut lines = Vec::new();
    let mut code = 0;
    while lines.len() < MAX_LINES {
        let line = read_line(reader, deadline)?;
        let text = line.as_str();
        if let Some(rest) = text.strip_prefix(' ') {
            lines.push((code, rest.to_owned()));
            continue;
        }
        let (number, rest) = text.split_at_checked(4).unwrap_or((text, ""));
        code = number
            .parse()
            .map_err(|_| invalid(format!("an answer line without a code: {text:?}")))?;
        let (separator, body) = rest.split_at_checked(1).unwrap_or(("", ""));
        lines.push((code, body.to_owned()));
        if separator != "-" {
            return Ok(lines);
        }
    }
    Err(invalid(format!("an answer longer than {MAX_LINES} lines")))
}

/// One line, without its end: at most [`MAX_LINE_BYTES`], by `deadline` (each read also
/// times out), control characters dropped (they are shown in `lb status`).
fn read_line(reader: &mut impl io::BufRead, deadline: Instant) -> io::Result<String> {
    let mut bytes = Vec::new();
    loop {
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("BIRD did not answer within {DEADLINE:?}"),
            ));
        }
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Err(invalid("BIRD closed the connection mid-answer".to_owned()));
        }
        let end = available.iter().position(|b| *b == b'\n');
        let take = end.map_or(available.len(), |i| i + 1);
        bytes.extend_from_slice(&available[..take]);
        reader.consume(take);
        if bytes.len() > MAX_LINE_BYTES {
            return Err(invalid(format!(
                "an answer line longer than {MAX_LINE_BYTES} bytes"
            )));
        }
        if end.is_some() {
            let text = String::from_utf8_lossy(&bytes);
            return Ok(text.chars().filter(|c| !c.is_control()).collect());
        }
    }
}

/// `show protocols`' table: code 1002 lines (the 2002 line is the header).
fn parse_protocols(reply: &[(u16, String)]) -> io::Result<Vec<RoutingProtocol>> {
    if let Some((code, text)) = reply.iter().find(|(code, _)| *code >= 8000) {
        return Err(invalid(format!("BIRD answered error {code}: {text}")));
    }
    Ok(reply
        .iter()
        .filter(|(code, _)| *code == 1002)
        .filter_map(|(_, text)| {
            let columns: Vec<&str> = text.split_whitespace().collect();
            let [name, kind, _table, state, ..] = columns[..] else {
                return None;
            };
            // Then "Since" (a time, or a date and a time) and the info.
            let since_words = if columns.get(5).is_some_and(|w| w.contains(':'))
                && columns.get(4).is_some_and(|w| w.contains('-'))
            {
                2
            } else {
                1
            };
            Some(RoutingProtocol {
                name: name.to_owned(),
                kind: kind.to_owned(),
                state: state.to_owned(),
                info: columns.get(4 + since_words..).unwrap_or(&[]).join(" "),
            })
        })
        .collect())
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Asks BIRD every [`POLL`] in a thread, keeping the last answer; logs sessions going up or
/// down and BIRD becoming unreachable or reachable again.
#[derive(Debug, Clone)]
pub struct Watch {
    last: Arc<Mutex<Option<BirdView>>>,
}

impl Watch {
    pub fn start(socket: PathBuf) -> io::Result<Self> {
        let last = Arc::new(Mutex::new(None));
        let shared = Arc::clone(&last);
        thread::Builder::new()
            .name("lb-bird".to_owned())
            .spawn(move || {
                let mut previous: Option<BirdView> = None;
                // Stops when the daemon does (the thread holds only the view).
                while Arc::strong_count(&shared) > 1 {
                    let view = ask(&socket);
                    log_changes(previous.as_ref(), &view);
                    *shared.lock().unwrap_or_else(PoisonError::into_inner) = Some(view.clone());
                    previous = Some(view);
                    thread::sleep(POLL);
                }
            })?;
        Ok(Self { last })
    }

    /// The last answer (none before the first).
    pub fn view(&self) -> Option<BirdView> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn ask(socket: &Path) -> BirdView {
    let checked_at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (error, protocols) = match show_protocols(socket) {
        Ok(protocols) => (None, protocols),
        Err(error) => (Some(error.to_string()), Vec::new()),
    };
    BirdView {
        socket: socket.display().to_string(),
        checked_at,
        error,
        protocols,
    }
}

fn log_changes(previous: Option<&BirdView>, now: &BirdView) {
    let was_reachable = previous.is_none_or(|p| p.error.is_none());
    match (&now.error, was_reachable) {
        (Some(error), true) => {
            warn!(socket = %now.socket, %error, "the routing daemon cannot be asked: its BGP sessions are unknown (the announcements stay in the kernel table)");
        }
        (None, false) => info!(socket = %now.socket, "the routing daemon answers again"),
        _ => {}
    }
    for session in now.sessions() {
        let before = previous.and_then(|p| p.sessions().find(|s| s.name == session.name));
        let was_up = before.is_some_and(RoutingProtocol::is_up);
        if session.is_up() && !was_up {
            info!(protocol = %session.name, "BGP session established");
        } else if !session.is_up() && (was_up || before.is_none()) {
            warn!(protocol = %session.name, state = %session.state, info = %session.info, "BGP session not established: this node's announcements do not reach that peer");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soon() -> Instant {
        Instant::now() + DEADLINE
    }

    fn reply(text: &str) -> Vec<(u16, String)> {
        read_reply(&mut text.as_bytes(), soon()).unwrap()
    }

    #[test]
    fn the_protocols_table_is_read_with_dates_and_continuations() {
        let text = "2002-Name       Proto      Table      State  Since         Info\n\
                    1002-device1    Device     ---        up     23:05:39.123  \n \
                    lbkernel   Kernel     lbvips     up     23:05:39.123  \n \
                    tor        BGP        ---        up     2026-12-05 23:05:40  Established   \n \
                    spare      BGP        ---        start  23:05:39.123  Active        Socket: Connection refused\n\
                    0000 \n";
        let protocols = parse_protocols(&reply(text)).unwrap();
        let names: Vec<_> = protocols.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["device1", "lbkernel", "tor", "spare"]);
        assert!(protocols[2].is_bgp() && protocols[2].is_up());
        assert_eq!(protocols[2].info, "Established");
        assert!(!protocols[3].is_up());
        assert_eq!(protocols[3].info, "Active Socket: Connection refused");
    }

    #[test]
    fn errors_and_garbage_are_reported() {
        assert!(parse_protocols(&reply("9001 Parse error\n")).is_err());
        assert!(read_reply(&mut "HTTP/1.1 200 OK\n".as_bytes(), soon()).is_err());
        assert!(read_reply(&mut "1002-cut short\n".as_bytes(), soon()).is_err());
        // A line that never ends, and one past the limit: refused, not read on.
        let endless = vec![b'x'; MAX_LINE_BYTES * 4];
        assert!(read_reply(&mut endless.as_slice(), soon()).is_err());
        let long = format!("0001 {}\n", "y".repeat(MAX_LINE_BYTES));
        assert!(read_reply(&mut long.as_bytes(), soon()).is_err());
        // Past the deadline: nothing more is read.
        let late = Instant::now().checked_sub(Duration::from_secs(1)).unwrap();
        assert!(read_reply(&mut "0001 ready\n".as_bytes(), late).is_err());
        // Bytes that are not UTF-8, and control characters, do not reach the terminal.
        let odd = b"1002-name\x1b[2J\xff BGP --- up 00:00 Established\n0000 \n";
        let protocols = parse_protocols(&read_reply(&mut odd.as_slice(), soon()).unwrap()).unwrap();
        assert_eq!(protocols[0].name, "name[2J\u{fffd}");
        assert!(protocols[0].is_up());
    }
}
