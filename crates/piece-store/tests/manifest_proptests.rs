//! Property tests of the manifest parser, the proptest equivalents of the
//! `manifest` fuzz target (fuzz/): every valid manifest round-trips through
//! its canonical JSON at its level, and nothing a peer sends — random bytes,
//! or a real manifest bit-flipped or truncated — makes the parser panic;
//! whatever it accepts round-trips too.
//!
//! Runs use a fixed seed so the suite is deterministic; set
//! `PROPTEST_RNG_SEED=<u64>` to explore other inputs.

// Every function here is test code, but clippy's `allow-*-in-tests`
// settings only cover `#[test]` functions and `#[cfg(test)]` modules, not the
// helpers of an integration test crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use piece_store::manifest::{
    Entries, Layout, Level, MANIFEST_MAX_DEPTH, Manifest, Part, piece_count,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::RngSeed;
use wire_format::PieceId;
use wire_format::limits::PIECE_MAX;

/// Seed used unless `PROPTEST_RNG_SEED` is set.
const SEED: u64 = 0x6d61_6e69_6665_7374;

const MIB: u64 = PIECE_MAX as u64;

fn config(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig::with_cases(cases);
    if matches!(config.rng_seed, RngSeed::Random) {
        config.rng_seed = RngSeed::Fixed(SEED);
    }
    config
}

/// A fan-out small enough that trees of every depth stay a few entries.
fn small() -> Layout {
    Layout::with_fan_out(3).unwrap()
}

fn piece_id() -> impl Strategy<Value = PieceId> {
    any::<[u8; 32]>().prop_map(PieceId::from_bytes)
}

/// Valid names, escapes and non-ASCII included.
fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ._\"'é€😀-]{1,40}".prop_filter("not . or ..", |n| n != "." && n != "..")
}

fn level() -> impl Strategy<Value = Level> {
    (1..=MANIFEST_MAX_DEPTH).prop_map(|depth| Level::new(depth).unwrap())
}

/// A valid manifest of `small()` at `level`: pieces, or (above the last
/// level) parts whose sizes fit the level below.
fn manifest_at(level: Level) -> BoxedStrategy<Manifest> {
    let layout = small();
    let name = if level.is_root() {
        name().prop_map(Some).boxed()
    } else {
        Just(None).boxed()
    };
    let min_size = u64::from(!level.is_root());
    let leaf_max = (layout.fan_out() as u64 * MIB).min(layout.max_size(level));
    let pieces = (name.clone(), min_size..=leaf_max, piece_id(), any::<u64>()).prop_map(
        |(name, size, sha256, seed)| {
            let count = piece_count(size);
            let pieces = (0..count)
                .map(|i| PieceId::of(&seed.wrapping_add(i).to_le_bytes()))
                .collect();
            Manifest {
                name,
                size,
                sha256,
                entries: Entries::Pieces(pieces),
            }
        },
    );
    let Some(below) = level.below() else {
        return pieces.boxed();
    };
    let whole_max = layout.max_pieces(below);
    let part_max = layout.max_size(below);
    let parts = (
        name,
        prop::collection::vec(1..=whole_max, 0..layout.fan_out()),
        1..=part_max,
        piece_id(),
        piece_id(),
    )
        .prop_map(|(name, whole, last, sha256, manifest)| {
            let mut parts: Vec<Part> = whole
                .into_iter()
                .map(|pieces| Part {
                    manifest,
                    size: pieces * MIB,
                })
                .collect();
            parts.push(Part {
                manifest,
                size: last,
            });
            Manifest {
                name,
                size: parts.iter().map(|p| p.size).sum(),
                sha256,
                entries: Entries::Parts(parts),
            }
        });
    prop_oneof![pieces, parts].boxed()
}

fn manifest() -> impl Strategy<Value = (Level, Manifest)> {
    level().prop_flat_map(|level| (Just(level), manifest_at(level)))
}

/// Parses `bytes` at every level with both layouts: whatever is accepted
/// re-serialises to JSON that parses back to the same manifest.
fn parse_everywhere(bytes: &[u8]) -> Result<(), TestCaseError> {
    for layout in [Layout::STANDARD, small()] {
        for depth in 1..=MANIFEST_MAX_DEPTH {
            let level = Level::new(depth).unwrap();
            if let Ok(manifest) = Manifest::parse(bytes, &layout, level) {
                let json = manifest.to_json();
                let again = Manifest::parse(&json, &layout, level);
                prop_assert!(again.is_ok(), "{:?}", again);
                let again = again.unwrap();
                prop_assert_eq!(&again, &manifest);
                prop_assert_eq!(again.to_json(), json);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn every_valid_manifest_round_trips_at_its_level((level, manifest) in manifest()) {
        let layout = small();
        prop_assert!(manifest.check(&layout, level).is_ok());
        let json = manifest.to_json();
        let parsed = Manifest::parse(&json, &layout, level);
        prop_assert!(parsed.is_ok(), "{:?}", parsed);
        prop_assert_eq!(parsed.unwrap(), manifest);
        parse_everywhere(&json)?;
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        parse_everywhere(&bytes)?;
    }

    #[test]
    fn bit_flipped_manifests_never_panic(
        (_, manifest) in manifest(),
        flips in prop::collection::vec((any::<Index>(), 0..8u8), 1..=4),
    ) {
        let mut json = manifest.to_json();
        for (index, bit) in &flips {
            let at = index.index(json.len());
            json[at] ^= 1 << bit;
        }
        parse_everywhere(&json)?;
    }

    #[test]
    fn truncated_manifests_are_refused((level, manifest) in manifest(), cut in any::<Index>()) {
        let json = manifest.to_json();
        let cut = cut.index(json.len());
        prop_assert!(Manifest::parse(&json[..cut], &small(), level).is_err());
    }
}
