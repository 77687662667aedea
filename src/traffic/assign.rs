//! Sticky cohort assignment: a request key is hashed into [0, 1) with a
//! hash we own (FNV-1a + a splitmix finaliser), so the mapping is stable
//! across processes, machines and crate versions (std's and ahash's
//! hashers promise none of that).

use crate::cohort::Cohort;

/// Position of `key` in [0, 1) under `salt`.
pub fn assign_position(key: &[u8], salt: u64) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ salt;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    unit(mix(h))
}

/// splitmix64's finaliser: spreads FNV's weak low bits over the word.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The top 53 bits of `x` as a float in [0, 1).
pub fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// [0, e) experiment, [e, e + c) control, the rest untouched.
pub fn cohort_at(position: f64, experiment: f64, control: f64) -> Option<Cohort> {
    if position < experiment {
        Some(Cohort::Experiment)
    } else if position < experiment + control {
        Some(Cohort::Control)
    } else {
        None
    }
}

/// A fast per-thread random source for keyless requests and fault dice
/// (splitmix64; statistical quality is ample for coin flips).
pub fn random_u64() -> u64 {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEEDS: AtomicU64 = AtomicU64::new(0x2545_F491_4F6C_DD1D);
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            mix(SEEDS.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ nanos)
        });
    }
    STATE.with(|s| {
        let next = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(next);
        mix(next)
    })
}

/// A uniform float in [0, 1).
pub fn random_unit() -> f64 {
    unit(random_u64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_keys_keep_their_positions_forever() {
        // Pinned values (cross-checked with an independent Python version):
        // changing the hash would silently reshuffle every user's cohort
        // between versions.
        let at = |k: &[u8], salt| format!("{:.12}", assign_position(k, salt));
        assert_eq!(at(b"user-42", 0), "0.476891931359");
        assert_eq!(at(b"", 0), "0.957673425242");
        assert_eq!(at(b"user-42", 1), "0.444697711995");
    }

    proptest! {
        #[test]
        fn one_key_always_gets_one_cohort(key in ".{0,40}", salt in any::<u64>()) {
            let a = cohort_at(assign_position(key.as_bytes(), salt), 0.05, 0.05);
            let b = cohort_at(assign_position(key.as_bytes(), salt), 0.05, 0.05);
            prop_assert_eq!(a, b);
            let p = assign_position(key.as_bytes(), salt);
            prop_assert!((0.0..1.0).contains(&p));
        }
    }

    #[test]
    fn the_split_converges_to_the_configured_shares() {
        let n = 200_000;
        let mut counts = [0u32; 3];
        for i in 0..n {
            let key = format!("user-{i}");
            match cohort_at(assign_position(key.as_bytes(), 7), 0.1, 0.2) {
                Some(Cohort::Experiment) => counts[0] += 1,
                Some(Cohort::Control) => counts[1] += 1,
                None => counts[2] += 1,
            }
        }
        let share = |c: u32| f64::from(c) / f64::from(n);
        assert!((share(counts[0]) - 0.1).abs() < 0.005, "{counts:?}");
        assert!((share(counts[1]) - 0.2).abs() < 0.005, "{counts:?}");
    }
}
