//! The crate's `const fn`-computed ioctl request numbers (and the hand-spelled `UFFD_API_IOCTLS`)
//! against what a C program compiled for x86_64 against the same pinned headers prints.
//!
//! A unit test (not in `tests/`) so that it can walk the crate-private list of requests.
//! `tests/data/c-ioctl-numbers-x86_64.txt` is written by `cargo xtask bindgen` (which compiles
//! and runs that C program) and checked for staleness by `cargo xtask bindgen --check`. The file
//! holds one `NAME 0xHEX` per line, after `#` comment lines. Only meaningful on x86_64, the
//! architecture the C program was compiled for.
use crate::requests::ROWS;
use crate::*;
use std::collections::BTreeMap;

const C_NUMBERS: &str = include_str!("../tests/data/c-ioctl-numbers-x86_64.txt");
const BINDINGS: &str = include_str!("bindings.rs");

/// Every value the C program prints, as this crate defines it: every request of the crate's
/// list, and `UFFD_API_IOCTLS`.
fn crate_values() -> BTreeMap<&'static str, u64> {
    ROWS.iter()
        .map(|row| {
            (
                row.name,
                u64::from(row.request(ioctl::IoctlEncoding::NATIVE)),
            )
        })
        .chain([("UFFD_API_IOCTLS", UFFD_API_IOCTLS)])
        .collect()
}

/// Parses the data file; panics on a malformed or duplicated line.
fn c_values() -> BTreeMap<&'static str, u64> {
    let mut map = BTreeMap::new();
    for (i, line) in C_NUMBERS.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(name), Some(hex), None) = (words.next(), words.next(), words.next()) else {
            panic!("line {}: expected `NAME 0xHEX`, got {line:?}", i + 1);
        };
        let digits = hex
            .strip_prefix("0x")
            .unwrap_or_else(|| panic!("line {}: {hex:?} lacks the 0x prefix", i + 1));
        let value = u64::from_str_radix(digits, 16)
            .unwrap_or_else(|e| panic!("line {}: {hex:?}: {e}", i + 1));
        assert!(
            map.insert(name, value).is_none(),
            "line {}: {name} appears twice",
            i + 1
        );
    }
    map
}

#[test]
fn every_number_equals_the_c_one() {
    let ours = crate_values();
    let theirs = c_values();
    let mut problems = Vec::new();
    for (name, value) in &ours {
        match theirs.get(name) {
            None => problems.push(format!(
                "{name}: defined by the crate, missing from the C list"
            )),
            Some(c) if c != value => {
                problems.push(format!("{name}: crate {value:#x}, C {c:#x}"));
            }
            Some(_) => {}
        }
    }
    for name in theirs.keys() {
        if !ours.contains_key(name) {
            problems.push(format!(
                "{name}: printed by the C program, not checked by this test"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_public_constants_are_the_rows() {
    // The constants the crate exports are the values compared above.
    let ours = crate_values();
    for (name, value) in [
        ("UFFDIO_API", UFFDIO_API),
        ("UFFDIO_COPY", UFFDIO_COPY),
        ("UFFDIO_MOVE", UFFDIO_MOVE),
        ("USERFAULTFD_IOC_NEW", USERFAULTFD_IOC_NEW),
        ("PAGEMAP_SCAN", PAGEMAP_SCAN),
    ] {
        assert_eq!(ours[name], u64::from(value), "{name}");
    }
}

#[test]
fn numbers_and_bindings_come_from_the_same_headers() {
    // Both generated files name their header package in the preamble; they must agree, or the
    // C numbers were produced from other headers than the structs they encode the size of.
    let source_of = |text: &str| -> String {
        let line = text
            .lines()
            .take_while(|l| l.starts_with("//") || l.starts_with('#'))
            .find(|l| l.contains("linux-libc-dev") || l.contains("uAPI headers from"))
            .unwrap_or_else(|| panic!("no header source in the preamble of:\n{text:.300}"))
            .to_string();
        let start = line
            .find("Debian ")
            .or_else(|| line.find("uAPI headers from"))
            .expect("found above");
        let source = &line[start..];
        let source = source.split(" (").next().unwrap_or(source);
        source.trim_end_matches('.').to_string()
    };
    assert_eq!(source_of(C_NUMBERS), source_of(BINDINGS));
}
