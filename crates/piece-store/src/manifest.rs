//! Manifests: the piece that names a file's pieces, in order.
//!
//! A manifest is a piece holding compact UTF-8 JSON with its keys in this
//! order (docs/ARCHITECTURE.md §5):
//!
//! ```text
//! {"p2p_manifest":1,"name":"a.bin","size":N,"sha256":"<whole file hex>","pieces":["<hex>",…]}
//! ```
//!
//! Every listed piece but the file's last is exactly [`PIECE_MAX`] bytes, so a
//! manifest of `size` bytes lists exactly `ceil(size / PIECE_MAX)` pieces (none
//! for the empty file). One manifest lists at most [`Layout::fan_out`] entries;
//! a file needing more pieces gets a tree: its manifest lists
//! `"parts":[{"manifest":"<hex>","size":N},…]` instead, each part a manifest of
//! the same schema without `name` that covers the next consecutive byte range
//! of the file, with its own `sha256` of that range. A tree has at most
//! [`MANIFEST_MAX_DEPTH`] levels; the root is [`Level::ROOT`].
//!
//! [`Manifest::parse`] trusts nothing: it bounds the input before parsing and
//! checks every count and size against the [`Layout`] and the manifest's
//! [`Level`], so a walk of a tree built from parsed manifests is bounded by the
//! file size it declares. [`Manifest::to_json`] writes the canonical form.

use std::fmt;

use serde::{Deserialize, Deserializer};
use wire_format::limits::PIECE_MAX;
use wire_format::{PieceId, PieceIdParseError};

/// The only `p2p_manifest` value this implementation reads and writes.
pub const MANIFEST_VERSION: u64 = 1;
/// Most entries (pieces or parts) one manifest lists: the fan-out of
/// [`Layout::STANDARD`]. Worst case 8,192 parts of 20-digit sizes is about
/// 900 KB of JSON, within one piece (a unit test checks it).
pub const MANIFEST_MAX_ENTRIES: usize = 1 << 13;
/// Most levels of a manifest tree: the root and two levels of parts.
pub const MANIFEST_MAX_DEPTH: usize = 3;
/// Longest file name a manifest may carry, in bytes (the common file system
/// limit for one path component).
pub const MANIFEST_NAME_MAX_BYTES: usize = 255;

/// [`PIECE_MAX`] as a byte count of a file.
pub(crate) const PIECE_MAX_BYTES: u64 = PIECE_MAX as u64;

/// Number of pieces a byte range of `size` bytes is split into:
/// `ceil(size / PIECE_MAX)`.
pub const fn piece_count(size: u64) -> u64 {
    size.div_ceil(PIECE_MAX_BYTES)
}

/// The shape rules of manifest trees: how many entries one manifest may list.
///
/// Every program uses [`Layout::STANDARD`]; a smaller fan-out exists so tests
/// can build multi-level trees from a handful of pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Layout {
    fan_out: usize,
}

impl Layout {
    /// The layout of the format: fan-out [`MANIFEST_MAX_ENTRIES`].
    pub const STANDARD: Layout = Layout {
        fan_out: MANIFEST_MAX_ENTRIES,
    };

    /// Smallest fan-out: with one entry per manifest, parts would not split
    /// anything.
    pub const MIN_FAN_OUT: usize = 2;

    /// A layout with a smaller fan-out, or `None` outside
    /// [`Layout::MIN_FAN_OUT`]`..=`[`MANIFEST_MAX_ENTRIES`] (a larger fan-out
    /// could make a manifest longer than one piece).
    pub const fn with_fan_out(fan_out: usize) -> Option<Layout> {
        if fan_out >= Self::MIN_FAN_OUT && fan_out <= MANIFEST_MAX_ENTRIES {
            Some(Layout { fan_out })
        } else {
            None
        }
    }

    /// Most entries (pieces or parts) one manifest may list.
    pub const fn fan_out(&self) -> usize {
        self.fan_out
    }

    /// Most pieces a manifest at `level` can cover: `fan_out` to the power of
    /// the levels from `level` down to the last one.
    pub const fn max_pieces(&self, level: Level) -> u64 {
        let fan_out = self.fan_out as u64;
        let mut pieces: u64 = 1;
        let mut at = level.get();
        while at <= MANIFEST_MAX_DEPTH {
            pieces = pieces.saturating_mul(fan_out);
            at += 1;
        }
        pieces
    }

    /// Most bytes a manifest at `level` can cover; at [`Level::ROOT`], the
    /// largest file (2^59 bytes with [`Layout::STANDARD`]).
    pub const fn max_size(&self, level: Level) -> u64 {
        self.max_pieces(level).saturating_mul(PIECE_MAX_BYTES)
    }
}

impl Default for Layout {
    fn default() -> Self {
        Self::STANDARD
    }
}

/// The depth of a manifest in its tree: 1 for the root, at most
/// [`MANIFEST_MAX_DEPTH`]. A manifest at the last level must list pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Level(usize);

impl Level {
    /// The root manifest: the one a file is named by.
    pub const ROOT: Level = Level(1);
    /// The deepest level, whose manifests must list pieces.
    pub const LAST: Level = Level(MANIFEST_MAX_DEPTH);

