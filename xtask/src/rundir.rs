//! The per-run work folder under `target/xtask/` ([`RunDir`], removed when the run ends) and the
//! atomic installation of what runs share ([`install_atomically`]).
//!
//! Two runs at once must not write the same paths: one would overwrite, or fail to execute, what
//! the other is using (seen: "Text file busy" running the C program while the other run rebuilt
//! it). So every run writes into `target/xtask/run-<pid>-<nanos>/`, and what is kept across runs
//! (the unpacked headers) is prepared there and moved into place with one rename(2).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::Result;

/// Prefix of the per-run folders' names.
const PREFIX: &str = "run-";

/// A folder of this run's own, removed (with everything in it) when dropped: when the command
/// returns, with or without an error, or unwinds from a panic.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// Creates a fresh `<parent>/run-<pid>-<nanos>/` (`parent` and its ancestors as needed).
    ///
    /// First removes the run folders of processes that no longer exist (runs killed before their
    /// guard could clean up, e.g. by Ctrl-C).
    pub fn create(parent: &Path) -> Result<RunDir> {
        fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        sweep_stale(parent);
        let pid = std::process::id();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        for attempt in 0u32.. {
            let name = match attempt {
                0 => format!("{PREFIX}{pid}-{nanos}"),
                n => format!("{PREFIX}{pid}-{nanos}-{n}"),
            };
            let path = parent.join(name);
            // `create_dir`, not `create_dir_all`: it fails if the folder exists, so no two runs
            // ever share one.
            match fs::create_dir(&path) {
                Ok(()) => return Ok(RunDir { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => {}
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
        unreachable!("the loop returns")
    }

    /// `name` inside the folder, created if missing.
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.path.join(name);
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(dir)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                eprintln!("xtask: warning: removing {}: {e}", self.path.display());
            }
        }
    }
}

/// The process id in a run folder's name, `None` for other names.
fn run_dir_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Removes the run folders in `parent` whose process is gone. Does nothing without `/proc`,
/// where it could not tell.
fn sweep_stale(parent: &Path) {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(run_dir_pid) else {
            continue;
        };
        if pid != me && !proc.join(pid.to_string()).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Moves the finished folder `staged` to `target` with one rename(2), so that other runs see
/// either no `target` or all of it, and returns where the contents now are.
///
/// If `target` already exists and `is_complete` says it is whole (another run installed it
/// first), `target` is returned and `staged` is left to be removed with its run folder. If it
/// exists but is not whole (left by an interrupted run of an older xtask, which unpacked in
/// place), it is left alone, since another run may be reading it, and `staged` is returned for
/// this run to use.
///
/// `staged` and `target` must be on the same file system (both under `target/xtask`).
pub fn install_atomically(
    staged: &Path,
    target: &Path,
    is_complete: impl Fn(&Path) -> bool,
) -> Result<PathBuf> {
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    match fs::rename(staged, target) {
        Ok(()) => Ok(target.to_path_buf()),
        Err(_) if is_complete(target) => Ok(target.to_path_buf()),
        Err(e) if target.exists() => {
            eprintln!(
                "xtask: warning: {} is incomplete ({e}); using this run's copy. Remove it to let \
                 xtask cache a new one.",
                target.display()
            );
            Ok(staged.to_path_buf())
        }
        Err(e) => Err(format!(
            "moving {} to {}: {e}",
            staged.display(),
            target.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch folder for one test, removed at the end.
    fn scratch(name: &str) -> RunDir {
        let parent = std::env::temp_dir().join(format!("xtask-test-{name}"));
        RunDir::create(&parent).unwrap()
    }

    #[test]
    fn runs_at_once_get_their_own_folders_and_remove_them() {
        let parent = scratch("own-folders");
        let (a, b) = (
            RunDir::create(&parent.path).unwrap(),
            RunDir::create(&parent.path).unwrap(),
        );
        assert_ne!(a.path, b.path);
        assert_eq!(
            run_dir_pid(&a.path.file_name().unwrap().to_string_lossy()),
            Some(std::process::id())
        );
        // The same file name in each: no collision.
        fs::write(a.subdir("c-ioctl").unwrap().join("numbers"), "a").unwrap();
        fs::write(b.subdir("c-ioctl").unwrap().join("numbers"), "b").unwrap();
        assert_eq!(
            fs::read_to_string(a.path.join("c-ioctl/numbers")).unwrap(),
            "a"
        );
        let (pa, pb) = (a.path.to_path_buf(), b.path.to_path_buf());
        drop(a);
        assert!(!pa.exists());
        assert!(pb.join("c-ioctl/numbers").is_file());
        drop(b);
        assert!(!pb.exists());
    }

    #[test]
    fn the_folder_is_removed_on_error_and_on_panic() {
        let parent = scratch("guard");
        let mut seen = None;
        let failing = |seen: &mut Option<PathBuf>| -> Result<()> {
            let run = RunDir::create(&parent.path)?;
            fs::write(run.subdir("x")?.join("f"), "f").unwrap();
            *seen = Some(run.path.to_path_buf());
            Err("failed".into())
        };
        assert!(failing(&mut seen).is_err());
        assert!(!seen.unwrap().exists());

        let caught = std::panic::catch_unwind(|| {
            let run = RunDir::create(&parent.path).unwrap();
            let path = run.path.to_path_buf();
            std::panic::panic_any(path);
        });
        let path = caught.unwrap_err().downcast::<PathBuf>().unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn folders_of_dead_runs_are_swept() {
        let parent = scratch("sweep");
        // No process has pid u32::MAX (the kernel's limit is 2^22).
        let dead = parent.path.join(format!("{PREFIX}{}-1", u32::MAX));
        let live = parent.path.join(format!("{PREFIX}1-1")); // init is alive
        let other = parent.path.join("headers");
        for d in [&dead, &live, &other] {
            fs::create_dir_all(d.join("sub")).unwrap();
        }
        let run = RunDir::create(&parent.path).unwrap();
        assert!(!dead.exists());
        assert!(live.exists());
        assert!(other.exists());
        assert!(run.path.exists());
        assert_eq!(run_dir_pid("run-12-34"), Some(12));
        assert_eq!(run_dir_pid("headers"), None);
    }

    #[test]
    fn install_is_all_or_nothing_and_first_one_wins() {
        let parent = scratch("install");
        let complete = |d: &Path| d.join("done").is_file();
        let target = parent.path.join("cache/v1");
        let stage = |name: &str| {
            let d = parent.subdir(name).unwrap();
            fs::write(d.join("done"), name).unwrap();
            d
        };
        let first = stage("first");
        assert_eq!(
            install_atomically(&first, &target, complete).unwrap(),
            target
        );
        assert!(!first.exists());
        // A second run that prepared its own copy meanwhile uses the installed one.
        let second = stage("second");
        assert_eq!(
            install_atomically(&second, &target, complete).unwrap(),
            target
        );
        assert_eq!(fs::read_to_string(target.join("done")).unwrap(), "first");
        // An incomplete leftover is left alone and the run uses its own copy.
        let leftover = parent.path.join("cache/v2");
        fs::create_dir_all(leftover.join("partial")).unwrap();
        let third = stage("third");
        assert_eq!(
            install_atomically(&third, &leftover, complete).unwrap(),
            third
        );
        assert!(leftover.join("partial").exists());
    }
}
