//! The capture's maps that the controller owns: the filter and the per-CPU state. (The ring is
//! the session's; the configuration bit that turns the capture on is the reconciler's, which
//! writes the datapath configuration.)

use aya::maps::{Array, MapData, PerCpuArray};
use lb_common::{
    abi::{CaptureFilter, CaptureState},
    maps as names,
};

use super::Summary;
use crate::datapath::{DatapathError, maps::zeroed_per_cpu};

/// The filter and state maps of a loaded balancer.
pub struct CaptureMaps {
    filter: Array<MapData, CaptureFilter>,
    state: PerCpuArray<MapData, CaptureState>,
}

impl std::fmt::Debug for CaptureMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureMaps").finish_non_exhaustive()
    }
}

fn err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}

impl CaptureMaps {
    /// Takes the maps out of the balancer's object.
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, DatapathError> {
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(DatapathError::MissingMap(name));
        let filter = take(names::CAPTURE_FILTER)?;
        let state = take(names::CAPTURE_STATE)?;
        Ok(Self {
            filter: filter.try_into().map_err(err(names::CAPTURE_FILTER))?,
            state: state.try_into().map_err(err(names::CAPTURE_STATE))?,
        })
    }

    /// Writes the filter and zeroes every CPU's state (what an earlier capture noted or
    /// counted), before the capture is turned on.
    pub fn prepare(&mut self, filter: &CaptureFilter) -> Result<(), DatapathError> {
        self.filter
            .set(0, filter, 0)
            .map_err(err(names::CAPTURE_FILTER))?;
        let zeroed = zeroed_per_cpu(names::CAPTURE_STATE)?;
        self.state
            .set(0, zeroed, 0)
            .map_err(err(names::CAPTURE_STATE))
    }

    /// The datapath's accounting of the capture, summed over the CPUs (`sent` and `ended` are
    /// the session's to fill).
    pub fn summary(&self) -> Result<Summary, DatapathError> {
        let values = self.state.get(&0, 0).map_err(err(names::CAPTURE_STATE))?;
        Ok(values.iter().fold(Summary::default(), |sum, cpu| Summary {
            matched: sum.matched + cpu.matched,
            recorded: sum.recorded + cpu.recorded,
            over_rate: sum.over_rate + cpu.over_rate,
            ring_full: sum.ring_full + cpu.ring_full,
            copy_failed: sum.copy_failed + cpu.copy_failed,
            ..sum
        }))
    }
}