    /// Level `depth` (1 is the root), or `None` outside `1..=MANIFEST_MAX_DEPTH`.
    pub const fn new(depth: usize) -> Option<Level> {
        if depth >= 1 && depth <= MANIFEST_MAX_DEPTH {
            Some(Level(depth))
        } else {
            None
        }
    }

    /// The depth: 1 for the root.
    pub const fn get(self) -> usize {
        self.0
    }

    /// Whether this is the root level (the only one carrying a `name`).
    pub const fn is_root(self) -> bool {
        self.0 == Self::ROOT.0
    }

    /// The level of this level's parts, or `None` at the last level.
    pub const fn below(self) -> Option<Level> {
        Self::new(self.0 + 1)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One entry of a `parts` list: a sub-manifest and the bytes it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Part {
    /// The part's manifest piece.
    pub manifest: PieceId,
    /// Bytes of the file the part covers.
    pub size: u64,
}

/// What a manifest lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entries {
    /// The data pieces, in file order (`"pieces"`).
    Pieces(Vec<PieceId>),
    /// Sub-manifests covering consecutive byte ranges, in file order (`"parts"`).
    Parts(Vec<Part>),
}

impl Entries {
    /// Number of entries listed.
    pub fn len(&self) -> usize {
        match self {
            Entries::Pieces(pieces) => pieces.len(),
            Entries::Parts(parts) => parts.len(),
        }
    }

    /// Whether nothing is listed (only the empty file's manifest).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A manifest, the root of a file or one of its parts.
///
/// The fields are plain data: [`Manifest::parse`] and [`Manifest::check`]
/// are what make one valid for a [`Layout`] and [`Level`];
/// [`Manifest::to_json`] writes whatever it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The file name: present on the root, absent on parts.
    pub name: Option<String>,
    /// Bytes covered.
    pub size: u64,
    /// SHA-256 of exactly the bytes covered (the whole file, for the root).
    pub sha256: PieceId,
    /// The pieces or parts covering those bytes.
    pub entries: Entries,
}

impl Manifest {
    /// Parses and checks a manifest found at `level` of a tree.
    ///
    /// Input longer than [`PIECE_MAX`] is rejected before any parsing.
    /// Unknown keys, duplicate keys and `null` values are rejected: a manifest
    /// is content-addressed, so a key an old reader would skip could make two
    /// readers see different files under one name; new keys need a new
    /// [`MANIFEST_VERSION`]. Key order and whitespace are not checked (they
    /// change the manifest's id, not its meaning), nor is the shape of the
    /// tree beyond its bounds (see [`Manifest::check`]).
    pub fn parse(bytes: &[u8], layout: &Layout, level: Level) -> Result<Manifest, ManifestError> {
        if bytes.len() > PIECE_MAX {
            return Err(ManifestError::TooLarge {
                len: bytes.len(),
                max: PIECE_MAX,
            });
        }
        // The version first, so a newer manifest is reported as such rather
        // than as a key this version does not know.
        let version: VersionOnly = serde_json::from_slice(bytes)?;
        if version.p2p_manifest != MANIFEST_VERSION {
            return Err(ManifestError::Version {
                found: version.p2p_manifest,
                expected: MANIFEST_VERSION,
            });
        }
        let raw: RawManifest = serde_json::from_slice(bytes)?;
        let count = match (&raw.pieces, &raw.parts) {
            (Some(pieces), None) => pieces.len(),
            (None, Some(parts)) => parts.len(),
            (None, None) => return Err(ManifestError::NoEntries),
            (Some(_), Some(_)) => return Err(ManifestError::BothEntries),
        };
        if count > layout.fan_out {
            return Err(ManifestError::TooManyEntries {
                count,
                max: layout.fan_out,
            });
        }
        let sha256 = raw.sha256.parse().map_err(ManifestError::BadDigest)?;
        let entries = match (raw.pieces, raw.parts) {
            (Some(pieces), _) => Entries::Pieces(
                pieces
                    .iter()
                    .enumerate()
                    .map(|(index, hex)| {
                        hex.parse()
                            .map_err(|source| ManifestError::BadEntryId { index, source })
                    })
                    .collect::<Result<_, _>>()?,
            ),
            (None, Some(parts)) => Entries::Parts(
                parts
                    .iter()
                    .enumerate()
                    .map(|(index, part)| {
                        Ok(Part {
                            manifest: part
                                .manifest
                                .parse()
                                .map_err(|source| ManifestError::BadEntryId { index, source })?,
                            size: part.size,
                        })
                    })
                    .collect::<Result<_, ManifestError>>()?,
            ),
            (None, None) => return Err(ManifestError::NoEntries),
        };
        let manifest = Manifest {
            name: raw.name,
            size: raw.size,
            sha256,
            entries,
        };
        manifest.check(layout, level)?;
        Ok(manifest)
    }

