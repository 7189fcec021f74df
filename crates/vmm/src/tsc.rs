//! The host's TSC frequency.
//!
//! Under TCG a guest's TSC is the host's (QEMU reads the host counter), and the guest kernel is
//! told its frequency on the command line (`tsc_early_khz`: calibrating against the emulated
//! PIT hung half the boots here). Told a wrong frequency, the guest's clock runs at the wrong
//! rate: with a fixed 2 GHz on this 2.6 GHz host, `time.sleep(1)` in a function took 0.77 s.

use std::time::{Duration, Instant};

/// What the guest is told when the host's frequency cannot be measured.
pub const FALLBACK_KHZ: u32 = 2_000_000;

/// The host's TSC frequency in kHz, measured against the monotonic clock over 50 ms and
/// rounded to whole MHz, so that the guest command line (and with it every snapshot's key)
/// stays the same from one server start to the next.
pub fn host_tsc_khz() -> u32 {
    measure().unwrap_or(FALLBACK_KHZ)
}

#[cfg(target_arch = "x86_64")]
fn measure() -> Option<u32> {
    use std::arch::x86_64::_rdtsc;
    let t0 = Instant::now();
    // SAFETY: RDTSC reads a counter; it has no memory effects and every x86_64 CPU has it.
    let c0 = unsafe { _rdtsc() };
    std::thread::sleep(Duration::from_millis(50));
    // SAFETY: as above.
    let c1 = unsafe { _rdtsc() };
    let elapsed = t0.elapsed().as_secs_f64();
    let khz = c1.checked_sub(c0)? as f64 / elapsed / 1000.0;
    let mhz = (khz / 1000.0).round();
    // Anything outside 100 MHz..20 GHz is not a TSC (a migrated or broken counter).
    (100.0..20_000.0)
        .contains(&mhz)
        .then(|| (mhz as u32) * 1000)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure() -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_measured_frequency_is_plausible_and_stable() {
        let a = host_tsc_khz();
        let b = host_tsc_khz();
        assert!((100_000..20_000_000).contains(&a), "{a} kHz");
        assert_eq!(a % 1000, 0);
        // Two measurements agree within a MHz (rounding may straddle a boundary).
        assert!(a.abs_diff(b) <= 1000, "{a} vs {b}");
    }
}
