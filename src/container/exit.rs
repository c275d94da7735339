//! Exits: learning them from the monitor's exit record, or from the node when the monitor is
//! gone (the container's init and the runtime's state are the truth), the pidfd watch of each
//! live container, and the reconciliation of records with the runtime at restore.

use super::*;

impl Containers {
    /// Learns about an exit from the monitor's exit record; without one, from the node: a
    /// monitor that is gone while the container's init runs on leaves the container Running
    /// (marked `monitor_lost`); once neither runs, the container is Exited.
    pub(super) fn refresh_blocking(&self, id: &str) -> Result<Arc<ContainerRecord>> {
        self.refresh_with(id, None)
    }

    /// [`Containers::refresh_blocking`]; `killed_with` is the signal StopContainer sent to a
    /// container without a monitor (its exit code is then 128 + signal).
    pub(super) fn refresh_with(
        &self,
        id: &str,
        killed_with: Option<i32>,
    ) -> Result<Arc<ContainerRecord>> {
        let Some(rec) = self.records.get(id) else {
            return Err(Error::NotFound(format!("container {id:?} not found")));
        };
        if rec.state == ContainerState::Exited {
            return Ok(rec);
        }
        let killed_with = killed_with.or_else(|| lock(&self.signalled).get(id).copied());
        let (exit, lost) = match monitor::read_exit(&rec.monitor_dir) {
            Some(exit) => (exit, false),
            None => {
                if monitor_alive(&rec) {
                    return Ok(rec);
                }
                // A monitor that just exited may still be renaming its exit record into place.
                std::thread::sleep(Duration::from_millis(20));
                if monitor::read_exit(&rec.monitor_dir).is_some() {
                    return self.refresh_with(id, killed_with);
                }
                if self.init_alive(&rec) {
                    return self.mark_monitor_lost(&rec);
                }
                let exit = crius_proto::monitor::ExitRecord {
                    exit_code: killed_with.map_or(255, |s| 128 + s),
                    finished_at_ns: now_ns(),
                    ..Default::default()
                };
                (exit, true)
            }
        };
        let monitor_was_lost = rec.monitor_lost;
        let modified = self.records.modify(
            id,
            |cur| {
                if cur.state == ContainerState::Exited {
                    return Ok(None);
                }
                let mut next = cur.clone();
                next.state = cur.state.transition(ContainerState::Exited, id)?;
                next.exit_code = exit.exit_code;
                next.finished_at = exit.finished_at_ns;
                next.reason = if exit.oom_killed {
                    "OOMKilled".into()
                } else if exit.exit_code == 0 {
                    "Completed".into()
                } else {
                    "Error".into()
                };
                if lost {
                    next.message = if monitor_was_lost {
                        match killed_with {
                            Some(s) => format!(
                                "the container's monitor was gone; it was stopped with signal {s}"
                            ),
                            None => "the container's monitor was gone; its exit status is unknown"
                                .into(),
                        }
                    } else {
                        "the container's monitor is gone and left no exit record".into()
                    };
                }
                Ok::<_, Error>(Some(next))
            },
            |stored| self.publish(stored, EventKind::Stopped),
        )?;
        let stored = match modified {
            Modified::Changed(stored) => stored,
            Modified::Unchanged(cur) => return Ok(cur),
            Modified::Missing => {
                return Err(Error::NotFound(format!("container {id:?} not found")))
            }
        };
        lock(&self.signalled).remove(id);
        if exit.oom_killed {
            self.metrics.containers_oom_total.inc();
        }
        tracing::info!(container_id = %id, exit_code = stored.exit_code, reason = %stored.reason, "container exited");
        self.update_gauge();
        Ok(stored)
    }

