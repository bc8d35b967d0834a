//! Limiter benchmarks (issue targets: median decision <= 150 ns with 1M
//! tracked keys; <= 128 bytes per tracked key; a flood of 1M new keys stays
//! under the cap). Memory is measured with a counting allocator: the bytes
//! the store really holds, table slack included, divided by its keys.

#![allow(unsafe_code, reason = "a counting global allocator needs unsafe impl GlobalAlloc")]

use criterion::{Criterion, criterion_group, criterion_main};
use gateway::rate_limit::{Gcra, Key, KeyedStore};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: delegates to the system allocator, only counting sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const MILLION: u64 = 1_000_000;

fn key(i: u64) -> Key {
    // Spread like real IPv4 keys (IPv4-mapped space, varied low bits).
    Key(0, 0xffff_0000_0000 | (i.wrapping_mul(2_654_435_761) & 0xffff_ffff))
}

fn filled(n: u64, cap: usize) -> KeyedStore {
    let store = KeyedStore::new(cap, false);
    let g = Gcra::new(20.0, 20);
    for i in 0..n {
        store.decide(&g, key(i), 0);
    }
    store
}

fn report_memory_and_flood() {
    let before = LIVE.load(Ordering::Relaxed);
    let store = filled(MILLION, 1_100_000);
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    let keys = store.len();
    println!(
        "memory: {keys} tracked keys hold {bytes} bytes = {:.1} bytes/key (target <= 128)",
        bytes as f64 / keys as f64
    );
    drop(store);

    let cap = 100_000;
    let store = KeyedStore::new(cap, false);
    let g = Gcra::new(20.0, 20);
    let started = Instant::now();
    for i in 0..MILLION {
        store.decide(&g, key(i), i * 1_000);
    }
    println!(
        "flood: 1000000 distinct keys into a {cap}-key store -> {} tracked (cap held: {}), {:.0} ns per new key",
        store.len(),
        store.len() <= cap + 64,
        started.elapsed().as_nanos() as f64 / MILLION as f64
    );
}

fn decisions(c: &mut Criterion) {
    report_memory_and_flood();
    let g = Gcra::new(1e9, 1_000_000);
    let store = filled(MILLION, 1_100_000);
    let hot = key(4242);
    let mut now = 0u64;
    c.bench_function("decision, hot key, 1M tracked keys", |b| {
        b.iter(|| {
            now += 1;
            black_box(store.decide(&g, black_box(hot), now))
        })
    });
    let fresh = KeyedStore::new(50_000_000, false);
    let mut next = 10 * MILLION;
    c.bench_function("decision, new key", |b| {
        b.iter(|| {
            next += 1;
            black_box(fresh.decide(&g, key(next), 0))
        })
    });
}

criterion_group!(benches, decisions);
criterion_main!(benches);
