//! `lb capture`: asks the daemon for a capture and writes what it streams to a pcapng file
//! (or stdout, `-w -`), until the count is reached, Ctrl-C, or the daemon ends it.

use std::{
    fs::OpenOptions,
    io::{BufRead as _, BufReader, Write},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, bail};
use base64::Engine as _;

use crate::{
    capture::{Message, Spec, Summary, pcapng},
    control::{Body, Request, Response, client},
};

/// How often the CLI looks for Ctrl-C while no packet arrives.
const POLL: Duration = Duration::from_millis(200);
/// How long the CLI waits for the daemon's summary once it has asked to stop.
const END_WAIT: Duration = Duration::from_secs(5);

/// Runs a capture through the daemon at `socket` into `file` (`-`: stdout); the summary.
pub fn run(socket: &Path, spec: Spec, file: &Path) -> anyhow::Result<Summary> {
    spec.check().map_err(anyhow::Error::msg)?;
    crate::interrupt::install().context("installing the Ctrl-C handler")?;
    let stream = client::connect(socket)?.ok_or_else(|| client::ClientError::NotRunning {
        socket: socket.display().to_string(),
    })?;
    let snaplen = spec.snaplen;
    let mut line = serde_json::to_string(&Request::Capture(spec))?;
    line.push('\n');
    (&stream)
        .write_all(line.as_bytes())
        .context("sending the capture request")?;
    stream.set_read_timeout(Some(POLL))?;
    let mut reader = BufReader::new(&stream);
    let mut buffer = Vec::new();
    let first = loop {
        if let Some(line) = read_line(&mut reader, &mut buffer)? {
            break line;
        }
        if crate::interrupt::is_interrupted() {
            bail!("interrupted before the capture started");
        }
    };
    let filter = match serde_json::from_slice(&first).context("the daemon's answer")? {
        Response::Ok(Body::Capture(started)) => started.filter,
        Response::Ok(other) => bail!("the daemon answered something else: {other:?}"),
        Response::Error(reason) => bail!("{reason}"),
    };
    let out: Box<dyn Write> = if file == Path::new("-") {
        Box::new(std::io::stdout().lock())
    } else {
        // Packets carry clients' addresses and data: the file is its owner's only, also one
        // that existed; and a symbolic link is not followed (a root capture into /tmp).
        let out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(file)
            .with_context(|| {
                format!("creating {} (not through a symbolic link)", file.display())
            })?;
        out.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .with_context(|| format!("making {} 0600", file.display()))?;
        Box::new(out)
    };
    let mut writer =
        pcapng::Writer::new(out, snaplen).with_context(|| format!("writing {}", file.display()))?;
    eprintln!(
        "lb capture: {filter}, to {} (Ctrl-C to stop)",
        file.display()
    );
    let mut stopping: Option<std::time::Instant> = None;
    loop {
        // Looked at on every pass, so that packets arriving without a pause do not hide it.
        if stopping.is_none() && crate::interrupt::is_interrupted() {
            // The daemon sees the end of the request side, turns the capture off and sends
            // its summary; what it sends meanwhile still goes to the file.
            stream.shutdown(std::net::Shutdown::Write)?;
            stopping = Some(std::time::Instant::now());
        }
        if stopping.is_some_and(|since| since.elapsed() > END_WAIT) {
            bail!("the daemon did not end the capture within {END_WAIT:?} of Ctrl-C");
        }
        let Some(line) = read_line(&mut reader, &mut buffer)? else {
            continue;
        };
        match serde_json::from_slice(&line).context("a capture record from the daemon")? {
            Message::Packet(packet) => {
                let data = base64::engine::general_purpose::STANDARD
                    .decode(&packet.data)
                    .context("a capture record's data")?;
                writer
                    .packet(&pcapng::Record {
                        ifindex: packet.ifindex,
                        interface: &packet.interface,
                        time_ns: packet.time_ns,
                        len: packet.len,
                        data: &data,
                        queue: packet.rx_queue,
                        xdp_action: packet.xdp_action,
                        comment: &packet.comment(),
                    })
                    .with_context(|| format!("writing {}", file.display()))?;
            }
            Message::End(summary) => return Ok(summary),
        }
    }
}

/// The next whole line (without its newline), or `None` if none came within the read
/// timeout; an error if the daemon closed the connection.
fn read_line(
    reader: &mut BufReader<&std::os::unix::net::UnixStream>,
    buffer: &mut Vec<u8>,
) -> anyhow::Result<Option<Vec<u8>>> {
    match reader.read_until(b'\n', buffer) {
        Ok(0) => bail!("the daemon closed the capture (is it stopping?)"),
        Ok(_) if buffer.ends_with(b"\n") => {
            let mut line = std::mem::take(buffer);
            line.pop();
            Ok(Some(line))
        }
        Ok(_) => bail!("the daemon closed the capture in the middle of a record"),
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted
            ) =>
        {
            Ok(None)
        }
        Err(error) => Err(error).context("reading from the daemon"),
    }
}

/// The summary in words.
pub fn describe(summary: &Summary, file: &Path) -> String {
    let mut text = format!(
        "{} packets written to {} ({}); the datapath matched {}, recorded {}, skipped {} over \
         the rate and lost {} to a full ring",
        summary.sent,
        file.display(),
        summary.ended,
        summary.matched,
        summary.recorded,
        summary.over_rate,
        summary.ring_full
    );
    if summary.copy_failed > 0 {
        text.push_str(&format!(" and {} it could not copy", summary.copy_failed));
    }
    text
}