    /// Whether the container's init still runs, by the runtime's account (the node's truth:
    /// the recorded pid alone may have been reused).
    pub(super) fn init_alive(&self, rec: &ContainerRecord) -> bool {
        if !process_alive(rec.pid) {
            return false;
        }
        let Ok(runtime) = self.runtime(&rec.runtime_handler) else {
            return false;
        };
        match runtime.state(&rec.id) {
            Ok(Some(st)) => st.is_alive() && st.pid == rec.pid,
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(container_id = %rec.id, error = %e, "runtime state unknown; trusting the live pid");
                true
            }
        }
    }

    /// Records that the container runs on without its monitor (once, with a warning).
    pub(super) fn mark_monitor_lost(&self, rec: &ContainerRecord) -> Result<Arc<ContainerRecord>> {
        let modified = self.records.modify(
            &rec.id,
            |cur| {
                if cur.monitor_lost || cur.state == ContainerState::Exited {
                    return Ok(None);
                }
                let mut next = cur.clone();
                next.monitor_lost = true;
                next.message = "the container's monitor exited; the container runs on without log capture or attach".into();
                Ok::<_, Error>(Some(next))
            },
            |_| {},
        )?;
        match modified {
            Modified::Changed(stored) => {
                tracing::warn!(container_id = %rec.id, pid = rec.pid, monitor_pid = rec.monitor_pid,
                    "the container's monitor is gone but the container runs on: reported running; its output is no longer logged and its exit status will be unknown");
                Ok(stored)
            }
            Modified::Unchanged(cur) => Ok(cur),
            Modified::Missing => Err(Error::NotFound(format!("container {:?} not found", rec.id))),
        }
    }

    /// At restore: a record that is behind the runtime (the daemon died between the runtime's
    /// start and the record write) is brought up to what the runtime says.
    pub(super) fn reconcile_blocking(&self, id: &str) {
        let Some(rec) = self.records.get(id) else {
            return;
        };
        if rec.state != ContainerState::Created {
            return;
        }
        let Ok(runtime) = self.runtime(&rec.runtime_handler) else {
            return;
        };
        match runtime.state(id) {
            Ok(Some(st)) if st.status == "running" || st.status == "paused" => {
                tracing::warn!(container_id = %id, "record says created but the runtime says running (interrupted StartContainer): reconciled to running");
                if let Err(e) = self.mark_started(id, now_ns()) {
                    tracing::error!(container_id = %id, error = %e, "reconciling a started container failed");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(container_id = %id, error = %e, "runtime state unknown at restore")
            }
        }
    }

    /// Learns about the container's exit as soon as its monitor exits (the monitor writes the
    /// exit record, then exits): a pidfd of the monitor, awaited on the reactor. A container
    /// whose monitor is gone is watched through its init's pidfd instead. Without a runtime or
    /// pidfds, exits are still learned on the next status/list/stop.
    pub(super) fn watch_exit(self: &Arc<Self>, rec: &ContainerRecord) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (watched, owned) = if monitor_alive(rec) {
            (rec.monitor_pid, true)
        } else if rec.monitor_lost && process_alive(rec.pid) {
            (rec.pid, true)
        } else {
            (rec.monitor_pid, false)
        };
        let Some(pid) = rustix::process::Pid::from_raw(watched as i32) else {
            return;
        };
        let pidfd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::NONBLOCK) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::debug!(container_id = %rec.id, error = %e, "no pidfd to watch the container");
                if owned {
                    return;
                }
                // Already gone: learn about it now.
                let this = self.clone();
                let id = rec.id.clone();
                runtime.spawn_blocking(move || this.refresh_blocking(&id));
                return;
            }
        };
        let this = self.clone();
        let id = rec.id.clone();
        runtime.spawn(async move {
            // A pid reused by another process before pidfd_open: do not wait on it.
            if owned {
                match pollable(pidfd) {
                    Ok(fd) => {
                        let _ = fd.readable().await;
                    }
                    Err(e) => {
                        tracing::debug!(container_id = %id, error = %e, "pidfd not pollable");
                        return;
                    }
                }
            }
            let worker = this.clone();
            let refreshed =
                crate::telemetry::spawn_blocking(move || worker.refresh_blocking(&id)).await;
            match refreshed {
                // The monitor died, the container lives on: watch the container itself.
                Ok(Ok(rec))
                    if rec.state != ContainerState::Exited
                        && rec.monitor_lost
                        && watched != rec.pid =>
                {
                    this.watch_exit(&rec);
                }
                Ok(Err(e)) if !matches!(e, Error::NotFound(_)) => {
                    tracing::warn!(error = %e, "learning about a container exit failed");
                }
                _ => {}
            }
        });
    }

    /// Waits for the monitor's exit record, or — the monitor being gone — for the container's
    /// init to be gone.
    pub(super) fn wait_exit(&self, rec: &ContainerRecord, timeout: Duration) -> bool {
        let started = Instant::now();
        let deadline = started + timeout;
        loop {
            if monitor::read_exit(&rec.monitor_dir).is_some()
                || (!monitor_alive(rec) && !process_alive(rec.pid))
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            // A killed container's exit record usually lands within a few milliseconds: look
            // every millisecond at first (a 10 ms step was most of StopContainer's time), then
            // every 10 ms for one that takes its time to honour the stop signal.
            let step = if started.elapsed() < Duration::from_millis(100) {
                Duration::from_millis(1)
            } else {
                Duration::from_millis(10)
            };
            std::thread::sleep(step);
        }
    }
}
