//! Latency summaries: one serialisable shape for hdrhistogram percentiles,
//! shared by the sink (end-to-end latency), the injector (ack latency) and the
//! relay table.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency recorded, in microseconds (1 hour); larger values saturate.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;

/// Percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// A new latency histogram (1 µs .. 1 h, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds: this cannot fail.
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("constant histogram bounds are valid")
}

/// Records one value, saturating at the histogram's bound.
pub fn record(hist: &mut Histogram<u64>, micros: u64) {
    let _ = hist.record(micros.clamp(1, LATENCY_US_MAX));
}

/// Summarises a histogram.
pub fn percentiles(hist: &Histogram<u64>) -> Percentiles {
    if hist.is_empty() {
        return Percentiles::default();
    }
    Percentiles {
        count: hist.len(),
        p50_us: hist.value_at_quantile(0.50),
        p90_us: hist.value_at_quantile(0.90),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        max_us: hist.max(),
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |us: u64| us as f64 / 1000.0;
        write!(
            f,
            "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms (n={})",
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us),
            self.count
        )
    }
}
