//! Arbitrary bytes parsed as a manifest at every level of a tree, with the
//! standard layout and a small fan-out: never panics, and a parsed manifest
//! re-serialises (`to_json`, the canonical form) to bytes that parse back to
//! the same value at the same level, and re-serialise to the same bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use piece_store::manifest::{Layout, Level, MANIFEST_MAX_DEPTH, Manifest};

fuzz_target!(|data: &[u8]| {
    let small = Layout::with_fan_out(Layout::MIN_FAN_OUT).expect("the smallest fan-out is valid");
    for layout in [Layout::STANDARD, small] {
        for depth in 1..=MANIFEST_MAX_DEPTH {
            let level = Level::new(depth).expect("a depth within the tree");
            let Ok(manifest) = Manifest::parse(data, &layout, level) else {
                continue;
            };
            let json = manifest.to_json();
            let again = Manifest::parse(&json, &layout, level)
                .unwrap_or_else(|err| panic!("to_json output does not parse back: {err}"));
            assert_eq!(again, manifest);
            assert_eq!(again.to_json(), json);
            assert!(manifest.check(&layout, level).is_ok());
        }
    }
});
