//! Temporary files removed however the program ends.

/// A file removed when this value is dropped, however the program ends (return or unwind).
pub struct TempFile(pub std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
