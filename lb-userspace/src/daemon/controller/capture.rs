//! The controller's part of a packet capture: the filter in place and the capture turned on,
//! the datapath's ids named, and the capture turned off with its accounting.

use lb_common::abi::CaptureFilter;
use tracing::{info, warn};

use super::Controller;
use crate::{
    capture::{Labels, NO_PACKET_PATH, Spec, Summary, control::CaptureMaps, kernel_filter},
    config::Mode,
    datapath::Datapath,
};

impl<D: Datapath> Controller<D> {
    /// Gives the controller the capture's maps (the daemon has a packet path).
    pub fn with_capture(mut self, maps: Option<CaptureMaps>) -> Self {
        self.capture = maps;
        self
    }

    /// Puts `spec`'s filter in place and turns the capture on; the names of the datapath's ids.
    pub fn start_capture(&mut self, spec: &Spec) -> Result<Labels, String> {
        spec.check()?;
        let vip_id = match &spec.listener {
            None => None,
            Some(name) => Some(self.passthrough_vip_id(name)?),
        };
        // One at a time is the session's ring to enforce; a capture still on here is one whose
        // end never reached the controller, and the new one replaces it.
        let Some(maps) = &mut self.capture else {
            return Err(NO_PACKET_PATH.to_owned());
        };
        let filter: CaptureFilter = kernel_filter(spec, vip_id);
        maps.prepare(&filter).map_err(|e| e.to_string())?;
        self.reconciler
            .set_capture(true)
            .map_err(|e| e.to_string())?;
        info!(filter = %crate::capture::describe(spec), "packet capture on");
        Ok(self.capture_labels())
    }

    /// The VIP id of the passthrough listener `name`, or why there is none.
    fn passthrough_vip_id(&self, name: &str) -> Result<u32, String> {
        if let Some(applied) = self.reconciler.listeners().get(name) {
            return Ok(applied.vip_id);
        }
        Err(match self.config.listeners.get(name) {
            Some(listener) if listener.mode != Mode::Passthrough => format!(
                "listener {name:?} is an L7 listener: its packets go to the kernel, not through \
                 the XDP balancer (capture them with tcpdump; the access log has its requests)"
            ),
            _ => {
                let names: Vec<&str> = self
                    .reconciler
                    .listeners()
                    .keys()
                    .map(String::as_str)
                    .collect();
                format!(
                    "no passthrough listener {name:?} (passthrough listeners: {})",
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                )
            }
        })
    }

    /// Listener names by VIP id and backends (`listener/address`) by backend id, as applied.
    pub fn capture_labels(&self) -> Labels {
        let mut labels = Labels::default();
        for (name, applied) in self.reconciler.listeners() {
            labels.listeners.insert(applied.vip_id, name.clone());
            for (address, backend) in &applied.backends {
                labels
                    .backends
                    .insert(backend.id, format!("{name}/{address}"));
            }
        }
        labels
    }

    /// A handover pauses the controller: the capture goes off (a successor's datapath must
    /// not record for this daemon); whether it was on, for [`Controller::resume_capture`].
    pub fn pause_capture(&mut self) -> bool {
        let on = self.reconciler.capture();
        if on && let Err(error) = self.reconciler.set_capture(false) {
            warn!(%error, "turning the packet capture off for a handover failed");
        }
        on
    }

    /// The handover did not happen: a capture that was on goes on again.
    pub fn resume_capture(&mut self, was_on: bool) {
        if was_on && let Err(error) = self.reconciler.set_capture(true) {
            warn!(%error, "turning the packet capture back on failed; it records nothing now");
        }
    }

    /// Turns the capture off (if it is on) and returns the datapath's accounting of it.
    pub fn stop_capture(&mut self) -> Summary {
        if !self.reconciler.capture() {
            return Summary::default();
        }
        if let Err(error) = self.reconciler.set_capture(false) {
            // The configuration map could not be written: the bit stays set (each packet then
            // pays the filter's tests) until the next configuration write clears it.
            warn!(%error, "turning the packet capture off failed");
        }
        let summary = match &self.capture {
            Some(maps) => maps.summary().unwrap_or_else(|error| {
                warn!(%error, "reading the capture's accounting failed");
                Summary::default()
            }),
            None => Summary::default(),
        };
        info!(
            matched = summary.matched,
            recorded = summary.recorded,
            over_rate = summary.over_rate,
            ring_full = summary.ring_full,
            "packet capture off"
        );
        summary
    }
}
