//! Which of the matching pods a fault hits: Chaos Mesh's modes (`one`,
//! `all`, `fixed`, `fixed-percent`, `random-max-percent`), drawn with a
//! seeded generator (same seed, same pods), and never more than the
//! blast radius (`[safety] max_targets`, `max_target_fraction`).

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A selection mode and its value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// One pod at random.
    One,
    /// Every matching pod.
    All,
    /// This many pods at random (fewer if fewer match).
    Fixed(u32),
    /// This fraction of the pods (0, 1], rounded down, at least one.
    FixedPercent(f64),
    /// A random count between one and this fraction of the pods.
    RandomMaxPercent(f64),
}

/// Mode names, for messages.
pub const MODES: &[&str] =
    &["one", "all", "fixed", "fixed-percent", "random-max-percent"];

impl Mode {
    /// The mode as written in the file, with its value.
    pub fn describe(&self) -> String {
        match self {
            Mode::One => "one".into(),
            Mode::All => "all".into(),
            Mode::Fixed(n) => format!("fixed {n}"),
            Mode::FixedPercent(p) => format!("fixed-percent {}%", p * 100.0),
            Mode::RandomMaxPercent(p) => format!("random-max-percent {}%", p * 100.0),
        }
    }
}

/// The blast radius for one fault.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Radius {
    pub max_targets: u32,
    /// (0, 1].
    pub max_fraction: f64,
}

/// Picks indices into `n` candidates (sorted by the caller, e.g. by
/// name, so the draw depends on the seed only). Returns the chosen
/// indices in ascending order, and whether the blast radius cut the
/// count down.
pub fn choose(n: usize, mode: Mode, radius: Radius, seed: u64) -> (Vec<usize>, bool) {
    if n == 0 {
        return (Vec::new(), false);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let frac = |p: f64| ((n as f64 * p).floor() as usize).max(1);
    let wanted = match mode {
        Mode::One => 1,
        Mode::All => n,
        Mode::Fixed(k) => (k as usize).min(n),
        Mode::FixedPercent(p) => frac(p),
        Mode::RandomMaxPercent(p) => rng.gen_range(1..=frac(p)),
    };
    let cap_by_fraction = frac(radius.max_fraction);
    let cap = (radius.max_targets as usize).min(cap_by_fraction).max(1);
    let count = wanted.min(cap);
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rng);
    let mut chosen: Vec<usize> = idx.into_iter().take(count).collect();
    chosen.sort_unstable();
    (chosen, count < wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIDE: Radius = Radius { max_targets: 1000, max_fraction: 1.0 };

    #[test]
    fn modes_pick_the_documented_counts() {
        assert_eq!(choose(10, Mode::One, WIDE, 1).0.len(), 1);
        assert_eq!(choose(10, Mode::All, WIDE, 1).0.len(), 10);
        assert_eq!(choose(10, Mode::Fixed(3), WIDE, 1).0.len(), 3);
        assert_eq!(choose(2, Mode::Fixed(3), WIDE, 1).0.len(), 2);
        assert_eq!(choose(10, Mode::FixedPercent(0.25), WIDE, 1).0.len(), 2);
        assert_eq!(choose(3, Mode::FixedPercent(0.1), WIDE, 1).0.len(), 1);
        for seed in 0..50 {
            let k = choose(10, Mode::RandomMaxPercent(0.5), WIDE, seed).0.len();
            assert!((1..=5).contains(&k), "{k}");
        }
        assert!(choose(0, Mode::All, WIDE, 1).0.is_empty());
    }

    #[test]
    fn same_seed_same_pods_and_the_radius_caps() {
        assert_eq!(
            choose(20, Mode::Fixed(5), WIDE, 7),
            choose(20, Mode::Fixed(5), WIDE, 7)
        );
        assert_ne!(
            choose(20, Mode::Fixed(5), WIDE, 7).0,
            choose(20, Mode::Fixed(5), WIDE, 8).0
        );
        let (c, capped) =
            choose(10, Mode::All, Radius { max_targets: 3, max_fraction: 1.0 }, 1);
        assert_eq!((c.len(), capped), (3, true));
        let (c, capped) =
            choose(10, Mode::All, Radius { max_targets: 100, max_fraction: 0.2 }, 1);
        assert_eq!((c.len(), capped), (2, true));
    }
}
