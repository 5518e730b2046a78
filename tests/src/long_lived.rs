//! Long-lived TLS connections that exchange a line every period, and what each of them lived
//! through.
//!
//! [`LongLived::start`] opens the connections from a passthrough lab's client namespace
//! ([`LongLived::start_from`]: from any client namespace, with any TLS client configuration),
//! one thread per connection, so that a connection that stalls or fails never delays another one's exchanges
//! (a blocking client would otherwise wait for its read timeout). It returns once every
//! connection has completed its first exchange. Each thread then exchanges a line every period
//! until [`LongLived::finish`] stops it or an exchange fails, and returns its [`History`]: the
//! backend that served it, how many exchanges succeeded, the longest time between two
//! successful exchanges, and the first failure with its time (a reply from another backend
//! than the first one's is a failure too).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use lb::lab::{NetNs, passthrough::PassthroughLab};
use rustls::ClientConfig;

use crate::clients::{Served, lab_client_config, open};

/// What one long-lived connection saw.
#[derive(Clone, Debug)]
pub struct History {
    pub served: Served,
    /// Successful exchanges, the first one included.
    pub exchanges: usize,
    /// The longest time between two successful exchanges, or between the last one and the end
    /// (the stop, or the failure).
    pub max_gap: Duration,
    /// When the first exchange failed, and why; the connection was given up then.
    pub failure: Option<(Instant, String)>,
}

/// Connections exchanging lines in the background.
#[derive(Debug)]
pub struct LongLived {
    /// The connections' own addresses (their flows' sources), in the order opened.
    locals: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<History>>,
}

impl LongLived {
    /// Opens `count` connections to `vip` from the lab's client that each exchange a line every
    /// `period`.
    pub fn start(lab: &PassthroughLab, vip: SocketAddr, count: usize, period: Duration) -> Self {
        Self::start_from(&lab.client, &lab_client_config(lab), vip, count, period)
    }

    /// Opens `count` connections to `vip` from namespace `client`, with TLS configuration
    /// `config`, that each exchange a line every `period`.
    pub fn start_from(
        client: &NetNs,
        config: &Arc<ClientConfig>,
        vip: SocketAddr,
        count: usize,
        period: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (opened_tx, opened_rx) = mpsc::channel();
        let threads: Vec<_> = (0..count)
            .map(|i| {
                let (config, stop, opened) =
                    (Arc::clone(config), Arc::clone(&stop), opened_tx.clone());
                client
                    .spawn(&format!("long-{i}"), move || {
                        let held = open(&config, vip, &format!("conn {i} line 0"));
                        let mut held = match held {
                            Ok(held) => held,
                            Err(error) => {
                                let message = format!("connection {i} to {vip}: {error}");
                                drop(opened.send(Err(message.clone())));
                                panic!("{message}");
                            }
                        };
                        drop(opened.send(Ok((i, held.served.local))));
                        let mut history = History {
                            served: held.served.clone(),
                            exchanges: 1,
                            max_gap: Duration::ZERO,
                            failure: None,
                        };
                        let mut last_ok = Instant::now();
                        let mut line = 1;
                        while !stop.load(Ordering::Relaxed) {
                            thread::sleep(period);
                            let sent = format!("conn {i} line {line}");
                            match held.conn.exchange(&sent) {
                                Ok(reply)
                                    if reply.ends_with(&sent)
                                        && reply.starts_with(&history.served.reply_backend) =>
                                {
                                    history.max_gap = history.max_gap.max(last_ok.elapsed());
                                    last_ok = Instant::now();
                                    history.exchanges += 1;
                                }
                                Ok(reply) => {
                                    history.failure =
                                        Some((Instant::now(), format!("wrong reply {reply:?}")));
                                    break;
                                }
                                Err(error) => {
                                    history.failure = Some((Instant::now(), error.to_string()));
                                    break;
                                }
                            }
                            line += 1;
                        }
                        history.max_gap = history.max_gap.max(last_ok.elapsed());
                        history
                    })
                    .expect("starting a connection thread")
            })
            .collect();
        drop(opened_tx);
        // Built first, so that a failure below stops the threads that did connect.
        let mut long_lived = Self {
            locals: vec![SocketAddr::from(([0, 0, 0, 0], 0)); count],
            stop,
            threads,
        };
        for _ in 0..count {
            match opened_rx.recv() {
                Ok(Ok((i, local))) => long_lived.locals[i] = local,
                Ok(Err(message)) => panic!("opening the long-lived connections: {message}"),
                Err(mpsc::RecvError) => panic!("a connection thread ended before connecting"),
            }
        }
        long_lived
    }

    /// The connections' own addresses (their flows' sources), in the order opened.
    pub fn locals(&self) -> &[SocketAddr] {
        &self.locals
    }

    /// Stops the exchanges and returns every connection's history, in the order opened.
    pub fn finish(mut self) -> Vec<History> {
        self.stop.store(true, Ordering::Relaxed);
        std::mem::take(&mut self.threads)
            .into_iter()
            .map(|t| t.join().expect("a connection thread panicked"))
            .collect()
    }
}

impl Drop for LongLived {
    /// Stops the threads on every path (a failed test included); they end within a period.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
