//! Full-jitter exponential backoff, shared by shepherd's HTTP clients (GitLab, Alertmanager):
//! the delay before retry `n` (1-based) is uniform in `[0, min(max, base * 2^(n-1))]`.
//!
//! Hand-written rather than `backon`: backon's jitter adds on top of the delay and can exceed the
//! cap, while full jitter needs the delay drawn uniformly below it.

use std::time::Duration;

use rand::Rng;

pub fn full_jitter(base: Duration, max: Duration, retry: u32) -> Duration {
    let exp = 1u32
        .checked_shl(retry.saturating_sub(1))
        .unwrap_or(u32::MAX);
    let ceiling = base.saturating_mul(exp).min(max);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_below_the_growing_cap() {
        let (base, max) = (Duration::from_millis(100), Duration::from_millis(1000));
        for retry in 1..40 {
            let cap = base.saturating_mul(1 << (retry - 1).min(20)).min(max);
            assert!(full_jitter(base, max, retry) <= cap);
        }
    }
}