    /// Checks everything that can be known from this manifest alone, for a
    /// manifest found at `level`:
    /// * a `name` on the root only, valid as a file name ([`check_name`]);
    /// * at most [`Layout::fan_out`] entries, and no more bytes than `level`
    ///   can hold ([`Layout::max_size`]); a part covers at least one byte;
    /// * `pieces`: exactly [`piece_count`]`(size)` of them;
    /// * `parts`: only above [`Level::LAST`]; at least one; each non-empty,
    ///   within what the level below can hold, every one but the last a whole
    ///   number of pieces (so every piece but the file's last is full); sizes
    ///   summing exactly to `size`.
    ///
    /// Whether parts are as full as possible, or the tree as shallow as
    /// possible, is not checked: [`crate::file::add_file`] writes them so,
    /// but any tree within these bounds reads back the same bytes.
    pub fn check(&self, layout: &Layout, level: Level) -> Result<(), ManifestError> {
        match (&self.name, level.is_root()) {
            (Some(name), true) => check_name(name).map_err(ManifestError::BadName)?,
            (None, true) => return Err(ManifestError::MissingName),
            (Some(_), false) => return Err(ManifestError::NameOnPart),
            (None, false) => {}
        }
        let max_size = layout.max_size(level);
        if self.size > max_size {
            return Err(ManifestError::SizeTooLarge {
                size: self.size,
                max: max_size,
                level,
            });
        }
        if self.size == 0 && !level.is_root() {
            return Err(ManifestError::EmptyPartManifest);
        }
        let count = self.entries.len();
        if count > layout.fan_out {
            return Err(ManifestError::TooManyEntries {
                count,
                max: layout.fan_out,
            });
        }
        match &self.entries {
            Entries::Pieces(pieces) => {
                let expected = piece_count(self.size);
                let got = pieces.len() as u64;
                if got != expected {
                    return Err(ManifestError::PieceCount { expected, got });
                }
            }
            Entries::Parts(parts) => {
                let Some(below) = level.below() else {
                    return Err(ManifestError::TooDeep {
                        max: MANIFEST_MAX_DEPTH,
                    });
                };
                if parts.is_empty() {
                    return Err(ManifestError::NoParts);
                }
                let part_max = layout.max_size(below);
                let last = parts.len() - 1;
                let mut sum: u64 = 0;
                for (index, part) in parts.iter().enumerate() {
                    if part.size == 0 {
                        return Err(ManifestError::EmptyPart { index });
                    }
                    if part.size > part_max {
                        return Err(ManifestError::PartTooLarge {
                            index,
                            size: part.size,
                            max: part_max,
                        });
                    }
                    if index != last && !part.size.is_multiple_of(PIECE_MAX_BYTES) {
                        return Err(ManifestError::PartNotWhole {
                            index,
                            size: part.size,
                        });
                    }
                    sum = sum
                        .checked_add(part.size)
                        .ok_or(ManifestError::SizeOverflow { index })?;
                }
                if sum != self.size {
                    return Err(ManifestError::SizeMismatch {
                        declared: self.size,
                        sum,
                    });
                }
            }
        }
        Ok(())
    }

    /// The canonical compact JSON: keys in the order of the format, no
    /// whitespace, lowercase hex. The name is escaped by `serde_json`.
    pub fn to_json(&self) -> Vec<u8> {
        // Entries dominate: a quoted id and a comma, or a part object.
        let per_entry = match &self.entries {
            Entries::Pieces(_) => 67,
            Entries::Parts(_) => 110,
        };
        let mut out = String::with_capacity(160 + per_entry * self.entries.len());
        out.push_str("{\"p2p_manifest\":");
        out.push_str(&MANIFEST_VERSION.to_string());
        if let Some(name) = &self.name {
            out.push_str(",\"name\":");
            // `Value`'s `Display` is serde_json's own string escaping, without
            // a `Result` that could only be `Ok` for a string.
            out.push_str(&serde_json::Value::String(name.clone()).to_string());
        }
        out.push_str(",\"size\":");
        out.push_str(&self.size.to_string());
        out.push_str(",\"sha256\":\"");
        out.push_str(&self.sha256.to_hex());
        out.push('"');
        match &self.entries {
            Entries::Pieces(pieces) => {
                out.push_str(",\"pieces\":[");
                for (index, id) in pieces.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    out.push('"');
                    out.push_str(&id.to_hex());
                    out.push('"');
                }
            }
            Entries::Parts(parts) => {
                out.push_str(",\"parts\":[");
                for (index, part) in parts.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    out.push_str("{\"manifest\":\"");
                    out.push_str(&part.manifest.to_hex());
                    out.push_str("\",\"size\":");
                    out.push_str(&part.size.to_string());
                    out.push('}');
                }
            }
        }
        out.push_str("]}");
        out.into_bytes()
    }
}

/// Checks that `name` can be used as a file name on its own.
///
/// A received manifest's name may become the name of a file written by the
/// node, so it must be one path component that cannot escape or alias the
/// target directory: not empty, at most [`MANIFEST_NAME_MAX_BYTES`] bytes, no
/// `/` or `\` (path separators on Unix and Windows), no NUL or other control
/// characters (which end C strings or fool terminals), and neither `.` nor
/// `..`.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MANIFEST_NAME_MAX_BYTES {
        return Err(NameError::TooLong {
            len: name.len(),
            max: MANIFEST_NAME_MAX_BYTES,
        });
    }
    if name == "." || name == ".." {
        return Err(NameError::DotName);
    }
    if let Some((index, found)) = name
        .char_indices()
        .find(|&(_, c)| c == '/' || c == '\\' || c.is_control())
    {
        return Err(NameError::ForbiddenChar { found, index });
    }
    Ok(())
}

