//! Child processes a test started, killed (and reaped) when the guard is dropped, so that a
//! failing test leaves none behind.

use std::process::Child;

/// Kills its processes when dropped.
pub struct Processes(pub Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
