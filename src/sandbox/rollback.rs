//! The undo stack of a multi-step create: each step pushes how to undo itself; on failure the
//! stack unwinds in reverse. Undo failures are logged, not returned: the create's own error is
//! what the caller reports, and the startup cleanup catches what an undo could not release.

type Undo = Box<dyn FnOnce() -> Result<(), String> + Send>;

#[derive(Default)]
pub struct Rollback {
    steps: Vec<(&'static str, Undo)>,
}

impl Rollback {
    pub fn new() -> Self {
        Rollback::default()
    }

    pub fn push(
        &mut self,
        what: &'static str,
        undo: impl FnOnce() -> Result<(), String> + Send + 'static,
    ) {
        self.steps.push((what, Box::new(undo)));
    }

    /// The create succeeded: forget every undo.
    pub fn disarm(&mut self) {
        self.steps.clear();
    }

    /// Runs the undos in reverse order; returns how many failed.
    pub fn unwind(&mut self) -> usize {
        let mut failed = 0;
        while let Some((what, undo)) = self.steps.pop() {
            if let Err(e) = undo() {
                failed += 1;
                tracing::error!(step = what, error = %e, "rollback step failed");
            }
        }
        failed
    }
}

impl Drop for Rollback {
    /// A create that returned early without deciding (a panic) still undoes its steps.
    fn drop(&mut self) {
        self.unwind();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn unwinds_in_reverse_and_counts_failures() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut rb = Rollback::new();
        for i in 0..3 {
            let log = log.clone();
            rb.push("step", move || {
                log.lock().unwrap().push(i);
                if i == 1 {
                    Err("boom".into())
                } else {
                    Ok(())
                }
            });
        }
        assert_eq!(rb.unwind(), 1);
        assert_eq!(*log.lock().unwrap(), vec![2, 1, 0]);
    }

    #[test]
    fn disarmed_stack_does_nothing_on_drop_and_armed_one_unwinds() {
        let log = Arc::new(Mutex::new(0));
        {
            let mut rb = Rollback::new();
            let l = log.clone();
            rb.push("a", move || {
                *l.lock().unwrap() += 1;
                Ok(())
            });
            rb.disarm();
        }
        assert_eq!(*log.lock().unwrap(), 0);
        {
            let mut rb = Rollback::new();
            let l = log.clone();
            rb.push("a", move || {
                *l.lock().unwrap() += 1;
                Ok(())
            });
        }
        assert_eq!(*log.lock().unwrap(), 1);
    }
}
