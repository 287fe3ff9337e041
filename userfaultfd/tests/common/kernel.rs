//! Features that arrive per kernel version: get a `Uffd` with one, or, on a kernel without it,
//! assert the typed error the library returns and record the test as asserted-unsupported.

use userfaultfd::{Error, FeatureFlags, Uffd, UffdBuilder};

/// The running kernel's `(major, minor)` from `uname(2)`.
pub fn version() -> (u32, u32) {
    // SAFETY: utsname is plain old data, filled by uname(2).
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a live utsname.
    assert_eq!(unsafe { libc::uname(&mut u) }, 0);
    // SAFETY: uname NUL-terminates `release`.
    let release = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }.to_string_lossy();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Whether the running kernel is at least `major.minor`.
pub fn at_least(major: u32, minor: u32) -> bool {
    version() >= (major, minor)
}

/// The name of a single feature, e.g. `"MOVE"`.
pub fn name(feature: FeatureFlags) -> &'static str {
    feature
        .iter_names()
        .next()
        .map(|(n, _)| n)
        .expect("a named feature")
}

/// A userfaultfd for user-mode faults with `feature`, or `None` once [`assert_lacks`] has
/// checked the typed error of a kernel without it (and recorded it as unsupported).
pub fn user_uffd_if_supported(feature: FeatureFlags) -> Option<userfaultfd::Uffd> {
    match userfaultfd::UffdBuilder::new()
        .user_mode_only(true)
        .require_features(feature)
        .create()
    {
        Ok(uffd) => Some(uffd),
        Err(e) => {
            assert_lacks(feature, &e);
            None
        }
    }
}

/// Asserts that `e` is the library's "this kernel lacks `feature`" error, naming the feature and
/// the Linux version that brings it, that the kernel indeed lacks it, and records the test as
/// asserted-unsupported.
pub fn assert_lacks(feature: FeatureFlags, e: &Error) {
    let since = feature.since().expect("one named feature");
    match e {
        Error::UnsupportedFeatures { missing, supported } => {
            assert!(missing.contains(feature), "{e}");
            assert!(!supported.contains(feature), "{e}");
        }
        other => panic!("expected UnsupportedFeatures for {feature:?}, got {other:?}"),
    }
    let msg = e.to_string();
    let named = format!("{} (Linux {since})", name(feature));
    assert!(msg.contains(&named), "{msg:?} does not name {named:?}");
    let kernel_has = UffdBuilder::probe_features()
        .expect("probe features")
        .contains(feature);
    assert!(!kernel_has, "the kernel has {feature:?}, yet: {msg}");
    test_kit::report::unsupported(name(feature), since, msg);
}

/// A non-blocking userfaultfd with `features`, or `None` when the kernel lacks `gated` (one of
/// them): then the typed error was asserted and recorded (see [`assert_lacks`]); return.
pub fn uffd_with_or_unsupported(gated: FeatureFlags, features: FeatureFlags) -> Option<Uffd> {
    let r = UffdBuilder::new()
        .non_blocking(true)
        .require_features(gated | features)
        .create();
    match r {
        Ok(u) => Some(u),
        Err(e) => {
            assert_lacks(gated, &e);
            None
        }
    }
}
