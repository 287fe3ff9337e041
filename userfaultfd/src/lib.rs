//! Safe userfaultfd (filled by its issue).