/// Why a string is not a valid manifest name (see [`check_name`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("the name is empty")]
    Empty,
    /// The name is longer than [`MANIFEST_NAME_MAX_BYTES`].
    #[error("the name is {len} bytes, at most {max} are allowed")]
    TooLong {
        /// Bytes given.
        len: usize,
        /// [`MANIFEST_NAME_MAX_BYTES`].
        max: usize,
    },
    /// The name is `.` or `..`.
    #[error("the name may not be \".\" or \"..\"")]
    DotName,
    /// A path separator or control character.
    #[error("the name may not contain {found:?} (at byte {index})")]
    ForbiddenChar {
        /// The character.
        found: char,
        /// Its byte offset.
        index: usize,
    },
}

/// Why bytes are not a valid manifest. Every variant is the fault of whoever
/// wrote the manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Longer than a piece: rejected before parsing.
    #[error("a manifest is at most {max} bytes, got {len}")]
    TooLarge {
        /// Bytes given.
        len: usize,
        /// [`PIECE_MAX`].
        max: usize,
    },
    /// Not JSON of the manifest schema (syntax, types, missing, unknown,
    /// duplicate or `null` keys).
    #[error("manifest is not valid JSON of the manifest schema: {0}")]
    Json(#[from] serde_json::Error),
    /// A `p2p_manifest` version this implementation does not read.
    #[error("manifest version {found} is not supported (expected {expected})")]
    Version {
        /// The version given.
        found: u64,
        /// [`MANIFEST_VERSION`].
        expected: u64,
    },
    /// Neither `pieces` nor `parts`.
    #[error("manifest has neither \"pieces\" nor \"parts\"")]
    NoEntries,
    /// Both `pieces` and `parts`.
    #[error("manifest has both \"pieces\" and \"parts\"")]
    BothEntries,
    /// More entries than the layout's fan-out.
    #[error("manifest lists {count} entries, at most {max} are allowed")]
    TooManyEntries {
        /// Entries listed.
        count: usize,
        /// [`Layout::fan_out`].
        max: usize,
    },
    /// The `sha256` field is not a digest.
    #[error("manifest sha256: {0}")]
    BadDigest(#[source] PieceIdParseError),
    /// An entry's id is not a digest.
    #[error("manifest entry {index}: {source}")]
    BadEntryId {
        /// Position in the list.
        index: usize,
        /// Why it is not an id.
        #[source]
        source: PieceIdParseError,
    },
    /// The root manifest has no `name`.
    #[error("the root manifest has no name")]
    MissingName,
    /// A part manifest has a `name`.
    #[error("a part manifest may not have a name")]
    NameOnPart,
    /// The root's `name` is not a valid file name.
    #[error("bad manifest name: {0}")]
    BadName(#[source] NameError),
    /// More bytes than a manifest at this level can cover.
    #[error("manifest at level {level} declares {size} bytes, at most {max} fit")]
    SizeTooLarge {
        /// Bytes declared.
        size: u64,
        /// [`Layout::max_size`] at that level.
        max: u64,
        /// The manifest's level.
        level: Level,
    },
    /// A part manifest covering no bytes.
    #[error("a part manifest covers no bytes")]
    EmptyPartManifest,
    /// `pieces` does not hold `ceil(size / PIECE_MAX)` ids.
    #[error("manifest of its size needs {expected} pieces, lists {got}")]
    PieceCount {
        /// [`piece_count`] of the declared size.
        expected: u64,
        /// Pieces listed.
        got: u64,
    },
    /// `parts` at the last level.
    #[error("manifest tree deeper than {max} levels")]
    TooDeep {
        /// [`MANIFEST_MAX_DEPTH`].
        max: usize,
    },
    /// An empty `parts` list.
    #[error("manifest has an empty \"parts\" list")]
    NoParts,
    /// A part of zero bytes.
    #[error("part {index} covers no bytes")]
    EmptyPart {
        /// Position in the list.
        index: usize,
    },
    /// A part larger than the level below can hold.
    #[error("part {index} declares {size} bytes, at most {max} fit below")]
    PartTooLarge {
        /// Position in the list.
        index: usize,
        /// Bytes declared.
        size: u64,
        /// [`Layout::max_size`] of the level below.
        max: u64,
    },
    /// A part other than the last that is not a whole number of pieces.
    #[error("part {index} of {size} bytes is not the last, so must be a whole number of pieces")]
    PartNotWhole {
        /// Position in the list.
        index: usize,
        /// Bytes declared.
        size: u64,
    },
    /// The part sizes overflow a `u64`.
    #[error("part sizes overflow at part {index}")]
    SizeOverflow {
        /// Position of the part that overflowed the sum.
        index: usize,
    },
    /// The part sizes do not sum to the manifest's size.
    #[error("manifest declares {declared} bytes but its parts sum to {sum}")]
    SizeMismatch {
        /// `size` of the manifest.
        declared: u64,
        /// Sum of its parts' sizes.
        sum: u64,
    },
    /// A part manifest's own `size` differs from its entry in the parent.
    #[error("part declared as {declared} bytes by its parent covers {found}")]
    PartSize {
        /// Size in the parent's `parts` entry.
        declared: u64,
        /// Size in the part manifest.
        found: u64,
    },
}

/// Just the version, read before the schema it selects.
#[derive(Deserialize)]
struct VersionOnly {
    p2p_manifest: u64,
}

/// The JSON schema, before ids are parsed and sizes checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[allow(
        dead_code,
        reason = "checked through VersionOnly; named so it is not an unknown key"
    )]
    p2p_manifest: u64,
    #[serde(default, deserialize_with = "present")]
    name: Option<String>,
    size: u64,
    sha256: String,
    #[serde(default, deserialize_with = "present")]
    pieces: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    parts: Option<Vec<RawPart>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPart {
    manifest: String,
    size: u64,
}

