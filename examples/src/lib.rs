//! What the example programs and their tests share beyond the `test-kit` crate (re-exported
//! here): the object-store source builder of `restore-bench` and `uffd-handler`.
//!
//! Every example runs with no arguments, verifies what it did, prints what it measured and exits
//! with status 0 on success, 1 when verification (or the run) fails, and 2 with a usage message
//! for bad arguments (every program parses its command line with `clap`).

pub use test_kit::exit::{EXIT_FAILURE, EXIT_USAGE};
pub use test_kit::mapping::no_huge_pages;
pub use test_kit::page_size;
pub use test_kit::pattern::write_pattern_file;
pub use test_kit::peer::peer_pid;
pub use test_kit::rng::Rng;
pub use test_kit::temp::TempFile;
pub use test_kit::wait::{wait_readable, StopSignal, Wait};

/// A source builder for the object a URL names (`s3://BUCKET/KEY`, `file:///PATH`, ...), with
/// `KEY=VALUE` settings that override the environment (see
/// `userfaultfd::serve::ObjectStoreSource::from_url`). Feature `object-store`.
#[cfg(feature = "object-store")]
pub fn object_source_builder(
    url: &str,
    options: &[String],
) -> Result<userfaultfd::serve::ObjectStoreSourceBuilder, String> {
    let mut b = userfaultfd::serve::ObjectStoreSource::from_url(url).map_err(|e| e.to_string())?;
    for o in options {
        let (k, v) = o
            .split_once('=')
            .ok_or_else(|| format!("source option {o:?} is not KEY=VALUE"))?;
        b = b.option(k, v);
    }
    Ok(b)
}
