//! openraft keeps base2histogram histograms in every `Raft`; upstream builds the lookup
//! tables of all sixteen bucket widths the first time any histogram is made, about 26 MB
//! that every node kept for its whole life. The patched copy (`crates/vendor/base2histogram`,
//! see its README) builds only the width asked for. This test measures what making the first
//! histogram adds to the process's resident memory; it is a test binary of its own, so
//! nothing else runs in the process meanwhile.

/// Far above what the default width's tables take (about 0.1 MB), far below what all
/// sixteen widths' take (about 26 MB).
const MOST_BYTES_FOR_ONE_WIDTH: u64 = 8 << 20;

/// The process's resident memory, from `/proc/self/status`.
#[cfg(target_os = "linux")]
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("a VmRSS line in kB");
    kib * 1024
}

#[cfg(target_os = "linux")]
#[test]
fn the_first_histogram_builds_only_the_tables_of_its_width() {
    let before = resident_bytes();
    let histogram = base2histogram::Histogram::<()>::new();
    let grown = resident_bytes().saturating_sub(before);
    drop(histogram);
    assert!(
        grown < MOST_BYTES_FOR_ONE_WIDTH,
        "making the first histogram added {grown} bytes of resident memory; upstream base2histogram \
         builds every width's tables (about 26 MB), the patched copy only the default width's"
    );
}