/// An optional key that, when present, is not `null`: absent means `None`
/// (through `#[serde(default)]`), `null` is a type error.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn id(n: usize) -> PieceId {
        let mut bytes = [0xa5; 32];
        bytes[..8].copy_from_slice(&(n as u64).to_le_bytes());
        PieceId::from_bytes(bytes)
    }

    fn small() -> Layout {
        Layout::with_fan_out(4).unwrap()
    }

    fn level(n: usize) -> Level {
        Level::new(n).unwrap()
    }

    fn pieces_json(size: u64, count: usize) -> String {
        let ids: Vec<String> = (0..count).map(|i| format!("\"{}\"", id(i))).collect();
        format!(
            r#"{{"p2p_manifest":1,"name":"f","size":{size},"sha256":"{}","pieces":[{}]}}"#,
            id(200),
            ids.join(",")
        )
    }

    fn parts_json(name: bool, size: u64, parts: &[u64]) -> String {
        let parts: Vec<String> = parts
            .iter()
            .enumerate()
            .map(|(i, size)| format!(r#"{{"manifest":"{}","size":{size}}}"#, id(i)))
            .collect();
        let name = if name { r#""name":"f","# } else { "" };
        format!(
            r#"{{"p2p_manifest":1,{name}"size":{size},"sha256":"{}","parts":[{}]}}"#,
            id(200),
            parts.join(",")
        )
    }

    fn parse(json: &str, layout: &Layout, at: Level) -> Result<Manifest, ManifestError> {
        Manifest::parse(json.as_bytes(), layout, at)
    }

    const MIB: u64 = PIECE_MAX_BYTES;

    #[test]
    fn writes_the_canonical_json_and_reads_it_back() {
        let empty = Manifest {
            name: Some("e".into()),
            size: 0,
            sha256: EMPTY_SHA256.parse().unwrap(),
            entries: Entries::Pieces(vec![]),
        };
        let json = String::from_utf8(empty.to_json()).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"p2p_manifest":1,"name":"e","size":0,"sha256":"{EMPTY_SHA256}","pieces":[]}}"#
            )
        );
        assert_eq!(parse(&json, &Layout::STANDARD, Level::ROOT).unwrap(), empty);

        let tree = Manifest {
            name: None,
            size: MIB + 5,
            sha256: id(9),
            entries: Entries::Parts(vec![
                Part {
                    manifest: id(1),
                    size: MIB,
                },
                Part {
                    manifest: id(2),
                    size: 5,
                },
            ]),
        };
        let json = String::from_utf8(tree.to_json()).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"p2p_manifest":1,"size":1048581,"sha256":"{}","parts":[{{"manifest":"{}","size":1048576}},{{"manifest":"{}","size":5}}]}}"#,
                id(9),
                id(1),
                id(2)
            )
        );
        assert_eq!(parse(&json, &small(), level(2)).unwrap(), tree);
    }

    #[test]
    fn names_are_escaped_by_serde_json() {
        let m = Manifest {
            name: Some("a \"q\" é\u{2028}.bin".into()),
            size: 0,
            sha256: id(0),
            entries: Entries::Pieces(vec![]),
        };
        let json = String::from_utf8(m.to_json()).unwrap();
        assert!(json.contains(r#""name":"a \"q\" é"#), "{json}");
        assert_eq!(parse(&json, &Layout::STANDARD, Level::ROOT).unwrap(), m);
    }

    #[test]
    fn the_largest_manifests_fit_in_one_piece() {
        let parts = Manifest {
            name: Some("n".repeat(MANIFEST_NAME_MAX_BYTES)),
            size: u64::MAX,
            sha256: id(0),
            entries: Entries::Parts(vec![
                Part {
                    manifest: id(1),
                    size: u64::MAX
                };
                MANIFEST_MAX_ENTRIES
            ]),
        };
        let len = parts.to_json().len();
        assert!(len <= PIECE_MAX, "{len}");
        let pieces = Manifest {
            entries: Entries::Pieces(vec![id(1); MANIFEST_MAX_ENTRIES]),
            ..parts
        };
        assert!(pieces.to_json().len() <= PIECE_MAX);
    }

    #[test]
    fn layout_bounds() {
        assert_eq!(Layout::with_fan_out(1), None);
        assert_eq!(Layout::with_fan_out(MANIFEST_MAX_ENTRIES + 1), None);
        assert_eq!(
            Layout::with_fan_out(MANIFEST_MAX_ENTRIES),
            Some(Layout::STANDARD)
        );
        assert_eq!(Layout::STANDARD.max_size(Level::ROOT), 1 << 59);
        assert_eq!(small().max_pieces(Level::ROOT), 64);
        assert_eq!(small().max_pieces(Level::LAST), 4);
        assert_eq!(Level::new(0), None);
        assert_eq!(Level::new(MANIFEST_MAX_DEPTH + 1), None);
        assert_eq!(Level::LAST.below(), None);
        assert_eq!(Level::ROOT.below(), Level::new(2));
    }

    #[test]
    fn piece_counts_follow_the_size() {
        let layout = Layout::STANDARD;
        assert!(parse(&pieces_json(0, 0), &layout, Level::ROOT).is_ok());
        assert!(parse(&pieces_json(1, 1), &layout, Level::ROOT).is_ok());
        assert!(parse(&pieces_json(MIB, 1), &layout, Level::ROOT).is_ok());
        assert!(parse(&pieces_json(MIB + 1, 2), &layout, Level::ROOT).is_ok());
        for (size, count, expected) in [(0, 1, 0), (1, 0, 1), (MIB, 2, 1), (MIB + 1, 1, 2)] {
            assert!(
                matches!(
                    parse(&pieces_json(size, count), &layout, Level::ROOT),
                    Err(ManifestError::PieceCount { expected: e, got })
                        if e == expected && got == count as u64
                ),
                "size {size} count {count}"
            );
        }
    }

    #[test]
    fn rejects_input_longer_than_a_piece_before_parsing() {
        // 10^6 entries: about 67 MB of JSON.
        let mut json = String::from(r#"{"p2p_manifest":1,"name":"f","size":1,"sha256":""#);
        json.push_str(&id(0).to_hex());
        json.push_str(r#"","pieces":["#);
        let entry = format!("\"{}\"", id(1));
        for i in 0..1_000_000 {
            if i > 0 {
                json.push(',');
            }
            json.push_str(&entry);
        }
        json.push_str("]}");
        assert!(matches!(
            parse(&json, &Layout::STANDARD, Level::ROOT),
            Err(ManifestError::TooLarge { len, max: PIECE_MAX }) if len == json.len()
        ));

        // At the limit the length is fine (whitespace is valid JSON).
        let mut at_limit = pieces_json(1, 1);
        at_limit.push_str(&" ".repeat(PIECE_MAX - at_limit.len()));
        assert!(parse(&at_limit, &Layout::STANDARD, Level::ROOT).is_ok());
        at_limit.push(' ');
        assert!(matches!(
            parse(&at_limit, &Layout::STANDARD, Level::ROOT),
            Err(ManifestError::TooLarge { .. })
        ));
    }

    #[test]
    fn entry_count_is_bounded_by_the_fan_out() {
        let layout = small();
        assert!(parse(&pieces_json(4 * MIB, 4), &layout, Level::ROOT).is_ok());
        assert!(matches!(
            parse(&pieces_json(5 * MIB, 5), &layout, Level::ROOT),
            Err(ManifestError::TooManyEntries { count: 5, max: 4 })
        ));
        assert!(parse(&parts_json(true, 4, &[1, 1, 1, 1]), &layout, Level::ROOT).is_err());
        assert!(matches!(
            parse(
                &parts_json(true, 4 * MIB + 1, &[MIB, MIB, MIB, MIB, 1]),
                &layout,
                Level::ROOT
            ),
            Err(ManifestError::TooManyEntries { count: 5, max: 4 })
        ));
        // The standard layout: at the limit accepted, one more rejected.
        let n = MANIFEST_MAX_ENTRIES as u64;
        assert!(
            parse(
                &pieces_json(n * MIB, MANIFEST_MAX_ENTRIES),
                &Layout::STANDARD,
                Level::ROOT
            )
            .is_ok()
        );
        assert!(matches!(
            parse(&pieces_json((n + 1) * MIB, MANIFEST_MAX_ENTRIES + 1), &Layout::STANDARD, Level::ROOT),
            Err(ManifestError::TooManyEntries { count, max: MANIFEST_MAX_ENTRIES })
                if count == MANIFEST_MAX_ENTRIES + 1
        ));
    }

    #[test]
    fn parts_sizes_must_sum_exactly() {
        let layout = small();
        assert!(
            parse(
                &parts_json(true, 2 * MIB + 3, &[MIB, MIB + 3]),
                &layout,
                Level::ROOT
            )
            .is_ok()
        );
        assert!(matches!(
            parse(&parts_json(true, 2 * MIB + 4, &[MIB, MIB + 3]), &layout, Level::ROOT),
            Err(ManifestError::SizeMismatch { declared, sum })
                if declared == 2 * MIB + 4 && sum == 2 * MIB + 3
        ));
        assert!(matches!(
            parse(&parts_json(true, 2 * MIB + 3, &[MIB + 3, MIB]), &layout, Level::ROOT),
            Err(ManifestError::PartNotWhole { index: 0, size }) if size == MIB + 3
        ));
        assert!(matches!(
            parse(&parts_json(true, MIB, &[MIB, 0]), &layout, Level::ROOT),
            Err(ManifestError::EmptyPart { index: 1 })
        ));
        assert!(matches!(
            parse(&parts_json(true, 0, &[]), &layout, Level::ROOT),
            Err(ManifestError::NoParts)
        ));
        // A part larger than two levels of fan-out 4 can hold.
        assert!(matches!(
            parse(&parts_json(true, 17 * MIB, &[17 * MIB]), &layout, Level::ROOT),
            Err(ManifestError::PartTooLarge { index: 0, size, max })
                if size == 17 * MIB && max == 16 * MIB
        ));
        // Sizes that overflow a u64 when summed (STANDARD allows huge parts).
        let huge = 1u64 << 58;
        assert!(matches!(
            parse(
                &parts_json(true, 1 << 59, &[huge, huge, huge, huge]),
                &Layout::STANDARD,
                Level::ROOT
            ),
            Err(ManifestError::PartTooLarge { .. } | ManifestError::SizeMismatch { .. })
        ));
        let big = u64::MAX - u64::MAX % MIB;
        assert!(
            parse(
                &parts_json(true, 5, &[big, big]),
                &Layout::STANDARD,
                Level::ROOT
            )
            .is_err()
        );
        let parts_only = Manifest {
            name: Some("f".into()),
            size: 5,
            sha256: id(0),
            entries: Entries::Parts(vec![
                Part {
                    manifest: id(1),
                    size: big
                };
                2
            ]),
        };
        assert!(matches!(
            parts_only.check(&Layout::STANDARD, Level::ROOT),
            Err(ManifestError::PartTooLarge { .. })
        ));
    }

    #[test]
    fn parts_are_not_allowed_at_the_last_level() {
        let layout = small();
        let json = parts_json(false, MIB + 3, &[MIB, 3]);
        assert!(parse(&json, &layout, level(2)).is_ok());
        assert!(matches!(
            parse(&json, &layout, Level::LAST),
            Err(ManifestError::TooDeep {
                max: MANIFEST_MAX_DEPTH
            })
        ));
    }

    #[test]
    fn sizes_are_bounded_by_the_level() {
        let layout = small();
        // A leaf at the last level holds at most fan_out pieces.
        assert!(matches!(
            parse(&parts_json(false, 5 * MIB, &[MIB; 5]), &layout, level(2)),
            Err(ManifestError::TooManyEntries { .. })
        ));
        let too_big = format!(
            r#"{{"p2p_manifest":1,"size":{},"sha256":"{}","pieces":[]}}"#,
            64 * MIB + 1,
            id(0)
        );
        assert!(matches!(
            parse(&too_big, &layout, level(2)),
            Err(ManifestError::SizeTooLarge { max, .. }) if max == 16 * MIB
        ));
        let empty_part = format!(
            r#"{{"p2p_manifest":1,"size":0,"sha256":"{}","pieces":[]}}"#,
            id(0)
        );
        assert!(matches!(
            parse(&empty_part, &layout, level(2)),
            Err(ManifestError::EmptyPartManifest)
        ));
    }

    #[test]
    fn names_are_required_on_the_root_only_and_checked() {
        let layout = Layout::STANDARD;
        let no_name = format!(
            r#"{{"p2p_manifest":1,"size":0,"sha256":"{}","pieces":[]}}"#,
            id(0)
        );
        assert!(matches!(
            parse(&no_name, &layout, Level::ROOT),
            Err(ManifestError::MissingName)
        ));
        assert!(matches!(
            parse(&pieces_json(1, 1), &layout, level(2)),
            Err(ManifestError::NameOnPart)
        ));
        let null_name = no_name.replace(r#""size""#, r#""name":null,"size""#);
        assert!(matches!(
            parse(&null_name, &layout, Level::ROOT),
            Err(ManifestError::Json(_))
        ));
        for (name, expected) in [
            ("", NameError::Empty),
            (".", NameError::DotName),
            ("..", NameError::DotName),
            (
                "a/b",
                NameError::ForbiddenChar {
                    found: '/',
                    index: 1,
                },
            ),
            (
                "../x",
                NameError::ForbiddenChar {
                    found: '/',
                    index: 2,
                },
            ),
            (
                "a\\b",
                NameError::ForbiddenChar {
                    found: '\\',
                    index: 1,
                },
            ),
            (
                "a\0",
                NameError::ForbiddenChar {
                    found: '\0',
                    index: 1,
                },
            ),
            (
                "a\nb",
                NameError::ForbiddenChar {
                    found: '\n',
                    index: 1,
                },
            ),
            (
                "\u{7f}",
                NameError::ForbiddenChar {
                    found: '\u{7f}',
                    index: 0,
                },
            ),
            (
                "é\u{9b}",
                NameError::ForbiddenChar {
                    found: '\u{9b}',
                    index: 2,
                },
            ),
        ] {
            assert_eq!(check_name(name), Err(expected.clone()), "{name:?}");
            let json = pieces_json(0, 0).replace(
                r#""name":"f""#,
                &format!(r#""name":{}"#, serde_json::to_string(name).unwrap()),
            );
            assert!(
                matches!(
                    parse(&json, &layout, Level::ROOT),
                    Err(ManifestError::BadName(e)) if e == expected
                ),
                "{json}"
            );
        }
        assert_eq!(check_name(&"é".repeat(127)), Ok(()));
        assert_eq!(check_name(&"x".repeat(MANIFEST_NAME_MAX_BYTES)), Ok(()));
        assert_eq!(
            check_name(&"x".repeat(MANIFEST_NAME_MAX_BYTES + 1)),
            Err(NameError::TooLong {
                len: MANIFEST_NAME_MAX_BYTES + 1,
                max: MANIFEST_NAME_MAX_BYTES
            })
        );
        assert_eq!(check_name("..."), Ok(()));
        assert_eq!(check_name(".hidden"), Ok(()));
    }

    #[test]
    fn rejects_unknown_duplicate_and_null_keys() {
        let layout = Layout::STANDARD;
        let ok = pieces_json(1, 1);
        let unknown = ok.replace(r#""size""#, r#""mode":"rw","size""#);
        assert!(matches!(
            parse(&unknown, &layout, Level::ROOT),
            Err(ManifestError::Json(e)) if e.to_string().contains("unknown field")
        ));
        let unknown_in_part =
            parts_json(true, MIB + 1, &[MIB, 1]).replace(r#","size":1}"#, r#","size":1,"x":0}"#);
        assert!(matches!(
            parse(&unknown_in_part, &small(), Level::ROOT),
            Err(ManifestError::Json(_))
        ));
        let duplicate = ok.replace(r#""size":1"#, r#""size":1,"size":1"#);
        assert!(matches!(
            parse(&duplicate, &layout, Level::ROOT),
            Err(ManifestError::Json(e)) if e.to_string().contains("duplicate field")
        ));
        let duplicate_name = ok.replace(r#""size":1"#, r#""name":"g","size":1"#);
        assert!(parse(&duplicate_name, &layout, Level::ROOT).is_err());
        let null_parts = ok.replace(r#""pieces""#, r#""parts":null,"pieces""#);
        assert!(matches!(
            parse(&null_parts, &layout, Level::ROOT),
            Err(ManifestError::Json(_))
        ));
        let both = ok.replace(r#""pieces""#, r#""parts":[],"pieces""#);
        assert!(matches!(
            parse(&both, &layout, Level::ROOT),
            Err(ManifestError::BothEntries)
        ));
        let neither = format!(
            r#"{{"p2p_manifest":1,"name":"f","size":0,"sha256":"{}"}}"#,
            id(0)
        );
        assert!(matches!(
            parse(&neither, &layout, Level::ROOT),
            Err(ManifestError::NoEntries)
        ));
    }

    #[test]
    fn rejects_other_versions() {
        let layout = Layout::STANDARD;
        let ok = pieces_json(1, 1);
        for (version, found) in [("2", 2), ("0", 0)] {
            let json = ok.replace(
                r#""p2p_manifest":1"#,
                &format!(r#""p2p_manifest":{version}"#),
            );
            assert!(matches!(
                parse(&json, &layout, Level::ROOT),
                Err(ManifestError::Version { found: f, expected: 1 }) if f == found
            ));
        }
        // A newer version's unknown keys are reported as the version.
        let v2 = ok.replace(
            r#""p2p_manifest":1"#,
            r#""p2p_manifest":2,"chunking":"cdc""#,
        );
        assert!(matches!(
            parse(&v2, &layout, Level::ROOT),
            Err(ManifestError::Version { found: 2, .. })
        ));
        for bad in [r#""1""#, "1.0", "-1", "true"] {
            let json = ok.replace(r#""p2p_manifest":1"#, &format!(r#""p2p_manifest":{bad}"#));
            assert!(
                matches!(
                    parse(&json, &layout, Level::ROOT),
                    Err(ManifestError::Json(_))
                ),
                "{json}"
            );
        }
        let missing = ok.replace(r#""p2p_manifest":1,"#, "");
        assert!(matches!(
            parse(&missing, &layout, Level::ROOT),
            Err(ManifestError::Json(_))
        ));
    }

    #[test]
    fn ids_must_be_64_hex_characters() {
        let layout = Layout::STANDARD;
        let ok = pieces_json(MIB + 1, 2);
        let good = id(1).to_hex();
        let non_hex = ok.replacen(&good, &format!("{}g", &good[..63]), 1);
        assert!(matches!(
            parse(&non_hex, &layout, Level::ROOT),
            Err(ManifestError::BadEntryId {
                index: 1,
                source: PieceIdParseError::NotHex {
                    found: 'g',
                    index: 63
                }
            })
        ));
        let short = ok.replacen(&good, &good[..62], 1);
        assert!(matches!(
            parse(&short, &layout, Level::ROOT),
            Err(ManifestError::BadEntryId {
                index: 1,
                source: PieceIdParseError::Length { len: 62 }
            })
        ));
        let bad_digest = ok.replacen(&id(200).to_hex(), "00", 1);
        assert!(matches!(
            parse(&bad_digest, &layout, Level::ROOT),
            Err(ManifestError::BadDigest(PieceIdParseError::Length {
                len: 2
            }))
        ));
        // Upper case is still hex.
        let upper = ok.replacen(&good, &good.to_uppercase(), 1);
        assert!(parse(&upper, &layout, Level::ROOT).is_ok());
    }

    #[test]
    fn garbage_never_panics() {
        let layout = small();
        let ok = parts_json(true, MIB + 1, &[MIB, 1]);
        let bytes = ok.as_bytes();
        for cut in 0..bytes.len() {
            assert!(Manifest::parse(&bytes[..cut], &layout, Level::ROOT).is_err());
        }
        for i in 0..bytes.len() {
            for flip in [1u8, 0x20, 0x80] {
                let mut b = bytes.to_vec();
                b[i] ^= flip;
                let _ = Manifest::parse(&b, &layout, Level::ROOT);
            }
        }
    }
}
