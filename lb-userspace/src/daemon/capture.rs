//! The daemon's side of `lb capture`: one session at a time reads the capture ring and streams
//! labelled packets to the CLI's connection until the count is reached or the CLI goes away;
//! the capture is turned off on every way out (a guard asks the controller, which also turns
//! it off when the daemon stops or hands over).

use std::{
    collections::BTreeMap,
    os::fd::AsRawFd as _,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use base64::Engine as _;
use lb_common::counters::Counter;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, Interest, unix::AsyncFd},
    net::UnixStream,
    sync::{mpsc, oneshot},
};
use tracing::{info, warn};

use super::Event;
use crate::{
    capture::{
        Labels, Message, NO_PACKET_PATH, Packet, RingRecord, Spec, Started, Summary, action_name,
        describe,
    },
    control::{Body, Response},
};

/// The capture ring, free or taken by the running session.
pub type RingSlot = Arc<Mutex<Option<RingBuf<MapData>>>>;

/// What a capture session asks the controller.
#[derive(Debug)]
pub enum CaptureCall {
    /// Put the filter in place and turn the capture on; the ids' names, or why not.
    Start(Spec, oneshot::Sender<Result<Labels, String>>),
    /// The ids' names as they are now (a backend added meanwhile).
    Labels(oneshot::Sender<Labels>),
    /// Turn the capture off; the datapath's accounting.
    Stop(Option<oneshot::Sender<Summary>>),
}

/// How long a session waits for the CLI to take a batch of records.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often at most a session asks for names it does not know.
const RELABEL: Duration = Duration::from_secs(1);

/// Runs one capture on `stream` (the CLI's connection, its request read); `ring` is `None`
/// without a packet path.
pub async fn serve(
    spec: Spec,
    stream: UnixStream,
    events: mpsc::Sender<Event>,
    ring: Option<RingSlot>,
) {
    let (mut read, mut write) = stream.into_split();
    let Some(ring) = ring else {
        drop(send(&mut write, &Response::Error(NO_PACKET_PATH.to_owned())).await);
        return;
    };
    let taken = ring.lock().map(|mut slot| slot.take()).unwrap_or_default();
    let Some(mut taken) = taken else {
        let refusal = Response::Error("a capture is already running: one at a time".to_owned());
        drop(send(&mut write, &refusal).await);
        return;
    };
    // Records an earlier capture left behind (written while it was being turned off).
    while taken.next().is_some() {}
    let mut session = Session {
        ring: Some(taken),
        slot: ring,
        events: events.clone(),
        on: false,
        sent: 0,
    };
    let labels = match call(&events, |reply| CaptureCall::Start(spec.clone(), reply)).await {
        Some(Ok(labels)) => labels,
        Some(Err(reason)) => {
            drop(send(&mut write, &Response::Error(reason)).await);
            return;
        }
        None => {
            let refusal = Response::Error("the daemon is shutting down".to_owned());
            drop(send(&mut write, &refusal).await);
            return;
        }
    };
    session.on = true;
    let started = Response::Ok(Body::Capture(Started {
        filter: describe(&spec),
    }));
    if send(&mut write, &started).await.is_err() {
        session.stop().await;
        return;
    }
    let ended = session
        .stream(&spec, labels, &mut read, &mut write)
        .await
        .unwrap_or_else(|error| format!("the connection failed: {error}"));
    let mut summary = session.stop().await;
    summary.sent = session.sent;
    summary.ended = ended;
    info!(sent = summary.sent, ended = %summary.ended, "packet capture ended");
    drop(send(&mut write, &Message::End(summary)).await);
}

/// A running capture: the ring it holds, given back (and the capture turned off) when it ends.
struct Session {
    ring: Option<RingBuf<MapData>>,
    slot: RingSlot,
    events: mpsc::Sender<Event>,
    /// The controller turned the capture on.
    on: bool,
    /// Packets sent to the CLI.
    sent: u64,
}

