//! Per-request metrics with one shard per worker: counting a request
//! touches only the counting worker's own cache lines, as nginx workers
//! count in their own memory. prometheus-client's histogram takes a mutex
//! per observation and its counters and gauges are one atomic every thread
//! writes; here a scrape adds the shards up instead. Exposition is the same
//! as prometheus-client's own types (same metric types, names and buckets).

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Shards: one per worker up to `SHARDS - 1` workers (more share), the last
/// for threads that are not workers.
const SHARDS: usize = 16;

/// The calling thread's shard.
fn shard() -> usize {
    crate::worker_id::current().map_or(SHARDS - 1, |w| w % (SHARDS - 1))
}

/// A value on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Line<T>(T);

/// A monotonic counter.
#[derive(Debug, Clone, Default)]
pub struct ShardedCounter(Arc<[Line<AtomicU64>; SHARDS]>);

impl ShardedCounter {
    /// Adds one.
    pub fn inc(&self) {
        self.0[shard()].0.fetch_add(1, Ordering::Relaxed);
    }

    /// The total.
    pub fn get(&self) -> u64 {
        self.0.iter().map(|l| l.0.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A gauge moved up and down by the same requests (an in-flight count):
/// a shard may go negative when a request ends on another thread than it
/// started on; the sum is right.
#[derive(Debug, Clone, Default)]
pub struct ShardedGauge(Arc<[Line<AtomicI64>; SHARDS]>);

impl ShardedGauge {
    /// Adds one.
    pub fn inc(&self) {
        self.0[shard()].0.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one away.
    pub fn dec(&self) {
        self.0[shard()].0.fetch_sub(1, Ordering::Relaxed);
    }

    /// The total.
    pub fn get(&self) -> i64 {
        self.0.iter().map(|l| l.0.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for ShardedGauge {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for ShardedGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// One shard of a histogram: its count, sum (f64 bits) and buckets.
#[derive(Debug)]
#[repr(align(64))]
struct HistogramShard {
    count: AtomicU64,
    sum: AtomicU64,
    buckets: Box<[AtomicU64]>,
}

/// A histogram over fixed upper bounds (finite ones; +Inf is always added,
/// as prometheus-client does).
#[derive(Debug, Clone)]
pub struct ShardedHistogram {
    bounds: Arc<[f64]>,
    shards: Arc<[HistogramShard]>,
}

impl ShardedHistogram {
    /// A histogram with these upper bounds, in increasing order.
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Arc<[f64]> = bounds
            .into_iter()
            .filter(|b| b.is_finite())
            .chain(std::iter::once(f64::INFINITY))
            .collect();
        let shards = (0..SHARDS)
            .map(|_| HistogramShard {
                count: AtomicU64::new(0),
                sum: AtomicU64::new(0f64.to_bits()),
                buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            })
            .collect();
        Self { bounds, shards }
    }

    /// Records one value.
    pub fn observe(&self, value: f64) {
        let shard = &self.shards[shard()];
        let bucket = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len() - 1);
        shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        shard.count.fetch_add(1, Ordering::Relaxed);
        // One writer per shard in practice: the first exchange succeeds.
        let _ = shard.sum.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            Some((f64::from_bits(bits) + value).to_bits())
        });
    }

    /// Sum, count and per-bucket counts over every shard.
    pub fn get(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets: Vec<(f64, u64)> = self.bounds.iter().map(|b| (*b, 0)).collect();
        let (mut sum, mut count) = (0.0, 0);
        for shard in self.shards.iter() {
            sum += f64::from_bits(shard.sum.load(Ordering::Relaxed));
            count += shard.count.load(Ordering::Relaxed);
            for (total, n) in buckets.iter_mut().zip(shard.buckets.iter()) {
                total.1 += n.load(Ordering::Relaxed);
            }
        }
        (sum, count, buckets)
    }
}

impl TypedMetric for ShardedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ShardedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.get();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::registry::Registry;

    /// The text prometheus-client writes for `metric` registered as `name`.
    fn exposition(name: &str, metric: impl EncodeMetric + Send + Sync + std::fmt::Debug + 'static) -> String {
        let mut registry = Registry::default();
        registry.register(name, "help", metric);
        let mut text = String::new();
        encode(&mut text, &registry).expect("encode");
        text
    }

    #[test]
    fn shards_from_many_threads_add_up_and_expose_like_the_library_types() {
        let (counter, gauge) = (ShardedCounter::default(), ShardedGauge::default());
        let bounds = [0.001, 0.01, 0.1];
        let (ours, theirs) = (ShardedHistogram::new(bounds), Histogram::new(bounds));
        // Powers of two: sums are exact in any order.
        let values = [0.000_976_562_5, 0.003_906_25, 0.0625, 0.5, 0.007_812_5];
        std::thread::scope(|scope| {
            for worker in 0..4 {
                let (counter, gauge, ours) = (&counter, &gauge, &ours);
                scope.spawn(move || {
                    crate::worker_id::set_current_for_tests(Some(worker));
                    for v in values {
                        counter.inc();
                        gauge.inc();
                        ours.observe(v);
                    }
                    gauge.dec();
                });
            }
        });
        for _ in 0..4 {
            for v in values {
                theirs.observe(v);
            }
        }
        assert_eq!(counter.get(), 20);
        assert_eq!(gauge.get(), 16);
        assert_eq!(exposition("latency", ours), exposition("latency", theirs));
        let library_counter = prometheus_client::metrics::counter::Counter::<u64>::default();
        library_counter.inc_by(20);
        assert_eq!(exposition("requests", counter), exposition("requests", library_counter));
    }
}
