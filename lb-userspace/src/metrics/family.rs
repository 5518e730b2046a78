//! [`SortedFamily`]: a metric family with fixed values, for expositions built from a snapshot.
//!
//! `prometheus_client`'s own `Family` holds live metrics (atomics) in a hash map, so its samples
//! come out in no particular order. A snapshot needs neither: [`SortedFamily`] keeps constant
//! counters or gauges in label order, one per label set, and encodes them through the same
//! `EncodeMetric` interface, so a `Registry` takes it like any other metric.

use std::collections::BTreeMap;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};

/// A metric family with fixed values, encoded in label order.
#[derive(Debug)]
pub(super) struct SortedFamily<S, M> {
    samples: Vec<(S, M)>,
}

impl<S: Ord> SortedFamily<S, ConstCounter<u64>> {
    /// Counters, one per label set; values given for the same label set are summed.
    pub(super) fn counters(samples: impl IntoIterator<Item = (S, u64)>) -> Self {
        let mut sums: BTreeMap<S, u64> = BTreeMap::new();
        for (labels, value) in samples {
            let sum = sums.entry(labels).or_default();
            *sum = sum.saturating_add(value);
        }
        let samples = sums
            .into_iter()
            .map(|(labels, sum)| (labels, ConstCounter::new(sum)))
            .collect();
        Self { samples }
    }
}

impl<S: Ord> SortedFamily<S, ConstGauge<i64>> {
    /// Gauges, one per label set.
    pub(super) fn gauges(samples: BTreeMap<S, i64>) -> Self {
        let samples = samples
            .into_iter()
            .map(|(labels, value)| (labels, ConstGauge::new(value)))
            .collect();
        Self { samples }
    }
}

impl<S, M> EncodeMetric for SortedFamily<S, M>
where
    S: EncodeLabelSet,
    M: EncodeMetric + TypedMetric,
{
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, metric) in &self.samples {
            metric.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}