impl Session {
    /// Streams packets until `spec.count` of them went out, the CLI closed its side or took
    /// nothing for [`WRITE_TIMEOUT`]; why it ended.
    async fn stream(
        &mut self,
        spec: &Spec,
        mut labels: Labels,
        read: &mut tokio::net::unix::OwnedReadHalf,
        write: &mut tokio::net::unix::OwnedWriteHalf,
    ) -> std::io::Result<String> {
        let ring = self
            .ring
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no ring"))?;
        // SAFETY: the ring keeps the descriptor open, and it outlives `readable` (a local).
        let readable =
            unsafe { AsyncFd::register_with_interest(Fd(ring.as_raw_fd()), Interest::READABLE) }
                .map_err(|error| std::io::Error::other(error.to_string()))?;
        let clock = Clock::now();
        let mut names = Interfaces::default();
        let mut relabelled = Instant::now();
        let limit = spec.count.unwrap_or(u64::MAX);
        let mut closed = [0u8; 64];
        let outcome = loop {
            tokio::select! {
                ready = readable.readable() => {
                    let mut ready = ready?;
                    let mut lines = String::new();
                    let mut unknown = false;
                    while self.sent < limit {
                        let Some(item) = ring.next() else {
                            break;
                        };
                        let Some(record) = RingRecord::parse(&item) else {
                            warn!(bytes = item.len(), "a capture record shorter than its head: skipped");
                            continue;
                        };
                        drop(item);
                        let packet = label(&record, &labels, &clock, &mut names, &mut unknown);
                        lines.push_str(&serde_json::to_string(&Message::Packet(packet))?);
                        lines.push('\n');
                        self.sent += 1;
                    }
                    ready.clear_ready();
                    // A CLI that takes nothing (stopped, or its reader stalled) does not hold
                    // the capture on.
                    match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(lines.as_bytes())).await {
                        Ok(written) => written?,
                        Err(_) => break format!("the CLI took nothing for {WRITE_TIMEOUT:?}"),
                    }
                    if self.sent >= limit {
                        break format!("{} packets, as asked", self.sent);
                    }
                    if unknown && relabelled.elapsed() >= RELABEL {
                        relabelled = Instant::now();
                        if let Some(fresh) = call(&self.events, CaptureCall::Labels).await {
                            labels = fresh;
                        }
                    }
                }
                gone = read.read(&mut closed) => {
                    match gone {
                        Ok(0) | Err(_) => break "the CLI closed the capture".to_owned(),
                        // The CLI sends nothing after its request.
                        Ok(_) => {}
                    }
                }
            }
        };
        Ok(outcome)
    }

    /// Turns the capture off; the datapath's accounting.
    async fn stop(&mut self) -> Summary {
        if !std::mem::take(&mut self.on) {
            return Summary::default();
        }
        call(&self.events, |reply| CaptureCall::Stop(Some(reply)))
            .await
            .unwrap_or_default()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.on {
            // Ended without `stop` (the daemon stopping aborted the task): the controller turns
            // the capture off when it stops too; a capture left on by a full channel is
            // replaced by the next one's start.
            // (A closed channel is a controller that has stopped, and turned it off itself.)
            if let Err(mpsc::error::TrySendError::Full(_)) = self
                .events
                .try_send(Event::Capture(CaptureCall::Stop(None)))
            {
                warn!(
                    "could not ask the controller to turn the packet capture off (its queue is full)"
                );
            }
        }
        if let Ok(mut slot) = self.slot.lock() {
            *slot = self.ring.take();
        }
    }
}

/// The ring's descriptor, to wait on (the ring keeps it open).
struct Fd(std::os::fd::RawFd);

impl std::os::fd::AsRawFd for Fd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

/// Asks the controller; `None` if it has stopped.
async fn call<T>(
    events: &mpsc::Sender<Event>,
    make: impl FnOnce(oneshot::Sender<T>) -> CaptureCall,
) -> Option<T> {
    let (reply, answer) = oneshot::channel();
    events.send(Event::Capture(make(reply))).await.ok()?;
    answer.await.ok()
}

/// Writes one JSON line, within [`WRITE_TIMEOUT`] (a CLI that reads nothing does not keep the
/// session, and its ring, forever).
async fn send<T: serde::Serialize>(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    message: &T,
) -> std::io::Result<()> {
    let mut line = serde_json::to_string(message)?;
    line.push('\n');
    tokio::time::timeout(WRITE_TIMEOUT, write.write_all(line.as_bytes()))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// A record as the CLI gets it: wall-clock time, the interface's name, the outcome in words.
fn label(
    record: &RingRecord,
    labels: &Labels,
    clock: &Clock,
    names: &mut Interfaces,
    unknown: &mut bool,
) -> Packet {
    let meta = &record.meta;
    let (vip, backend) = record.ids();
    let mut name = |id: Option<u32>, of: &BTreeMap<u32, String>| {
        id.map(|id| {
            of.get(&id).cloned().unwrap_or_else(|| {
                *unknown = true;
                format!("#{id}")
            })
        })
    };
    let listener = name(vip, &labels.listeners);
    let backend = name(backend, &labels.backends);
    let reason = Counter::ALL
        .get(meta.counter as usize)
        .map_or("unknown", |counter| counter.label());
    Packet {
        time_ns: clock.wall(meta.time_ns),
        ifindex: meta.ifindex,
        interface: names.name(meta.ifindex),
        rx_queue: meta.rx_queue,
        len: meta.len,
        action: action_name(meta.action).to_owned(),
        xdp_action: meta.action,
        reason: reason.to_owned(),
        listener,
        backend,
        data: base64::engine::general_purpose::STANDARD.encode(&record.data),
    }
}

/// Turns the datapath's `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) into wall-clock time.
struct Clock {
    /// Wall clock minus monotonic clock, in nanoseconds, when the capture started.
    offset_ns: i128,
}

impl Clock {
    fn now() -> Self {
        let read = |clock: libc::clockid_t| -> i128 {
            let mut time = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `time` is a valid, writable timespec.
            unsafe { libc::clock_gettime(clock, &mut time) };
            i128::from(time.tv_sec) * 1_000_000_000 + i128::from(time.tv_nsec)
        };
        Self {
            offset_ns: read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC),
        }
    }

    fn wall(&self, monotonic_ns: u64) -> u64 {
        u64::try_from(i128::from(monotonic_ns) + self.offset_ns).unwrap_or(0)
    }
}

/// Interface names by ifindex, looked up once each.
#[derive(Default)]
struct Interfaces(BTreeMap<u32, String>);

impl Interfaces {
    fn name(&mut self, ifindex: u32) -> String {
        self.0
            .entry(ifindex)
            .or_insert_with(|| {
                let mut buffer = [0 as libc::c_char; libc::IF_NAMESIZE];
                // SAFETY: `buffer` holds IF_NAMESIZE bytes, as the call requires.
                let found = unsafe { libc::if_indextoname(ifindex, buffer.as_mut_ptr()) };
                if found.is_null() {
                    return String::new();
                }
                // SAFETY: on success the buffer holds a NUL-terminated name.
                unsafe { std::ffi::CStr::from_ptr(buffer.as_ptr()) }
                    .to_string_lossy()
                    .into_owned()
            })
            .clone()
    }
}
